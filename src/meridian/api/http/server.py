"""HTTP/JSON routes. Bodies are protojson (proto3 JSON mapping, lowerCamelCase).

- ``GET /v1/status``  → StatusService.GetStatus
- ``GET /v1/health``  → HealthService.Check (HTTP 200 when SERVING or DEGRADED, 503 when NOT_SERVING)
- ``GET /metrics``    → Prometheus exposition
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from meridian._pb.meridian.v1 import health_pb2, status_pb2
from meridian.api.errors import error_body, mapping_for
from meridian.api.service import AgentApi
from meridian.observability.metrics import CONTENT_TYPE

MAX_BODY = 1 << 20


def _json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


class HttpTransport:
    """The agent's HTTP server. ``start()`` returns once the port is bound."""

    def __init__(self, api: AgentApi, host: str, port: int) -> None:
        self.api = api
        self.host = host
        self.port = port
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def _unary(
        self,
        request: web.Request,
        service: str,
        method: str,
        handler: Callable[[Any], Awaitable[Message]],
        message: Message,
        ok_status: Callable[[Message], int] = lambda _: 200,
    ) -> web.Response:
        result = await self.api.call(service, method, "http", request.headers, handler, message)
        headers = {"traceparent": result.traceparent} if result.traceparent else {}
        if result.error is not None:
            return web.json_response(
                error_body(result.error), status=mapping_for(result.error).http, headers=headers
            )
        assert result.response is not None
        return web.json_response(
            _json(result.response), status=ok_status(result.response), headers=headers
        )

    async def _status(self, request: web.Request) -> web.Response:
        return await self._unary(
            request,
            "StatusService",
            "GetStatus",
            self.api.get_status,
            status_pb2.GetStatusRequest(),
        )

    async def _health(self, request: web.Request) -> web.Response:
        def code(resp: Message) -> int:
            assert isinstance(resp, health_pb2.HealthCheckResponse)
            not_serving = health_pb2.HealthCheckResponse.SERVING_STATUS_NOT_SERVING
            return 503 if resp.status == not_serving else 200

        return await self._unary(
            request,
            "HealthService",
            "Check",
            self.api.check_health,
            health_pb2.HealthCheckRequest(),
            code,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.api.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        await self.runner.cleanup()
