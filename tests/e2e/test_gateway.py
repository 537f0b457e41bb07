"""The global gateway in the shared sandbox: real agents, a real region kill.

The sandbox starts the gateway (``meridian gateway``, port base + 90) after the
agents. These tests leave the sandbox as they found it: a killed region is
brought back with ``sandbox up`` and every agent is healthy again at the end.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import uuid
from typing import Any

import aiohttp

from tests.conftest import eventually
from tests.e2e.conftest import REGIONS, SandboxHandle

HINT = "Meridian-Region"
SERVED = "Meridian-Gateway-Region"


def gateway_url(sandbox: SandboxHandle) -> str:
    return f"https://127.0.0.1:{sandbox.config.gateway.port}"  # TLS towards clients too


async def via_gateway(sandbox: SandboxHandle, hint: str | None) -> tuple[int, str]:
    """(HTTP status, region that answered ``GET /v1/status``); (0, error) on no answer."""
    headers = {HINT: hint} if hint else {}
    try:
        async with (
            sandbox.session(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{gateway_url(sandbox)}/v1/status", headers=headers) as resp,
        ):
            if resp.status != 200:
                return resp.status, await resp.text()
            region = (await resp.json())["status"]["region"]
            assert resp.headers[SERVED] == region
            return 200, region
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


async def gateway_metrics(sandbox: SandboxHandle) -> str:
    try:
        async with (
            sandbox.session(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{gateway_url(sandbox)}/metrics") as resp,
        ):
            return await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return ""


def region_up(metrics: str, region: str) -> float | None:
    m = re.search(rf'^meridian_gateway_region_up{{region="{region}"}} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else None


async def agent_healthy(sandbox: SandboxHandle, region: str) -> bool:
    url = f"{sandbox.config.region(region).http_url}/v1/status"
    try:
        async with (
            sandbox.session(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(url) as resp,
        ):
            st = (await resp.json())["status"]
    except (aiohttp.ClientError, TimeoutError, KeyError):
        return False
    return bool(
        st["nats"]["connected"]
        and st["jetstream"]["available"]
        and st["global"]["quorumReachable"]
        and all(p["reachable"] for p in st["peers"])
    )


async def all_green(sandbox: SandboxHandle) -> bool:
    return all(await asyncio.gather(*(agent_healthy(sandbox, r) for r in REGIONS)))


async def wait_all_green(sandbox: SandboxHandle, what: str) -> None:
    await eventually(lambda: all_green(sandbox), bool, timeout_s=180, interval_s=0.5, what=what)


async def test_sandbox_runs_the_gateway_and_says_where(sandbox: SandboxHandle) -> None:
    assert f"Gateway: {gateway_url(sandbox)}" in sandbox.up_output
    # The sandbox is shared: an earlier module's partition may still be healing
    # (a JetStream meta election makes agents answer 503 for a few seconds).
    await wait_all_green(sandbox, "every agent healthy before the gateway is asked")

    async def gateway_status() -> dict[str, Any]:
        status = {s["name"]: s for s in await asyncio.to_thread(sandbox.status)}
        return status["gateway"]

    def all_regions_up(gw: dict[str, Any]) -> bool:
        return "regions up: us-east, eu-west, ap-south" in gw["detail"]

    gw = await eventually(gateway_status, all_regions_up, what="the gateway sees every region")
    assert gw["running"] and gw["healthy"], gw
    assert gw["region"] == ""


async def test_hinted_requests_are_served_by_the_hinted_region(sandbox: SandboxHandle) -> None:
    for region in REGIONS:

        async def probe(r: str = region) -> tuple[int, str]:
            return await via_gateway(sandbox, r)

        def served_by_hinted(got: tuple[int, str], r: str = region) -> bool:
            return got == (200, r)

        await eventually(probe, served_by_hinted, what=f"{region} serves its hinted requests")
    status, region = await via_gateway(sandbox, None)
    assert status == 200 and region in REGIONS


async def test_killed_region_is_detected_and_its_traffic_goes_to_the_nearest_region(
    sandbox: SandboxHandle,
) -> None:
    await wait_all_green(sandbox, "sandbox healthy before the region kill")
    await eventually(
        lambda: via_gateway(sandbox, "eu-west"), lambda got: got == (200, "eu-west"), what="eu-west"
    )
    gateway_pid = sandbox.state()["gateway"]["pid"]
    out = sandbox.cli("sandbox", "kill", "eu-west").stdout
    try:
        assert "gateway" not in out
        await eventually(
            lambda: gateway_metrics(sandbox),
            lambda m: region_up(m, "eu-west") == 0,
            timeout_s=60,
            what="the gateway sees eu-west down",
        )
        # us-east is eu-west's nearest region (35 ms; ap-south is 65 ms away).
        await eventually(
            lambda: via_gateway(sandbox, "eu-west"),
            lambda got: got == (200, "us-east"),
            timeout_s=60,
            what="eu-west's requests served by us-east",
        )
        # Once detected, no hinted request fails: none is sent to eu-west any more.
        for _ in range(20):
            status, region = await via_gateway(sandbox, "eu-west")
            assert status == 200, region
            assert region in ("us-east", "ap-south")
        text = await gateway_metrics(sandbox)
        assert 'meridian_gateway_failovers_total{from_region="eu-west",to_region="us-east"}' in text
        status_by_name = {s["name"]: s for s in sandbox.status()}
        assert status_by_name["gateway"]["running"]
        assert "down: eu-west" in status_by_name["gateway"]["detail"]
        assert sandbox.state()["gateway"]["pid"] == gateway_pid
    finally:
        sandbox.cli("sandbox", "up")
    # `sandbox up` returns once the gateway has every region in rotation again.
    assert await via_gateway(sandbox, "eu-west") == (200, "eu-west")
    assert region_up(await gateway_metrics(sandbox), "eu-west") == 1
    await wait_all_green(sandbox, "sandbox healthy after eu-west came back")


async def test_server_sent_events_of_a_watch_pass_through(sandbox: SandboxHandle) -> None:
    key = f"gw-watch-{uuid.uuid4().hex[:8]}"
    gw = gateway_url(sandbox)
    async with sandbox.session(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def put() -> bool:
            body = {"keyspace": "carts", "key": key, "value": base64.b64encode(b"v").decode()}
            async with session.post(
                f"{gw}/v1/state/put", json=body, headers={HINT: "ap-south"}
            ) as resp:
                return resp.status == 200

        async with session.get(
            f"{gw}/v1/state/watch",
            params={"keyspace": "carts", "prefix": key},
            headers={HINT: "ap-south"},
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers[SERVED] == "ap-south"
            await eventually(put, bool, what="put through the gateway")
            lines: list[str] = []
            while len(lines) < 3:
                line = (await asyncio.wait_for(resp.content.readline(), 60)).decode().strip()
                if line:
                    lines.append(line)
    assert lines[1] == "event: put"
    assert key in lines[2]


async def test_a_large_value_passes_through_unchanged(sandbox: SandboxHandle) -> None:
    value = os.urandom(1000 << 10)  # the keyspace's limit is 1 MiB
    key = f"gw-big-{uuid.uuid4().hex[:8]}"
    gw = gateway_url(sandbox)
    encoded = base64.b64encode(value).decode()
    async with sandbox.session(timeout=aiohttp.ClientTimeout(total=120)) as session:
        put = {"keyspace": "carts", "key": key, "value": encoded}
        async with session.post(f"{gw}/v1/state/put", json=put, headers={HINT: "us-east"}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers[SERVED] == "us-east"

        async def get() -> dict[str, Any]:
            body = {"keyspace": "carts", "key": key}
            async with session.post(
                f"{gw}/v1/state/get", json=body, headers={HINT: "us-east"}
            ) as resp:
                return await resp.json() if resp.status == 200 else {}

        got = await eventually(get, lambda g: "entry" in g, what="the value read back")
        assert base64.b64decode(got["entry"]["value"]) == value
        # Past the agent's body limit the agent's own INVALID_ARGUMENT comes back.
        too_big = b"x" * (13 << 20)
        async with session.post(
            f"{gw}/v1/state/put",
            data=too_big,
            headers={HINT: "us-east", "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["error"]["field"] == "body"


async def test_hostile_input(sandbox: SandboxHandle) -> None:
    gw = gateway_url(sandbox)
    async with sandbox.session(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for hint in ("x" * 65, "eu-west; DROP TABLE", "eu_west"):
            async with session.get(f"{gw}/v1/status", headers={HINT: hint}) as resp:
                assert resp.status == 400
                body = await resp.json()
            assert body["error"]["code"] == "INVALID_ARGUMENT"
            assert body["error"]["field"] == HINT
        # A method the agent does not serve: the agent's answer, through the gateway.
        async with session.request("PURGE", f"{gw}/v1/status", headers={HINT: "us-east"}) as resp:
            assert resp.status == 405
            assert resp.headers[SERVED] == "us-east"
        # A method no HTTP parser knows is refused by the gateway's own.
        async with session.request("BREW", f"{gw}/v1/status", headers={HINT: "us-east"}) as resp:
            assert resp.status == 400
            assert SERVED not in resp.headers
        async with session.get(f"{gw}/v1/status", headers={HINT: "mars-1"}) as resp:
            assert resp.status == 200  # an unknown region: the nearest serves
    assert (await via_gateway(sandbox, "us-east")) == (200, "us-east")
