"""The HTTP/JSON transport: thin aiohttp handlers over :class:`meridian.api.service.AgentApi`."""
