"""The gateway against stand-in agents: what passes through unchanged, bad input,
its own endpoints, and the real ``meridian gateway`` process (SIGTERM).
"""

import asyncio
import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from meridian.gateway import REGION_RESPONSE_HEADER
from meridian.sandbox.processes import port_in_use
from tests.conftest import eventually
from tests.integration.gateway_harness import (
    AGENT_MAX_BODY,
    AGENT_PORTS,
    CONFIG,
    GATEWAY_PORT,
    GW,
    HINT,
    REGIONS,
    StandInAgent,
    gateway,
    metrics,
    served_by,
)

# The stand-in agents and the client session are fixtures of the harness.
pytest_plugins = ["tests.integration.gateway_harness"]

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
