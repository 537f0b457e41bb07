"""Figure 1: ``Begin`` + ``Complete`` latency on ``global`` idempotency storage.

From each region in turn, sequential calls on one connection: Begin a fresh key
(one compare-and-set create on ``mg__idempotency``: a quorum write), then
Complete it with the fencing token (one compare-and-set update). Each is timed
on its own. The floor each call can reach is one quorum round trip as the WAN
matrix allows it, computed as ``bench.state`` does for ``Put STRONG``:
RTT(caller's region, leader of ``KV_mg__idempotency``) + the smallest RTT from
that leader to a follower.

Baseline in the same run: the same two writes made straight with nats-py from
the same region (a KV ``create`` and an ``update`` at the created revision), in
interleaved rounds so that drift in the machine's load hits both paths alike.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import nats

from bench.state import latency
from bench.state.sandbox import BenchSandbox
from meridian.client import MeridianClient
from meridian.idempotency.model import StoredResponse

#: The idempotency bucket of ``global`` storage and its stream.
BUCKET = "mg__idempotency"
STREAM = f"KV_{BUCKET}"
SCOPE = "bench"
RESPONSE = StoredResponse(200, b'{"ok":true}', ())


@dataclass
class RegionCalls:
    region: str
    floor_ms: float = 0.0
    begin_s: list[float] = field(default_factory=list)
    complete_s: list[float] = field(default_factory=list)
    direct_create_s: list[float] = field(default_factory=list)
    direct_update_s: list[float] = field(default_factory=list)


async def _from_region(
    sb: BenchSandbox, calls: RegionCalls, run: str, *, rounds: int, per_round: int, warmup: int
) -> None:
    region = calls.region
    nc = await nats.connect(sb.nats_url(region), allow_reconnect=False)
    client = MeridianClient(sb.region(region).grpc_address)
    try:
        kv = await nc.jetstream(timeout=10).key_value(BUCKET)
        n = 0

        async def agent_pair(record: bool) -> None:
            nonlocal n
            n += 1
            key = f"{run}-{region}-a{n}"
            t0 = time.perf_counter()
            begun = await client.begin(SCOPE, key, b'{"n":%d}' % n)
            t1 = time.perf_counter()
            if begun.outcome != "new":
                raise RuntimeError(f"Begin of a fresh key answered {begun.outcome}")
            await client.complete(SCOPE, key, begun.fencing_token, RESPONSE)
            t2 = time.perf_counter()
            if record:
                calls.begin_s.append(t1 - t0)
                calls.complete_s.append(t2 - t1)

        async def direct_pair(record: bool) -> None:
            nonlocal n
            n += 1
            # A storage key no agent call makes (those are derived from scope and key).
            key = f"bench-direct.{run}-{region}-d{n}"
            t0 = time.perf_counter()
            rev = await kv.create(key, b"x" * 120)
            t1 = time.perf_counter()
            await kv.update(key, b"y" * 160, last=rev)
            t2 = time.perf_counter()
            if record:
                calls.direct_create_s.append(t1 - t0)
                calls.direct_update_s.append(t2 - t1)

        for _ in range(warmup):
            await agent_pair(False)
            await direct_pair(False)
        for r in range(rounds):
            order = (agent_pair, direct_pair) if r % 2 == 0 else (direct_pair, agent_pair)
            for op in order:
                for _ in range(per_round):
                    await op(True)
    finally:
        await client.aclose()
        await nc.close()


async def begin_complete(
    sb: BenchSandbox, *, rounds: int, per_round: int, warmup: int
) -> tuple[list[RegionCalls], str, list[str], str]:
    """Every region, ``rounds`` x ``per_round`` Begin + Complete pairs through its agent
    and as many direct create + update pairs. Returns the results, the stream's
    leader and followers before, and its leader after (a change voids the floor)."""
    first = sb.config.region_names[0]
    leader, followers = await latency.stream_cluster(sb, first, STREAM)
    lead = latency.leader_region(leader)
    follower_regions = [latency.leader_region(f) for f in followers]
    run = uuid.uuid4().hex[:8]
    out = []
    for region in sb.config.region_names:
        calls = RegionCalls(region, latency.floor_ms(sb, region, lead, follower_regions))
        await _from_region(sb, calls, run, rounds=rounds, per_round=per_round, warmup=warmup)
        out.append(calls)
    leader_after, _ = await latency.stream_cluster(sb, first, STREAM)
    return out, leader, followers, leader_after
