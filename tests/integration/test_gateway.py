"""The gateway against stand-in agents: real aiohttp servers on real ports that answer
``/v1/health`` and ``/v1/status`` like an agent, plus an echo route and streams.

The gateway runs in-process (and once as a real ``meridian gateway`` process, for
SIGTERM). Ports 20100-20199 (below the ephemeral range): stand-in agents on 20131-20133, the gateway on 20190.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from meridian.config import MeridianConfig, parse_config
from meridian.gateway import REGION_RESPONSE_HEADER, Gateway
from meridian.sandbox.processes import port_in_use
from tests.conftest import eventually

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
async def gateway(answer_timeout_s: float = 30.0, **settings: Any) -> AsyncIterator[Gateway]:
    config = make_config()
    gw_settings = dataclasses.replace(config.gateway, **settings)
    targets = {r.name: r.http_url for r in config.regions}
    async with Gateway(
        gw_settings, targets, config.latency, answer_timeout_s=answer_timeout_s
    ) as gw:
        yield gw


@pytest.fixture
async def agents() -> AsyncIterator[dict[str, StandInAgent]]:
    async with stand_ins() as a:
        yield a


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


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


# -- routing -------------------------------------------------------------------------


async def test_hinted_region_serves_and_the_answer_names_it(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        for region in REGIONS:
            assert await served_by(client, region) == (200, region)
        # A well-formed hint naming no region is not an error: the nearest region serves.
        status, region = await served_by(client, "mars-1")
        assert status == 200 and region in REGIONS
        status, region = await served_by(client, None)
        assert status == 200 and region in REGIONS
        regions = await region_status(client)
        assert all(r["up"] and r["rtt_ms"] is not None for r in regions.values())


async def test_without_a_hint_the_fastest_region_by_measured_round_trip(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    agents["us-east"].health_delay_s = 0.2
    agents["ap-south"].health_delay_s = 0.35
    async with gateway(health_timeout_s=1.0):

        async def order() -> list[str]:
            regions = await region_status(client)
            return sorted(regions, key=lambda r: regions[r]["rtt_ms"] or 1e9)

        await eventually(order, lambda o: o == ["eu-west", "us-east", "ap-south"], what="RTTs")
        assert await served_by(client, None) == (200, "eu-west")


async def test_a_refused_connection_fails_over_at_once_to_the_nearest_region(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    # Health checks far apart: only the proxied request can notice the dead region.
    async with gateway(health_interval_s=60):
        assert await served_by(client, "eu-west") == (200, "eu-west")
        await agents["eu-west"].stop()
        # The request that finds eu-west gone is served by us-east, without an error.
        assert await served_by(client, "eu-west") == (200, "us-east")
        regions = await region_status(client)
        assert not regions["eu-west"]["up"]
        assert "cannot connect" in regions["eu-west"]["last_error"]
        text = await metrics(client)
        assert 'meridian_gateway_region_up{region="eu-west"} 0.0' in text
        assert 'meridian_gateway_failovers_total{from_region="eu-west",to_region="us-east"}' in text
        # From ap-south's point of view eu-west (65 ms) is nearer than us-east (100 ms).
        assert await served_by(client, "ap-south") == (200, "ap-south")


async def test_failed_health_checks_take_a_region_out_and_one_success_brings_it_back(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        agents["eu-west"].health_status = 503  # NOT_SERVING, though it still answers
        await eventually(
            lambda: region_status(client),
            lambda s: not s["eu-west"]["up"],
            what="eu-west out of rotation",
        )
        regions = await region_status(client)
        assert regions["eu-west"]["consecutive_failures"] >= 2
        assert regions["eu-west"]["last_error"] == "health check answered HTTP 503"
        assert await served_by(client, "eu-west") == (200, "us-east")
        assert 'result="unhealthy"' in await metrics(client)
        agents["eu-west"].health_status = 200
        await eventually(
            lambda: served_by(client, "eu-west"), lambda s: s == (200, "eu-west"), what="back"
        )


async def test_a_health_check_that_times_out_is_a_failure(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway(health_timeout_s=0.2):
        agents["ap-south"].health_delay_s = 5
        await eventually(
            lambda: region_status(client),
            lambda s: not s["ap-south"]["up"],
            what="ap-south out of rotation",
        )
        assert "timed out" in (await region_status(client))["ap-south"]["last_error"]
        assert 'meridian_gateway_health_checks_total{region="ap-south",result="timeout"}' in (
            await metrics(client)
        )


async def test_no_region_up_is_503_unavailable(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        for a in agents.values():
            await a.stop()
        async with client.get(f"{GW}/v1/status", headers={HINT: "eu-west"}) as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body["error"]["code"] == "UNAVAILABLE"
        assert "eu-west" in body["error"]["message"]
        async with client.get(f"{GW}/gateway/health") as resp:
            assert resp.status == 503
        for a in agents.values():
            await a.start()
        await eventually(
            lambda: served_by(client, "ap-south"), lambda s: s == (200, "ap-south"), what="back"
        )


async def test_an_agent_that_hangs_up_without_answering_is_a_502(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        async with client.post(f"{GW}/hangup", headers={HINT: "us-east"}, data=b"x") as resp:
            assert resp.status == 502
            body = await resp.json()
        assert body["error"]["code"] == "UNAVAILABLE"
        assert "us-east" in body["error"]["message"]
        # Not a connection failure: the request may have run, so nothing else ran it.
        assert all(not a.seen for a in agents.values())
        assert (await region_status(client))["us-east"]["up"]
        assert 'meridian_gateway_requests_total{code="502",region="us-east"}' in (
            await metrics(client)
        )


async def test_an_agent_that_never_answers_is_a_502_after_the_answer_timeout(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway(answer_timeout_s=0.3):
        async with client.get(f"{GW}/frozen", headers={HINT: "eu-west"}) as resp:
            assert resp.status == 502
            body = await resp.json()
        assert body["error"]["code"] == "UNAVAILABLE"
        assert "eu-west failed to answer: no answer within 0.3s" in body["error"]["message"]
        assert await served_by(client, "eu-west") == (200, "eu-west")


# -- what passes through ---------------------------------------------------------------


async def test_method_path_query_headers_and_body_pass_through(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    path = "/echo/a%2Fb/%7Euser?x=1&x=2&y=%20z"
    headers = [
        (HINT, "ap-south"),
        ("X-Custom", "one"),
        ("X-Custom", "two"),
        ("Content-Type", "application/octet-stream"),
        ("Keep-Alive", "timeout=5"),
        ("X-Drop-Me", "named in Connection"),
        ("Connection", "keep-alive, X-Drop-Me"),
        ("TE", "trailers"),
    ]
    body = os.urandom(4096)
    async with (
        gateway(),
        client.request(
            "PUT",
            URL(f"{GW}{path}", encoded=True),  # exactly these bytes, not re-quoted
            headers=headers,
            data=body,
            skip_auto_headers=["User-Agent"],
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers[REGION_RESPONSE_HEADER] == "ap-south"
        assert resp.headers["X-From-Agent"] == "yes"
        seen = await resp.json()
    assert seen["method"] == "PUT"
    assert seen["raw_path"] == path
    assert seen["body_len"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    got = seen["headers"]
    names = {k.lower() for k, _ in got}
    assert [v for k, v in got if k.lower() == "x-custom"] == ["one", "two"]
    assert [v for k, v in got if k.lower() == HINT.lower()] == ["ap-south"]
    assert "keep-alive" not in names and "te" not in names and "x-drop-me" not in names
    assert "user-agent" not in names  # nothing added on the way
    assert dict((k.lower(), v) for k, v in got)["host"] == f"127.0.0.1:{AGENT_PORTS['ap-south']}"
    assert "x-forwarded-for" in names


async def test_status_codes_and_compressed_bodies_pass_through_unchanged(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        async with client.delete(f"{GW}/echo/x", headers={"X-Want-Status": "409"}) as resp:
            assert resp.status == 409
        async with client.get(f"{GW}/gzip", headers={HINT: "us-east"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            raw = await resp.read()
        assert gzip.decompress(raw) == b"compressed " * 100


async def test_cookies_are_not_kept_between_clients(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        async with client.get(f"{GW}/cookie?who=alice", headers={HINT: "us-east"}) as resp:
            assert "secret-of-alice" in resp.headers["Set-Cookie"]
        async with (
            aiohttp.ClientSession() as bob,
            bob.get(f"{GW}/cookie?who=bob", headers={HINT: "us-east"}) as resp,
        ):
            assert (await resp.json())["cookie_seen"] == ""


async def test_server_sent_events_are_streamed_not_buffered(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway(), client.get(f"{GW}/sse", headers={HINT: "eu-west"}) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers[REGION_RESPONSE_HEADER] == "eu-west"
        # The stand-in holds the stream open after the first event: it must arrive anyway.
        first = await resp.content.readuntil(b"\n\n")
        assert first == b"id: 1\ndata: first\n\n"
        agents["eu-west"].release_stream.set()
        rest = await resp.content.read()
        assert rest == b"id: 2\ndata: second\n\n"


async def test_an_answer_cut_off_upstream_is_cut_off_for_the_client(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        async with client.get(f"{GW}/broken", headers={HINT: "us-east"}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert await served_by(client, "us-east") == (200, "us-east")


async def test_a_large_body_passes_unchanged_up_to_the_agents_limit(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    body = os.urandom(AGENT_MAX_BODY - 1024)
    async with gateway():
        async with client.post(f"{GW}/echo/big", data=body, headers={HINT: "eu-west"}) as resp:
            assert resp.status == 200
            seen = await resp.json()
        assert seen["body_len"] == len(body)
        assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
        # Past the agent's limit the agent's own refusal comes back.
        too_big = body + os.urandom(4096)
        async with client.post(f"{GW}/echo/big", data=too_big, headers={HINT: "eu-west"}) as resp:
            assert resp.status == 413
        assert await served_by(client, "eu-west") == (200, "eu-west")


# -- hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "rule"),
    [("x" * 65, "at most 64"), ("y" * 4000, "at most 64"), ("eu west", "region name"),
     ("../../etc", "region name"), ("eu-west\t;drop", "region name")],
)  # fmt: skip
async def test_a_bad_hint_is_400_naming_the_header(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession, hint: str, rule: str
) -> None:
    async with gateway():
        async with client.get(f"{GW}/echo/x", headers={HINT: hint}) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["error"]["code"] == "INVALID_ARGUMENT"
        assert body["error"]["field"] == HINT
        assert rule in body["error"]["message"]
        assert all(not a.seen for a in agents.values())


async def test_a_repeated_hint_header_is_400(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        headers = [(HINT, "eu-west"), (HINT, "us-east")]
        async with client.get(f"{GW}/echo/x", headers=headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["field"] == HINT


def raw_request(data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", GATEWAY_PORT), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


async def test_malformed_requests_are_refused_and_the_gateway_keeps_serving(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        # An unusual but valid method goes through to the agent, which decides.
        async with client.request("PURGE", f"{GW}/echo/x") as resp:
            assert resp.status == 200
            assert (await resp.json())["method"] == "PURGE"
        bad_method = await asyncio.to_thread(raw_request, b"G(E)T / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bad_method.split(b"\r\n")[0].endswith(b" 400 Bad Request")
        huge_header = b"GET / HTTP/1.1\r\nHost: x\r\n" + HINT.encode() + b": " + b"a" * 100_000
        answer = await asyncio.to_thread(raw_request, huge_header + b"\r\n\r\n")
        assert answer.split(b"\r\n")[0].split(b" ")[1] in (b"400", b"431")
        async with client.post(f"{GW}/gateway/status") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET, HEAD"
        assert all(not a.seen or a.seen[0]["method"] == "PURGE" for a in agents.values())
        assert await served_by(client, "us-east") == (200, "us-east")


# -- own endpoints and the process -----------------------------------------------------


async def test_own_endpoints(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway():
        async with client.get(f"{GW}/gateway/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["regions_up"] == list(REGIONS)
        async with client.get(f"{GW}/gateway/status") as resp:
            status = await resp.json()
        assert status["gateway"]["region_header"] == HINT
        for r in status["regions"]:
            assert set(r) >= {
                "region",
                "up",
                "rtt_ms",
                "consecutive_failures",
                "last_error",
                "since",
            }
        await served_by(client, "us-east")
        text = await metrics(client)
        for series in (
            'meridian_gateway_requests_total{code="200",region="us-east"}',
            'meridian_gateway_request_seconds_bucket{le="0.001",region="us-east"}',
            'meridian_gateway_region_up{region="ap-south"} 1.0',
            'meridian_gateway_health_checks_total{region="eu-west",result="ok"}',
        ):
            assert series in text


async def test_the_gateway_process_serves_and_stops_on_sigterm(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = tmp_path / "meridian.toml"
    config.write_text(CONFIG)
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "meridian.cli.main", "--config", str(config), "gateway"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def answer() -> tuple[int, str]:
            try:
                return await served_by(client, "eu-west")
            except aiohttp.ClientError:
                return 0, ""

        await eventually(answer, lambda a: a == (200, "eu-west"), what="gateway process serving")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert [x["message"] for x in lines][-2:] == ["gateway stopping", "gateway stopped"]
    assert not port_in_use(GATEWAY_PORT)
