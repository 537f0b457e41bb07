"""Service discovery and invocation on the sandbox, through the real WAN emulator,
with real HTTP and gRPC test-service processes (DESIGN §5, issue 5).

Resilience settings of the services used here (flaky, brk, slow, amp, keyed,
fb) are in the shared sandbox's configuration in conftest.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from typing import Any

import aiohttp
import grpc
import pytest
import yarl

from meridian.core.errors import NotFoundError
from meridian.security.tls import TlsFiles, grpc_channel_credentials
from tests.conftest import eventually
from tests.e2e.conftest import REGIONS, SandboxHandle
from tests.e2e.services import ServiceFleet, agent_metrics, metric


def invoke_url(sandbox: SandboxHandle, region: str, service: str, path: str = "echo") -> str:
    return f"{sandbox.config.region(region).http_url}/v1/invoke/{service}/{path}"


async def call(
    session: aiohttp.ClientSession,
    url: str,
    *,
    method: str = "POST",
    body: bytes = b"x",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], Any]:
    # encoded=True: send the path as written (no client-side '..' normalisation).
    target = yarl.URL(url, encoded=True)
    async with session.request(method, target, data=body, headers=headers or {}) as resp:
        raw = await resp.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw
        return resp.status, dict(resp.headers), data


async def test_the_registry_is_replicated_with_health_and_leases(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    inst = fleet.start("reg", "ap-south")
    await fleet.wait_visible([inst], everywhere=REGIONS)
    # The CLI lists it by region, with its health, from another region's replica.
    out = sandbox.cli("services", "--via", "us-east", "--service", "reg").stdout
    assert "ap-south:" in out and inst.instance_id in out and "healthy" in out
    # Its agent's health check sees it fail, and every region learns it.
    await fleet.configure(inst, healthy=False)
    await eventually(
        lambda: fleet.instances_seen("us-east", "reg", healthy=False),
        lambda got: inst.instance_id in got,
        timeout_s=30,
        what="us-east sees the instance unhealthy",
    )
    await fleet.configure(inst, healthy=True)
    await fleet.wait_visible([inst], everywhere=("us-east",))

    # A lease that is not renewed runs out, everywhere.
    async with sandbox.client("eu-west") as west:
        iid = await west.register("reg", f"127.0.0.1:{inst.port}", ttl_s=1.0)
        await eventually(
            lambda: fleet.instances_seen("us-east", "reg", healthy=None),
            lambda got: iid in got,
            timeout_s=30,
            what="us-east sees the short lease",
        )
        await eventually(
            lambda: fleet.instances_seen("us-east", "reg", healthy=None),
            lambda got: iid not in got,
            timeout_s=30,
            what="the expired lease is gone in us-east",
        )
        with pytest.raises(NotFoundError):
            await west.heartbeat(iid)


async def test_calls_fail_over_to_the_nearest_region_when_local_instances_die(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    local = [fleet.start("fo", "us-east"), fleet.start("fo", "us-east")]
    remote = [fleet.start("fo", "eu-west"), fleet.start("fo", "ap-south")]
    await fleet.wait_visible(local + remote, everywhere=("us-east",))
    url = invoke_url(sandbox, "us-east", "fo")
    served: collections.Counter[str] = collections.Counter()
    errors: list[tuple[int, Any]] = []
    stop = asyncio.Event()
    killed = asyncio.Event()
    after_kill: collections.Counter[str] = collections.Counter()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            # POST without an Idempotency-Key: never retried, so an error here
            # would reach the client.
            was_killed = killed.is_set()
            status, headers, data = await call(session, url, body=b"order")
            if status != 200:
                errors.append((status, data))
                continue
            served[headers["Meridian-Region"]] += 1
            if was_killed:
                after_kill[headers["Meridian-Region"]] += 1
            await asyncio.sleep(0.005)

    workers = 4
    async with sandbox.session() as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(workers)]
        await eventually(
            lambda: asyncio.sleep(0, served["us-east"]), lambda n: n >= 50, what="local calls"
        )
        for inst in local:
            fleet.kill(inst)
        killed.set()
        await eventually(
            lambda: asyncio.sleep(0, after_kill["eu-west"]),
            lambda n: n >= 100,
            timeout_s=60,
            what="calls served by eu-west after the kill",
        )
        stop.set()
        await asyncio.gather(*tasks)
    # Only calls in flight at the kill may fail: at most one per client.
    assert len(errors) <= workers, errors
    # The nearest region (35 ms, against 100 ms to ap-south) took over.
    assert after_kill["eu-west"] >= 100
    assert after_kill["ap-south"] <= after_kill["eu-west"] // 10, after_kill
    assert after_kill["us-east"] <= workers  # calls routed just before the kill was seen


async def test_a_call_fails_over_through_the_peer_agent_when_the_remote_region_dies(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    west = fleet.start("far", "eu-west")
    south = fleet.start("far", "ap-south")
    await fleet.wait_visible([west, south], everywhere=("us-east",))
    url = invoke_url(sandbox, "us-east", "far")
    async with sandbox.session() as session:
        status, headers, data = await call(session, url, method="GET")
        assert status == 200 and headers["Meridian-Region"] == "eu-west", data
        try:
            sandbox.cli("sandbox", "kill", "eu-west")
            fleet.kill(west)

            async def served_by() -> str:
                status, headers, _ = await call(session, url, method="GET")
                return headers.get("Meridian-Region", "") if status == 200 else f"{status}"

            await eventually(served_by, lambda r: r == "ap-south", timeout_s=60, what="ap-south")
            # and stays there: every call succeeds
            results = [await served_by() for _ in range(20)]
            assert results == ["ap-south"] * 20
        finally:
            sandbox.cli("sandbox", "restart", "eu-west")


async def test_the_grpc_proxy_passes_a_services_own_methods_through(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    inst = fleet.start("gecho", "eu-west", protocol="grpc")
    await fleet.wait_visible([inst], everywhere=("us-east",))
    target = sandbox.config.region("us-east").grpc_address
    creds = grpc_channel_credentials(TlsFiles.in_folder(sandbox.service_tls("e2e-caller")))
    async with grpc.aio.secure_channel(target, creds) as channel:
        say = channel.unary_unary("/echo.v1.Echo/Say")
        rpc = say(
            b"payload", metadata=(("meridian-service", "gecho"), ("x-test", "t1")), timeout=10
        )
        body = await rpc
        md = dict(await rpc.initial_metadata())
        first, rest = body.split(b"\n", 1)
        echo = json.loads(first)
        assert rest == b"payload"
        assert echo["method"] == "/echo.v1.Echo/Say" and echo["x-test"] == "t1"
        assert md["meridian-region"] == "eu-west" and md["meridian-instance"] == inst.instance_id

        # Binary (-bin) metadata reaches the instance, across regions, byte for
        # byte, and its binary trailer comes back.
        raw = bytes(range(256))
        rpc = say(b"bin", metadata=(("meridian-service", "gecho"), ("x-test-bin", raw)), timeout=10)
        first, _ = (await rpc).split(b"\n", 1)
        assert json.loads(first)["x-test-bin"] == raw.hex()
        assert dict(await rpc.trailing_metadata())["x-echo-bin"] == raw[::-1]

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await say(b"x", metadata=(("meridian-service", "Not_A_Service"),), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "meridian-service" in (bad.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await say(b"x", metadata=(("meridian-service", "nobody-home"),), timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_flaky_instance_is_ejected_and_readmitted_once_it_recovers(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    flaky = fleet.start("flaky", "us-east", fail_rate=0.5)
    good = fleet.start("flaky", "us-east")
    await fleet.wait_visible([flaky, good], everywhere=("us-east",))
    url = invoke_url(sandbox, "us-east", "flaky")
    labels = {"service": "flaky", "instance": flaky.instance_id}

    async def ejections() -> float:
        return metric(
            await agent_metrics(sandbox, "us-east"),
            "meridian_outlier_events_total",
            event="ejected",
            **labels,
        )

    async with sandbox.session() as session:

        async def burst(n: int) -> collections.Counter[str]:
            seen: collections.Counter[str] = collections.Counter()
            for _ in range(n):
                status, headers, _ = await call(session, url, method="GET")
                seen[f"{headers.get('Meridian-Instance')}:{status}"] += 1
            return seen

        async def ejected_once() -> float:
            await burst(10)
            return await ejections()

        await eventually(ejected_once, lambda n: n >= 1, timeout_s=60, what="the flaky one ejected")
        # While ejected, the healthy instance takes every call.
        during = await burst(10)
        assert set(during) <= {
            f"{good.instance_id}:200",
            f"{flaky.instance_id}:500",
            f"{flaky.instance_id}:200",
        }
        # It recovers; after its ejection runs out it is readmitted and serves again.
        await fleet.configure(flaky, fail_rate=0.0)

        async def flaky_serves() -> int:
            return (await burst(10))[f"{flaky.instance_id}:200"]

        await eventually(flaky_serves, lambda n: n > 0, timeout_s=60, what="readmitted")
        text = await agent_metrics(sandbox, "us-east")
        assert metric(text, "meridian_outlier_events_total", event="readmitted", **labels) >= 1
        # Readmitted for good: it keeps its share.
        later = await burst(40)
        assert later[f"{flaky.instance_id}:200"] >= 5, later
        assert not any(k.endswith(":500") for k in later), later


async def test_a_full_bulkhead_rejects_fast_and_other_targets_are_unaffected(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    slow = fleet.start("slow", "us-east", delay_ms=4000)
    other = fleet.start("quick", "us-east")
    await fleet.wait_visible([slow, other], everywhere=("us-east",))
    async with sandbox.session() as session:
        hogs = [
            asyncio.create_task(call(session, invoke_url(sandbox, "us-east", "slow"), method="GET"))
            for _ in range(4)
        ]
        await eventually(
            lambda: fleet.stats(slow), lambda s: s["in_flight"] == 4, what="bulkhead full"
        )
        for _ in range(5):
            status, _, data = await call(session, invoke_url(sandbox, "us-east", "slow"))
            assert status == 503, data
            assert data["error"]["code"] == "RESOURCE_EXHAUSTED"
        # The rejections came back while the four slow calls were all still running.
        assert not any(t.done() for t in hogs)
        assert (await fleet.stats(slow))["requests"] == 4
        # Another target is not held up by this one's bulkhead.
        for _ in range(5):
            status, headers, _ = await call(session, invoke_url(sandbox, "us-east", "quick"))
            assert status == 200 and headers["Meridian-Instance"] == other.instance_id
        assert not any(t.done() for t in hogs)
        results = await asyncio.gather(*hogs)
        assert [r[0] for r in results] == [200] * 4
    text = await agent_metrics(sandbox, "us-east")
    assert metric(text, "meridian_bulkhead_rejected_total", service="slow") >= 5


async def test_the_breaker_opens_half_opens_and_closes_with_metrics(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    inst = fleet.start("brk", "us-east", fail_rate=1.0)
    await fleet.wait_visible([inst], everywhere=("us-east",))
    url = invoke_url(sandbox, "us-east", "brk")
    async with sandbox.session() as session:
        statuses = [(await call(session, url, method="GET"))[0] for _ in range(3)]
        assert statuses == [500, 500, 500]  # the instance's own answers
        # Three in a row: the breaker for (brk, us-east) is open. No other region
        # has brk, so calls fail fast without reaching the instance.
        before = (await fleet.stats(inst))["requests"]
        for _ in range(5):
            status, _, data = await call(session, url, method="GET")
            assert status == 503 and "circuit breakers open" in data["error"]["message"], data
        assert (await fleet.stats(inst))["requests"] == before
        await fleet.configure(inst, fail_rate=0.0)

        async def probe() -> int:
            return (await call(session, url, method="GET"))[0]

        # After the cooldown one probe goes through; it succeeds, and the breaker closes.
        await eventually(probe, lambda s: s == 200, timeout_s=30, interval_s=0.3, what="closed")
        assert [await probe() for _ in range(5)] == [200] * 5
    text = await agent_metrics(sandbox, "us-east")
    edges = {
        (a, b): metric(
            text,
            "meridian_circuit_breaker_transitions_total",
            service="brk",
            target_region="us-east",
            from_state=a,
            to_state=b,
        )
        for a, b in (("closed", "open"), ("open", "half_open"), ("half_open", "closed"))
    }
    assert all(n >= 1 for n in edges.values()), edges
    assert (
        metric(text, "meridian_circuit_breaker_state", service="brk", target_region="us-east") == 0
    )


async def test_the_retry_budget_caps_amplification_and_an_unkeyed_post_is_never_retried(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    amp = fleet.start("amp", "us-east")
    keyed = fleet.start("keyed", "us-east")
    await fleet.wait_visible([amp, keyed], everywhere=("us-east",))
    await fleet.configure(amp, fail_rate=1.0, fail_status=503)
    await fleet.configure(keyed, fail_rate=1.0, fail_status=503)
    async with sandbox.session() as session:
        # Idempotent GETs of a target that always answers 503: retried, but only
        # within the budget (20% of requests, no reserve for this service).
        calls = 100
        for _ in range(calls):
            status, _, _ = await call(session, invoke_url(sandbox, "us-east", "amp"), method="GET")
            assert status == 503
        sent = (await fleet.stats(amp))["requests"]
        amplification = sent / calls
        assert 1.0 < amplification <= 1.21, amplification
        # A POST with no Idempotency-Key is never sent twice.
        before = (await fleet.stats(keyed))["requests"]
        for _ in range(20):
            await call(session, invoke_url(sandbox, "us-east", "keyed"), method="POST")
        assert (await fleet.stats(keyed))["requests"] - before == 20
        # The same POST with a key is retried (up to max_attempts = 3).
        before = (await fleet.stats(keyed))["requests"]
        status, headers, _ = await call(
            session,
            invoke_url(sandbox, "us-east", "keyed"),
            method="POST",
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert status == 503 and headers["Meridian-Attempts"] == "3"
        assert (await fleet.stats(keyed))["requests"] - before == 3
    text = await agent_metrics(sandbox, "us-east")
    assert (
        metric(
            text,
            "meridian_invocation_retry_decisions_total",
            service="amp",
            verdict="budget_exhausted",
        )
        >= 1
    )
    assert (
        metric(
            text,
            "meridian_invocation_retry_decisions_total",
            service="keyed",
            verdict="not_idempotent",
        )
        >= 20
    )


async def test_a_configured_fallback_answers_when_no_instance_can(
    sandbox: SandboxHandle,
) -> None:
    async with sandbox.session() as session:
        status, headers, data = await call(session, invoke_url(sandbox, "us-east", "fb"))
    assert status == 200 and data == {"fallback": True}
    assert headers["Meridian-Fallback"] == "1"


async def test_invoke_over_grpc_and_bad_input_over_http(
    sandbox: SandboxHandle, fleet: ServiceFleet
) -> None:
    inst = fleet.start("plain", "ap-south")
    await fleet.wait_visible([inst], everywhere=("eu-west",))
    async with sandbox.client("eu-west") as client:
        resp = await client.invoke(
            "plain", "items/7", b"hello", verb="PUT", headers={"X-Test": "v"}, query="a=1"
        )
        echo = json.loads(resp.body)
        assert resp.status == 200 and resp.region == "ap-south"
        assert resp.instance_id == inst.instance_id
        assert (echo["method"], echo["path"], echo["query"], echo["body"]) == (
            "PUT",
            "/items/7",
            "a=1",
            "hello",
        )
        assert echo["headers"]["X-Test"] == "v"
        assert "traceparent" in echo["headers"]

    base = sandbox.config.region("eu-west").http_url
    async with sandbox.session() as session:
        cases: list[tuple[str, str, bytes, dict[str, str], str]] = [
            ("POST", f"{base}/v1/invoke/Bad_Name/x", b"", {}, "service"),
            ("POST", f"{base}/v1/invoke/plain/a/../../admin", b"", {}, "method"),
            ("POST", f"{base}/v1/invoke/plain/a/%2e%2e/admin", b"", {}, "method"),
            ("POST", f"{base}/v1/invoke/plain/x", b"x" * (1 << 20), {}, "body"),
            (
                "POST",
                f"{base}/v1/invoke/plain/x",
                b"",
                {"Meridian-Timeout-Ms": "soon"},
                "Meridian-Timeout-Ms",
            ),
            (
                "POST",
                f"{base}/v1/invoke/plain/x",
                b"",
                {"Meridian-Timeout-Ms": "9" * 40},
                "Meridian-Timeout-Ms",
            ),
        ]
        for verb, url, body, headers, field in cases:
            status, _, data = await call(session, url, method=verb, body=body, headers=headers)
            assert status == 400, (url, data)
            assert data["error"]["code"] == "INVALID_ARGUMENT"
            assert field in data["error"]["field"], (field, data)
        bad_registrations = [
            (
                {"instance": {"service": "x", "endpoint": "nohost", "protocol": "PROTOCOL_HTTP"}},
                "instance.endpoint",
            ),
            ({"instance": {"service": "x", "endpoint": "127.0.0.1:1"}}, "instance.protocol"),
            (
                {
                    "instance": {
                        "service": "x",
                        "endpoint": "127.0.0.1:1",
                        "protocol": "PROTOCOL_HTTP",
                    },
                    "ttl": "0.2s",
                },
                "ttl",
            ),
            (
                {
                    "instance": {
                        "service": "x",
                        "endpoint": "127.0.0.1:1",
                        "protocol": "PROTOCOL_HTTP",
                        "instanceId": "a.b>",
                    }
                },
                "instance.instance_id",
            ),
            (
                {
                    "instance": {
                        "service": "x" * 100,
                        "endpoint": "127.0.0.1:1",
                        "protocol": "PROTOCOL_HTTP",
                    }
                },
                "instance.service",
            ),
            (
                {
                    "instance": {
                        "service": "x",
                        "endpoint": "127.0.0.1:1",
                        "protocol": "PROTOCOL_HTTP",
                        "metadata": {str(i): "v" for i in range(100)},
                    }
                },
                "instance.metadata",
            ),
        ]
        for body_json, field in bad_registrations:
            async with session.post(f"{base}/v1/registry/register", json=body_json) as resp:
                data = await resp.json()
                assert resp.status == 400, data
                fields = [v["field"] for v in data["error"]["violations"]]
                assert field in fields, (field, data)
        # Nothing was registered by any of them.
        listed = await fleet.instances_seen("eu-west", "x", healthy=None)
        assert listed == {}
        json_type = {"Content-Type": "application/json"}
        async with session.post(
            f"{base}/v1/registry/register", data=b"{not json", headers=json_type
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["field"] == "body"
