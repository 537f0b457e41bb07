"""The local multi-region sandbox: NATS servers per region, joined through a WAN emulator."""
