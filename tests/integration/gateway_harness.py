"""Stand-in agents and an in-process gateway for the gateway's integration tests.

Stand-in agents are real aiohttp servers on real ports that answer
``/v1/health`` and ``/v1/status`` like an agent, plus an echo route and streams.
Ports 20100-20199 (below the ephemeral range): stand-in agents on 20131-20133,
the gateway on 20190.
"""

import asyncio
import contextlib
import dataclasses
import gzip
import hashlib
import tomllib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meridian.config import MeridianConfig, parse_config
from meridian.gateway import REGION_RESPONSE_HEADER, Gateway
from meridian.security.tls import ReloadingContext

REGIONS = ("us-east", "eu-west", "ap-south")
AGENT_PORTS = {"us-east": 20131, "eu-west": 20132, "ap-south": 20133}
GATEWAY_PORT = 20190
AGENT_MAX_BODY = 12 << 20
HINT = "Meridian-Region"

CONFIG = f"""
[sandbox]
base_port = 20100

[gateway]
port = {GATEWAY_PORT}
health_interval_s = 0.1
health_timeout_s = 0.5
# These tests are of proxying: every path passes (test_gateway_allow.py tests the list).
allow = ["/*"]

# The stand-in agents are plain HTTP servers.
[security]
mode = "insecure"

[[wan.link]]
a = "us-east"
b = "eu-west"
latency_ms = 35

[[wan.link]]
a = "us-east"
b = "ap-south"
latency_ms = 100

[[wan.link]]
a = "eu-west"
b = "ap-south"
latency_ms = 65
""" + "".join(
    f'\n[[region]]\nname = "{r}"\nhttp_port = {p}\ngrpc_port = {p + 10}\n'
    # No sandbox servers: each region names its own (absent) NATS.
    'nats_urls = ["nats://127.0.0.1:1"]\n'
    for r, p in AGENT_PORTS.items()
)


def make_config() -> MeridianConfig:
    return parse_config(tomllib.loads(CONFIG), env={})


class StandInAgent:
    """An HTTP server that looks like a region's agent to the gateway."""

    def __init__(self, region: str, port: int) -> None:
        self.region = region
        self.port = port
        self.health_status = 200
        self.health_delay_s = 0.0
        self.release_stream = asyncio.Event()
        self.seen: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=AGENT_MAX_BODY)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/sse", self._sse)
        app.router.add_get("/cookie", self._cookie)
        app.router.add_get("/gzip", self._gzip)
        app.router.add_post("/hangup", self._hangup)
        app.router.add_get("/broken", self._broken)
        app.router.add_get("/frozen", self._frozen)
        app.router.add_route("*", "/echo/{tail:.*}", self._echo)
        # Stopping is abrupt, like a killed agent: requests in flight are cut off.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.1
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        """Like a killed agent: the port refuses connections from now on."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.health_delay_s)
        status = "SERVING" if self.health_status == 200 else "NOT_SERVING"
        return web.json_response(
            {"status": status, "region": self.region}, status=self.health_status
        )

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"status": {"region": self.region}})

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = {
            "region": self.region,
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        self.seen.append(seen)
        status = int(request.headers.get("X-Want-Status", "200"))
        return web.json_response(seen, status=status, headers={"X-From-Agent": "yes"})

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"id: 1\ndata: first\n\n")
        await self.release_stream.wait()
        await response.write(b"id: 2\ndata: second\n\n")
        return response

    async def _cookie(self, request: web.Request) -> web.Response:
        seen = request.headers.get("Cookie", "")
        response = web.json_response({"cookie_seen": seen})
        response.set_cookie("session", f"secret-of-{request.query.get('who', '?')}")
        return response

    async def _gzip(self, request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"compressed " * 100),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def _hangup(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()  # connected, then no answer at all
        await asyncio.sleep(0.1)
        return web.Response()

    async def _frozen(self, request: web.Request) -> web.Response:
        await self.release_stream.wait()  # like a stopped process: connected, never answers
        return web.Response()

    async def _broken(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.abort()
        return response


@contextlib.asynccontextmanager
async def stand_ins() -> AsyncIterator[dict[str, StandInAgent]]:
    agents = {r: StandInAgent(r, p) for r, p in AGENT_PORTS.items()}
    try:
        for a in agents.values():
            await a.start()
        yield agents
    finally:
        for a in agents.values():
            a.release_stream.set()
            await a.stop()


@contextlib.asynccontextmanager
async def gateway(
    answer_timeout_s: float = 30.0, server_tls: ReloadingContext | None = None, **settings: Any
) -> AsyncIterator[Gateway]:
    config = make_config()
    gw_settings = dataclasses.replace(config.gateway, **settings)
    targets = {r.name: r.http_url for r in config.regions}
    async with Gateway(
        gw_settings,
        targets,
        config.latency,
        answer_timeout_s=answer_timeout_s,
        server_tls=server_tls,
    ) as gw:
        yield gw


GW = f"http://127.0.0.1:{GATEWAY_PORT}"


async def served_by(client: aiohttp.ClientSession, hint: str | None) -> tuple[int, str]:
    headers = {HINT: hint} if hint else {}
    async with client.get(f"{GW}/v1/status", headers=headers) as resp:
        if resp.status != 200:
            return resp.status, ""
        body = await resp.json()
        assert resp.headers[REGION_RESPONSE_HEADER] == body["status"]["region"]
        return resp.status, body["status"]["region"]


async def metrics(client: aiohttp.ClientSession) -> str:
    async with client.get(f"{GW}/metrics") as resp:
        return await resp.text()


async def region_status(client: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
    async with client.get(f"{GW}/gateway/status") as resp:
        return {r["region"]: r for r in (await resp.json())["regions"]}


@pytest.fixture
async def agents() -> AsyncIterator[dict[str, StandInAgent]]:
    """Stand-in agents of the three regions (import this fixture into a test module)."""
    async with stand_ins() as a:
        yield a


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session
