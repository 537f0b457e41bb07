"""The gRPC transport: thin servicers over :class:`meridian.transport.api.AgentApi`."""
