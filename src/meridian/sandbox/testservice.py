"""A small real service for tests, benchmarks and demos of invocation.

It serves HTTP (aiohttp) or gRPC (any unary method, raw bytes, plus the
standard grpc.health.v1 service), registers itself with its region's agent
over the agent's HTTP API, keeps its lease alive, and deregisters on SIGTERM.
Its behaviour can be changed while it runs through an HTTP admin endpoint
(the same port for HTTP services, a second port for gRPC ones)::

    POST /admin/config {"fail_rate": 0.5, "fail_status": 500, "delay_ms": 0,
                        "healthy": true}
    GET  /admin/stats  -> {"requests": n, "by_path": {...}, "in_flight": n}

HTTP routes: every path answers with a JSON echo (instance, region, method,
path, query, body, the headers it received) after ``delay_ms`` (or the
``delay_ms`` query parameter), or ``fail_status`` with probability
``fail_rate``. ``GET /healthz`` answers 200, or 503 when ``healthy`` is false.

Run: ``python -m meridian.sandbox.testservice --service echo --region us-east
--agent http://127.0.0.1:14021``. It prints one JSON line when ready:
``{"instance_id": ..., "port": ..., "admin_port": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meridian.security.tls import TlsFiles, client_context

ECHO_HEADERS = ("idempotency-key", "meridian-timeout-ms", "traceparent", "x-test")


@dataclass
class Behaviour:
    fail_rate: float = 0.0
    fail_status: int = 500
    delay_ms: float = 0.0
    healthy: bool = True
    requests: int = 0
    in_flight: int = 0
    by_path: collections.Counter[str] = field(default_factory=collections.Counter)

    def update(self, raw: dict[str, Any]) -> None:
        self.fail_rate = float(raw.get("fail_rate", self.fail_rate))
        self.fail_status = int(raw.get("fail_status", self.fail_status))
        self.delay_ms = float(raw.get("delay_ms", self.delay_ms))
        self.healthy = bool(raw.get("healthy", self.healthy))

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "by_path": dict(self.by_path),
            "fail_rate": self.fail_rate,
            "delay_ms": self.delay_ms,
            "healthy": self.healthy,
        }


class TestService:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.b = Behaviour(fail_rate=args.fail_rate, delay_ms=args.delay_ms)
        self.instance_id = args.instance_id
        self.rand = random.Random()

    # -- HTTP -----------------------------------------------------------------

    def admin_routes(self, app: web.Application) -> None:
        async def config(request: web.Request) -> web.Response:
            self.b.update(await request.json())
            return web.json_response(self.b.stats())

        async def stats(_: web.Request) -> web.Response:
            return web.json_response(self.b.stats())

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(status=200 if self.b.healthy else 503, text="ok")

        app.router.add_post("/admin/config", config)
        app.router.add_get("/admin/stats", stats)
        app.router.add_get("/healthz", healthz)

    async def _serve_one(self, path: str, delay_ms: float) -> bool:
        """Count and delay one request; returns True if it should fail."""
        self.b.requests += 1
        self.b.by_path[path] += 1
        self.b.in_flight += 1
        try:
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
        finally:
            self.b.in_flight -= 1
        return self.rand.random() < self.b.fail_rate

    async def echo(self, request: web.Request) -> web.Response:
        delay = float(request.query.get("delay_ms", self.b.delay_ms))
        fail = await self._serve_one(request.path, delay)
        body = await request.read()
        payload = {
            "instance": self.instance_id,
            "region": self.args.region,
            "service": self.args.service,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "body": body.decode("utf-8", "replace"),
            "headers": {k: v for k, v in request.headers.items() if k.lower() in ECHO_HEADERS},
        }
        if fail:
            return web.json_response(
                {"error": "injected failure", **payload}, status=self.b.fail_status
            )
        return web.json_response(payload, headers={"X-Served-By": self.instance_id})

    # -- gRPC -----------------------------------------------------------------

    def grpc_handler(self) -> grpc.GenericRpcHandler:
        svc = self

        class Echo(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                method = details.method
                if method.startswith("/grpc.health.v1."):
                    return None

                async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    fail = await svc._serve_one(method, svc.b.delay_ms)
                    if fail:
                        await context.abort(grpc.StatusCode.INTERNAL, "injected failure")
                    md = dict(context.invocation_metadata() or ())
                    await context.send_initial_metadata((("x-served-by", svc.instance_id),))
                    binary = md.get("x-test-bin", b"")
                    if isinstance(binary, bytes) and binary:
                        # Binary metadata comes back reversed, as a trailer.
                        context.set_trailing_metadata((("x-echo-bin", binary[::-1]),))
                    echo = {
                        "instance": svc.instance_id,
                        "region": svc.args.region,
                        "method": method,
                        "x-test": md.get("x-test", ""),
                        "x-test-bin": binary.hex() if isinstance(binary, bytes) else "",
                    }
                    return json.dumps(echo).encode() + b"\n" + request

                return grpc.unary_unary_rpc_method_handler(unary)

        return Echo()

    # -- registration ---------------------------------------------------------

    async def register(self, session: aiohttp.ClientSession, port: int) -> None:
        body: dict[str, Any] = {
            "instance": {
                "service": self.args.service,
                "version": self.args.version,
                "endpoint": f"127.0.0.1:{port}",
                "protocol": "PROTOCOL_GRPC" if self.args.protocol == "grpc" else "PROTOCOL_HTTP",
                "healthCheck": {"httpPath": "/healthz", "interval": f"{self.args.check_interval}s"},
            },
            "ttl": f"{self.args.ttl}s",
        }
        if self.instance_id:
            body["instance"]["instanceId"] = self.instance_id
        async with session.post(f"{self.args.agent}/v1/registry/register", json=body) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"register failed: {resp.status} {data}")
            self.instance_id = data["instanceId"]

    async def keep_alive(self, session: aiohttp.ClientSession, port: int) -> None:
        while True:
            await asyncio.sleep(self.args.ttl / 3)
            try:
                async with session.post(
                    f"{self.args.agent}/v1/registry/heartbeat",
                    json={"instanceId": self.instance_id},
                ) as resp:
                    if resp.status == 404:
                        await self.register(session, port)
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                print(f"heartbeat failed: {exc}", file=sys.stderr, flush=True)

    async def run(self) -> None:
        args = self.args
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        admin = web.Application(client_max_size=8 << 20)
        self.admin_routes(admin)
        grpc_server: grpc.aio.Server | None = None
        if args.protocol == "http":
            admin.router.add_route("*", "/{tail:.*}", self.echo)
        runner = web.AppRunner(admin, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        http_port = args.port if args.protocol == "http" else args.admin_port
        site = web.TCPSite(runner, "127.0.0.1", http_port)
        await site.start()
        http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        port = http_port
        if args.protocol == "grpc":
            grpc_server = grpc.aio.server()
            hs = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(hs, grpc_server)
            grpc_server.add_generic_rpc_handlers((self.grpc_handler(),))
            port = grpc_server.add_insecure_port(f"127.0.0.1:{args.port}")
            await grpc_server.start()
            await hs.set("", health_pb2.HealthCheckResponse.SERVING)
        # With --tls-dir, the service's own identity towards its agent (mutual TLS).
        tls = client_context(TlsFiles.in_folder(args.tls_dir)) if args.tls_dir else None
        connector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
        async with aiohttp.ClientSession(connector=connector) as session:
            await self.register(session, port)
            print(
                json.dumps(
                    {"instance_id": self.instance_id, "port": port, "admin_port": http_port}
                ),
                flush=True,
            )
            beat = asyncio.create_task(self.keep_alive(session, port))
            await stop.wait()
            beat.cancel()
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.post(
                    f"{args.agent}/v1/registry/deregister",
                    json={"instanceId": self.instance_id},
                    timeout=aiohttp.ClientTimeout(total=2),
                ):
                    pass
        if grpc_server is not None:
            await grpc_server.stop(0.5)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--service", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--agent", required=True, help="the region agent's HTTP URL")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--admin-port", type=int, default=0)
    p.add_argument("--instance-id", default="")
    p.add_argument("--version", default="test", help="the version it registers")
    p.add_argument("--ttl", type=float, default=5.0)
    p.add_argument("--check-interval", type=float, default=0.5)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument(
        "--tls-dir",
        default="",
        help="cert.pem, key.pem and bundle.pem of the service's identity, for an mTLS agent",
    )
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(TestService(args).run())


if __name__ == "__main__":
    main()
