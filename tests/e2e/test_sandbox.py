"""The three-region sandbox, end to end: processes, WAN latency, partitions, region kill.

Everything runs for real: 6 nats-servers behind the WAN emulator and 3 agent
processes, driven by the `meridian` CLI and the WAN emulator's Python client.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from meridian.sandbox.processes import port_in_use
from meridian.sandbox.wan_control import WanClient
from tests.conftest import eventually
from tests.e2e.conftest import REGIONS, SandboxHandle


@pytest.fixture(scope="module")
def sandbox(own_sandbox: SandboxHandle) -> SandboxHandle:
    """This module takes its sandbox down at the end: it gets one of its own."""
    return own_sandbox


async def agent_status(sandbox: SandboxHandle, region: str) -> dict[str, Any] | None:
    url = f"{sandbox.config.region(region).http_url}/v1/status"
    try:
        async with (
            sandbox.session(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(url) as resp,
        ):
            return (await resp.json())["status"]
    except (aiohttp.ClientError, TimeoutError):
        return None


async def all_agents(sandbox: SandboxHandle) -> dict[str, dict[str, Any] | None]:
    results = await asyncio.gather(*(agent_status(sandbox, r) for r in REGIONS))
    return dict(zip(REGIONS, results, strict=True))


def healthy(status: dict[str, Any] | None) -> bool:
    return bool(
        status
        and status["nats"]["connected"]
        and status["jetstream"]["available"]
        and status["global"]["quorumReachable"]
        and all(p["reachable"] for p in status["peers"])
    )


def everyone_healthy(statuses: dict[str, dict[str, Any] | None]) -> bool:
    return all(healthy(s) for s in statuses.values())


async def wait_all_green(sandbox: SandboxHandle, what: str) -> float:
    start = time.monotonic()
    await eventually(
        lambda: all_agents(sandbox), everyone_healthy, timeout_s=120, interval_s=0.25, what=what
    )
    return time.monotonic() - start


def test_up_reports_every_region_and_where_agents_listen(sandbox: SandboxHandle) -> None:
    for region in sandbox.config.regions:
        assert region.name in sandbox.up_output
        assert region.grpc_address in sandbox.up_output
        assert region.http_url in sandbox.up_output
    statuses = sandbox.status()
    names = {s["name"] for s in statuses}
    assert names == {
        "wan",
        *(f"nats:{r}" for r in REGIONS),
        *(f"nats:global-{r}" for r in REGIONS),
        *(f"agent:{r}" for r in REGIONS),
        "gateway",
    }
    assert f"https://127.0.0.1:{sandbox.config.gateway.port}" in sandbox.up_output
    assert all(s["running"] and s["healthy"] for s in statuses), statuses
    text = sandbox.cli("sandbox", "status").stdout
    for region in REGIONS:
        assert f"region {region}: healthy" in text


def agent_log(sandbox: SandboxHandle, region: str) -> list[dict[str, Any]]:
    path = sandbox.config.sandbox.workdir / "logs" / f"agent-{region}.log"
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # not a log record (a traceback's lines, say)
    return out


async def test_each_agent_says_ready_only_once_every_component_serves(
    sandbox: SandboxHandle,
) -> None:
    keyspaces = {ks.name for ks in sandbox.config.keyspaces}
    for region in REGIONS:

        async def records(r: str = region) -> list[dict[str, Any]]:
            return await asyncio.to_thread(agent_log, sandbox, r)

        def said_ready(recs: list[dict[str, Any]]) -> bool:
            return any(rec.get("message") == "agent ready" for rec in recs)

        recs = await eventually(records, said_ready, what=f"{region}'s agent says it is ready")
        first = [rec.get("message") for rec in recs].index("agent ready")
        before = recs[:first]
        said = {rec.get("message") for rec in before}
        for component in (
            "event streams ready",
            "registry streams ready",
            "idempotency store ready",
        ):
            assert component in said, (region, component)
        followed = {rec.get("keyspace") for rec in before if rec.get("message") == "keyspace ready"}
        assert keyspaces <= followed, (region, followed)


async def test_global_streams_put_one_replica_in_each_region(sandbox: SandboxHandle) -> None:
    status = await eventually(
        lambda: agent_status(sandbox, "us-east"),
        lambda s: bool(s and s["global"]["quorumReachable"] and s["global"]["replicas"]),
        what="probe stream replicas reported",
    )
    assert status is not None
    servers = {status["global"]["leader"]} | {r["server"] for r in status["global"]["replicas"]}
    assert servers == {f"global-{r}" for r in REGIONS}


async def measure_rtt_ms(sandbox: SandboxHandle, src: str, dst: str, n: int = 31) -> float:
    """The fastest of ``n`` request/reply times from a client in `src` to a
    responder in `dst`: the request crosses the src→dst gateway, the reply the
    dst→src one. The fastest is the emulated latency plus the floor of the
    processing on the way; a busy machine's scheduling delays (the WAN
    emulator terminates TLS in Python) only ever add to some samples, and a
    median of 15 was once pushed 34 ms over by them in CI."""
    src_url = sandbox.config.region(src).agent_nats_urls[0]
    dst_url = sandbox.config.region(dst).agent_nats_urls[0]
    subject = f"e2e.rtt.{src}.{dst}"
    responder = await nats.connect(dst_url, tls=sandbox.ssl)  # as operator/meridian
    requester = await nats.connect(src_url, tls=sandbox.ssl)
    try:

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await responder.subscribe(subject, cb=echo)
        await responder.flush()
        # Interest crosses the gateway asynchronously: wait until requests get through.
        for _ in range(100):
            try:
                await requester.request(subject, b"warm", timeout=1)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.1)
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            await requester.request(subject, b"x" * 64, timeout=5)
            samples.append((time.perf_counter() - start) * 1000)
        print(
            f"{src}->{dst} RTT ms: min {min(samples):.1f}, median {statistics.median(samples):.1f}"
        )
        return min(samples)
    finally:
        await requester.close()
        await responder.close()


def within(measured: float, expected: float) -> bool:
    return abs(measured - expected) <= 0.2 * expected + 2


async def test_round_trip_between_each_pair_matches_the_latency_matrix(
    sandbox: SandboxHandle,
) -> None:
    await wait_all_green(sandbox, "sandbox healthy")
    report = []
    for a, b in (("us-east", "eu-west"), ("us-east", "ap-south"), ("eu-west", "ap-south")):
        expected = sandbox.config.latency(a, b) + sandbox.config.latency(b, a)
        measured = await measure_rtt_ms(sandbox, a, b)
        report.append(f"{a}<->{b}: expected {expected:.0f} ms, measured {measured:.1f} ms")
        assert within(measured, expected), report
    print("\n".join(report))


async def test_one_way_latency_change_shows_in_round_trip(sandbox: SandboxHandle) -> None:
    async with WanClient(sandbox.config.wan.control_url) as wan:
        await wan.set_latency("us-east", "eu-west", 80, one_way=True)
        try:
            measured = await measure_rtt_ms(sandbox, "us-east", "eu-west")
            assert within(measured, 80 + 35), measured
        finally:
            await wan.set_latency("us-east", "eu-west", 35, one_way=True)
        snap = await wan.snapshot()
        links = {(x["src"], x["dst"]): x["latency_ms"] for x in snap["links"]}
        assert links[("us-east", "eu-west")] == 35
        assert links[("eu-west", "us-east")] == 35


def meta_leader(sandbox: SandboxHandle, region: str) -> str:
    from meridian.backbone.server import probe

    view, _ = probe(f"http://127.0.0.1:{sandbox.config.region(region).global_.monitor}")
    return view.meta_leader if view else ""


async def test_partitioned_region_reports_global_unreachable_and_heals(
    sandbox: SandboxHandle,
) -> None:
    await wait_all_green(sandbox, "sandbox healthy before the partition")
    async with WanClient(sandbox.config.wan.control_url) as wan:
        await wan.partition("ap-south")
        try:

            def split_seen(s: dict[str, dict[str, Any] | None]) -> bool:
                ap, us, eu = s["ap-south"], s["us-east"], s["eu-west"]
                return bool(
                    ap
                    and not ap["global"]["quorumReachable"]
                    and not any(p["reachable"] for p in ap["peers"])
                    and us
                    and eu
                    and us["global"]["quorumReachable"]
                    and eu["global"]["quorumReachable"]
                )

            statuses = await eventually(
                lambda: all_agents(sandbox), split_seen, timeout_s=90, what="partition observed"
            )
            ap = statuses["ap-south"]
            assert ap is not None
            assert "no quorum of global replicas is reachable" in ap["global"]["reason"]
            for peer in ap["peers"]:
                assert "did not answer" in peer["reason"]
            # The majority side keeps a meta leader among its own servers.
            leader = await eventually(
                lambda: asyncio.to_thread(meta_leader, sandbox, "us-east"),
                lambda name: name in {"global-us-east", "global-eu-west", "us-east", "eu-west"},
                what="meta leader on the majority side",
            )
            assert leader
        finally:
            await wan.heal()
    took = await wait_all_green(sandbox, "everything green after heal")
    print(f"\nall regions green {took:.1f}s after heal")


async def test_one_way_partition_is_detected_on_both_sides(sandbox: SandboxHandle) -> None:
    await wait_all_green(sandbox, "sandbox healthy before the one-way partition")
    async with WanClient(sandbox.config.wan.control_url) as wan:
        # Only ap-south's outbound traffic is dropped; it still hears the others.
        await wan.partition("ap-south", direction="outbound")
        try:

            def cut(s: dict[str, dict[str, Any] | None]) -> bool:
                ap, us = s["ap-south"], s["us-east"]
                us_sees_ap = us and next(
                    p["reachable"] for p in us["peers"] if p["region"] == "ap-south"
                )
                return bool(ap and not ap["global"]["quorumReachable"] and us and not us_sees_ap)

            await eventually(lambda: all_agents(sandbox), cut, timeout_s=90, what="one-way cut")
        finally:
            await wan.heal()
    took = await wait_all_green(sandbox, "everything green after one-way heal")
    print(f"\nall regions green {took:.1f}s after one-way heal")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}/status").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text()
    )


async def test_sigterm_stops_an_agent_gracefully(sandbox: SandboxHandle) -> None:
    rec = sandbox.state()["agent:eu-west"]
    os.kill(rec["pid"], signal.SIGTERM)
    await eventually(
        lambda: asyncio.to_thread(_pid_alive, rec["pid"]),
        lambda alive: not alive,
        timeout_s=30,
        what="agent exited after SIGTERM",
    )
    log = await asyncio.to_thread(Path(rec["log"]).read_text)
    assert '"message": "agent stopping"' in log
    assert '"message": "agent stopped"' in log
    assert '"region": "eu-west"' in log
    region = sandbox.config.region("eu-west")
    assert not port_in_use(region.http_port)
    assert not port_in_use(region.grpc_port)
    sandbox.cli("sandbox", "up")
    await wait_all_green(sandbox, "green after the agent came back")


async def test_killing_a_region_keeps_global_and_sandbox_up_recovers(
    sandbox: SandboxHandle,
) -> None:
    await wait_all_green(sandbox, "sandbox healthy before the region kill")
    out = sandbox.cli("sandbox", "kill", "eu-west").stdout
    assert "killed 3 process(es) of eu-west" in out

    def survivors_ok(s: dict[str, dict[str, Any] | None]) -> bool:
        us, ap = s["us-east"], s["ap-south"]
        return bool(
            s["eu-west"] is None
            and us
            and ap
            and us["global"]["quorumReachable"]
            and ap["global"]["quorumReachable"]
        )

    await eventually(lambda: all_agents(sandbox), survivors_ok, timeout_s=90, what="2/3 quorum")
    status = {s["name"]: s for s in sandbox.status()}
    assert not status["agent:eu-west"]["running"]
    assert not status["nats:global-eu-west"]["running"]
    start = time.monotonic()
    sandbox.cli("sandbox", "up")
    took = await wait_all_green(sandbox, "green after region restart")
    print(f"\nregion eu-west back and all green {time.monotonic() - start:.1f}s after `sandbox up`")
    assert took >= 0


async def test_restart_command_recovers_a_region(sandbox: SandboxHandle) -> None:
    before = sandbox.state()["nats:ap-south"]["pid"]
    sandbox.cli("sandbox", "restart", "ap-south")
    assert sandbox.state()["nats:ap-south"]["pid"] != before
    await wait_all_green(sandbox, "green after restart")


def test_down_leaves_no_process_and_no_port(sandbox: SandboxHandle) -> None:
    records = sandbox.state()
    pids = [r["pid"] for r in records.values()]
    ports = [p for r in records.values() for p in r["ports"]]
    out = sandbox.cli("sandbox", "down").stdout
    assert "no process or port left behind" in out
    assert [p for p in pids if _pid_alive(p)] == []
    assert [p for p in ports if port_in_use(p)] == []
    statuses = sandbox.status()
    assert not any(s["running"] for s in statuses)
