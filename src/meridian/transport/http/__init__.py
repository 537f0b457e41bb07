"""The HTTP/JSON transport: thin aiohttp handlers over :class:`meridian.transport.api.AgentApi`."""
