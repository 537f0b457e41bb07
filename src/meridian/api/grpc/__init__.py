"""The gRPC transport: thin servicers over :class:`meridian.api.service.AgentApi`."""
