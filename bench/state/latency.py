"""Round-trip latency figures: sequential calls on one connection.

- Figure 1: ``Get EVENTUAL`` through the agent (gRPC, HTTP/JSON) against a direct
  nats-py KV get of the same bucket from the same region, interleaved in rounds
  so that drift in the machine's load hits every path alike.
- Figure 2: ``Put STRONG`` on the ``global`` keyspace from each region, against
  the floor the WAN matrix allows: RTT(writer, leader) + the smallest RTT from
  the leader to a follower.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import aiohttp
import nats

from bench.state.sandbox import BenchSandbox
from bench.state.stats import CpuMeter, CpuUsage, Summary, Target
from meridian.client import Eventual, MeridianClient

Op = Callable[[], Awaitable[object]]


@dataclass
class PathSamples:
    name: str
    latencies_s: list[float] = field(default_factory=list)
    cpu: CpuUsage = field(default_factory=CpuUsage)


async def eventual_get(
    sb: BenchSandbox,
    key: str,
    *,
    region: str,
    rounds: int,
    per_round: int,
    warmup_s: float,
    round_budget_s: float,
    pids: Mapping[str, Target],
) -> list[PathSamples]:
    """Figure 1. Returns the direct path first (the baseline), then gRPC, then HTTP.

    Each path gets ``rounds`` turns of up to ``per_round`` calls or ``round_budget_s``
    seconds, whichever ends first (direct gets that cross the WAN are slow)."""
    rc = sb.region(region)
    ks = sb.keyspace
    async with AsyncExitStack() as stack:
        nc = await nats.connect(sb.nats_url(region), allow_reconnect=False)
        stack.push_async_callback(nc.close)
        kv = await nc.jetstream().key_value(ks.bucket)
        client = MeridianClient(rc.grpc_address)
        stack.push_async_callback(client.aclose)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        stack.push_async_callback(session.close)
        url = f"{rc.http_url}/v1/state/get"
        body = json.dumps(
            {"keyspace": ks.name, "key": key, "consistency": {"level": "LEVEL_EVENTUAL"}}
        ).encode()

        async def direct() -> object:
            return await kv.get(key)

        async def grpc_get() -> object:
            return await client.get(ks.name, key, consistency=Eventual())

        async def http_get() -> object:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {raw[:200]!r}")
                return json.loads(raw)

        paths: list[tuple[PathSamples, Op]] = [
            (PathSamples("direct nats-py KV get"), direct),
            (PathSamples("agent gRPC (MeridianClient)"), grpc_get),
            (PathSamples("agent HTTP/JSON (aiohttp)"), http_get),
        ]
        # Every path must serve the same thing before it is timed.
        entry = await kv.get(key)
        got = await client.get(ks.name, key, consistency=Eventual())
        if got.served != "eventual" or got.entry.revision != entry.revision:
            raise RuntimeError(
                f"agent served {got.served} rev {got.entry.revision}, direct rev {entry.revision}"
            )
        http_body = await http_get()
        assert isinstance(http_body, dict)
        if http_body.get("served") != "LEVEL_EVENTUAL":
            raise RuntimeError(f"HTTP served {http_body.get('served')}")

        for _, op in paths:
            until = time.monotonic() + warmup_s
            while time.monotonic() < until:
                await op()
        for r in range(rounds):
            # Rotate the order so no path always runs right after another.
            for i in range(len(paths)):
                samples, op = paths[(i + r) % len(paths)]
                meter = CpuMeter(pids)
                meter.start()
                lat = samples.latencies_s
                until = time.perf_counter() + round_budget_s
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    await op()
                    t1 = time.perf_counter()
                    lat.append(t1 - t0)
                    if t1 > until:
                        break
                samples.cpu.add(meter.stop())
        return [p for p, _ in paths]


@dataclass
class PutFromRegion:
    region: str
    leader_region: str
    floor_ms: float
    latencies_s: list[float]


def leader_region(server_name: str) -> str:
    """``global-ap-south`` → ``ap-south``."""
    return server_name.removeprefix("global-")


async def stream_cluster(
    sb: BenchSandbox, region: str, stream: str | None = None
) -> tuple[str, list[str]]:
    """(leader server, follower servers) of ``stream`` (default: the keyspace's), as
    JetStream reports them."""
    name = stream or f"KV_{sb.keyspace.bucket}"
    nc = await nats.connect(sb.nats_url(region), allow_reconnect=False)
    try:
        info = await nc.jetstream().stream_info(name)
    finally:
        await nc.close()
    cluster = info.cluster
    if cluster is None or not cluster.leader:
        raise RuntimeError(f"stream {name} has no leader")
    return cluster.leader, [p.name for p in cluster.replicas or [] if p.name]


def floor_ms(sb: BenchSandbox, writer: str, leader: str, followers: list[str]) -> float:
    """RTT(writer, leader) + the smallest RTT from the leader to a follower."""
    to_quorum = min(sb.rtt_ms(leader, f) for f in followers)
    return sb.rtt_ms(writer, leader) + to_quorum


async def put_strong(
    sb: BenchSandbox, *, samples: int, warmup: int, value: bytes
) -> tuple[list[PutFromRegion], str, str]:
    """Figure 2: sequential Puts from each region in turn. Also returns the stream
    leader before and after, so a leader change during the run is visible."""
    leader_before, followers = await stream_cluster(sb, "us-east")
    lead = leader_region(leader_before)
    follower_regions = [leader_region(f) for f in followers]
    out = []
    for region in sb.config.region_names:
        async with MeridianClient(sb.region(region).grpc_address) as client:
            for i in range(warmup):
                await client.put(sb.keyspace.name, f"put-warm-{region}-{i}", value)
            lat = []
            for i in range(samples):
                t0 = time.perf_counter()
                await client.put(sb.keyspace.name, f"put-{region}-{i}", value)
                lat.append(time.perf_counter() - t0)
        out.append(PutFromRegion(region, lead, floor_ms(sb, region, lead, follower_regions), lat))
    leader_after, _ = await stream_cluster(sb, "us-east")
    return out, leader_before, leader_after


def summary_ms(latencies_s: list[float]) -> Summary:
    return Summary.of(latencies_s).scaled(1000)
