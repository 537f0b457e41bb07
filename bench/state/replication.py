"""Figure 5: replication lag of a ``replicated`` keyspace, per ordered region pair.

For each writer region W, the other regions R read at once, so one series of
writes serves both pairs W→R:

- an agent ``Watch`` on each R's agent (what a client sees: the watch follows
  R's aggregate stream ``MRA_<ks>_R``);
- raw nats-py ordered consumers on each R's regional server: one on
  ``MRA_<ks>_R`` (JetStream sourcing, without the agent) and one on W's own
  stream ``MR_<ks>_W`` across the gateway (the path of the agent's direct peer
  feed, which its view also merges);
- a core NATS subscriber on each R's regional server, fed by publishes to W's
  regional server: the raw one-way path through the WAN emulator, the baseline.

W's agent gets ``samples`` Puts of distinct keys, ``interval_s`` apart; each value
holds ``time.time_ns()`` at send. Every arrival is stamped with the same clock
(one machine), and so is each JetStream message's store time (the timestamp
in its ack subject), which splits the lag into the agent's write path (send →
stored in W's stream), JetStream sourcing (stored in W → stored in R's
aggregate) and delivery to the watcher (stored in R → Watch event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import nats
from nats.aio.msg import Msg
from nats.js import api

from bench.state.sandbox import BenchSandbox
from bench.state.stats import CpuMeter, CpuUsage, Target
from meridian.client import MeridianClient
from meridian.state.replicated_store import aggregate_stream, own_stream

#: The paths a write is timed on at each reader, by short name.
WATCH, AGGREGATE, PEER, CORE = "watch", "aggregate", "peer", "core"
PATHS = (WATCH, AGGREGATE, PEER, CORE)


@dataclass
class PairLag:
    """One ordered pair: seconds from send to arrival on each path, and the split."""

    writer: str
    reader: str
    samples: int
    arrivals_s: dict[str, list[float]] = field(default_factory=dict)
    #: stored in W's stream → stored in R's aggregate (JetStream sourcing)
    sourcing_s: list[float] = field(default_factory=list)
    #: stored in R's aggregate → Watch event at the client (agent watch + gRPC)
    delivery_s: list[float] = field(default_factory=list)
    #: stored in R's aggregate → raw consumer (the same hop without the agent)
    raw_delivery_s: list[float] = field(default_factory=list)
    cpu: CpuUsage = field(default_factory=CpuUsage)

    def missing(self, path: str) -> int:
        return self.samples - len(self.arrivals_s.get(path, []))


@dataclass
class WriterRun:
    writer: str
    #: send → Put acknowledged by W's agent
    ack_s: list[float] = field(default_factory=list)
    #: send → stored in W's own stream (the agent's write path up to the store)
    stored_s: list[float] = field(default_factory=list)
    pairs: list[PairLag] = field(default_factory=list)


def stored_ns(msg: Msg) -> int | None:
    """When the stream stored ``msg``, in ns since the epoch (from its ack subject)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>
        return int(tokens[7])
    if len(tokens) >= 11:  # v2: $JS.ACK.<domain>.<account hash>.<stream>...
        return int(tokens[9])
    return None


class _Arrivals:
    """First arrival (ns) of each key on each (reader, path), and store times."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], dict[str, int]] = {}
        #: key → when W's own stream stored it
        self.stored_w: dict[str, int] = {}
        #: (reader, key) → when R's aggregate stored it
        self.stored_r: dict[tuple[str, str], int] = {}

    def record(self, reader: str, path: str, key: str, now_ns: int) -> None:
        self.at.setdefault((reader, path), {}).setdefault(key, now_ns)

    def seen(self, reader: str, path: str, key: str) -> bool:
        return key in self.at.get((reader, path), {})


async def _until_seen(
    arrivals: _Arrivals,
    readers: list[str],
    send_marker: Callable[[int], Awaitable[str]],
    timeout_s: float,
) -> None:
    """Send markers until every reader's every path has seen one (so all are subscribed)."""
    deadline = time.monotonic() + timeout_s
    markers: list[str] = []
    j = 0
    while True:
        markers.append(await send_marker(j))
        j += 1
        for _ in range(4):
            await asyncio.sleep(0.05)
            if all(any(arrivals.seen(r, p, m) for m in markers) for r in readers for p in PATHS):
                return
        if time.monotonic() > deadline:
            lacking = [
                f"{r}/{p}"
                for r in readers
                for p in PATHS
                if not any(arrivals.seen(r, p, m) for m in markers)
            ]
            raise TimeoutError(
                f"markers written {len(markers)} times never reached {', '.join(lacking)} "
                f"within {timeout_s:.0f}s"
            )


async def writer_run(
    sb: BenchSandbox,
    writer: str,
    *,
    samples: int,
    interval_s: float,
    pids: Callable[[str], Mapping[str, Target]],
    ready_timeout_s: float = 30.0,
    drain_s: float = 3.0,
) -> WriterRun:
    ks = sb.replicated.name
    readers = [r for r in sb.config.region_names if r != writer]
    prefix = f"lag-{writer}/"
    core_subject = f"bench.lag.{writer}"
    writes = f"mr.{ks}.{writer}.>"
    arrivals = _Arrivals()
    out = WriterRun(writer)

    def on_js(reader: str, path: str) -> Callable[[Msg], Awaitable[None]]:
        async def cb(msg: Msg) -> None:
            now = time.time_ns()
            key = msg.subject.split(".", 3)[3]
            ts = stored_ns(msg)
            if ts is not None:
                if path == PEER:
                    arrivals.stored_w.setdefault(key, ts)
                else:
                    arrivals.stored_r.setdefault((reader, key), ts)
            arrivals.record(reader, path, key, now)

        return cb

    def on_core(reader: str) -> Callable[[Msg], Awaitable[None]]:
        async def cb(msg: Msg) -> None:
            now = time.time_ns()
            arrivals.record(reader, CORE, msg.data.decode(), now)

        return cb

    async def watch(reader: str, client: MeridianClient) -> None:
        """Follow R's agent; ends when cancelled."""
        async for event in client.watch(ks, prefix):
            arrivals.record(reader, WATCH, event.entry.key, time.time_ns())

    sent: dict[str, int] = {}
    sent_core: dict[str, int] = {}

    async with AsyncExitStack() as stack:
        # A watch that fails fails the figure (the task group cancels the run).
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        for reader in readers:
            nc = await nats.connect(sb.nats_url(reader), allow_reconnect=False)
            stack.push_async_callback(nc.close)
            js = nc.jetstream(timeout=10)
            for path, stream in (
                (AGGREGATE, aggregate_stream(ks, reader)),
                (PEER, own_stream(ks, writer)),
            ):
                sub = await js.subscribe(
                    writes,
                    cb=on_js(reader, path),
                    ordered_consumer=True,
                    deliver_policy=api.DeliverPolicy.NEW,
                    stream=stream,
                )
                stack.push_async_callback(sub.unsubscribe)
            await nc.subscribe(core_subject, cb=on_core(reader))
            await nc.flush()
            client = MeridianClient(sb.region(reader).grpc_address)
            stack.push_async_callback(client.aclose)
            watcher = tasks.create_task(watch(reader, client))
            stack.callback(watcher.cancel)

        pub = await nats.connect(sb.nats_url(writer), allow_reconnect=False)
        stack.push_async_callback(pub.close)
        client = MeridianClient(sb.region(writer).grpc_address)
        stack.push_async_callback(client.aclose)

        async def send(key: str) -> None:
            t = time.time_ns()
            sent_core[key] = t
            await pub.publish(core_subject, key.encode())
            t = time.time_ns()
            sent[key] = t
            await client.put(ks, key, str(t).encode())
            out.ack_s.append((time.time_ns() - t) / 1e9)

        async def marker(j: int) -> str:
            key = f"{prefix}marker-{j}"
            await send(key)
            return key

        await _until_seen(arrivals, readers, marker, ready_timeout_s)
        out.ack_s.clear()
        meters = {r: CpuMeter(pids(r)) for r in readers}
        for m in meters.values():
            m.start()
        keys = [f"{prefix}k{i:04d}" for i in range(samples)]
        t0 = time.monotonic()
        for i, key in enumerate(keys):
            await asyncio.sleep(max(0.0, t0 + i * interval_s - time.monotonic()))
            await send(key)
        for _ in range(int(drain_s / 0.05)):  # wait for stragglers, briefly
            if all(arrivals.seen(r, p, k) for r in readers for p in PATHS for k in keys):
                break
            await asyncio.sleep(0.05)
        usage = {r: m.stop() for r, m in meters.items()}

    for key in keys:
        if key in arrivals.stored_w:
            out.stored_s.append((arrivals.stored_w[key] - sent[key]) / 1e9)
    for reader in readers:
        pair = PairLag(writer, reader, samples, cpu=usage[reader])
        for path in PATHS:
            seen = arrivals.at.get((reader, path), {})
            origin = sent_core if path == CORE else sent
            pair.arrivals_s[path] = [(seen[k] - origin[k]) / 1e9 for k in keys if k in seen]
        watch_at = arrivals.at.get((reader, WATCH), {})
        agg_at = arrivals.at.get((reader, AGGREGATE), {})
        for key in keys:
            in_r = arrivals.stored_r.get((reader, key))
            if in_r is None:
                continue
            if key in arrivals.stored_w:
                pair.sourcing_s.append((in_r - arrivals.stored_w[key]) / 1e9)
            if key in watch_at:
                pair.delivery_s.append((watch_at[key] - in_r) / 1e9)
            if key in agg_at:
                pair.raw_delivery_s.append((agg_at[key] - in_r) / 1e9)
        out.pairs.append(pair)
    return out


async def replication_lag(
    sb: BenchSandbox,
    *,
    samples: int,
    interval_s: float,
    pids: Callable[[str], Mapping[str, Target]],
) -> list[WriterRun]:
    """Figure 5: every writer region in turn, both other regions reading."""
    return [
        await writer_run(sb, w, samples=samples, interval_s=interval_s, pids=pids)
        for w in sb.config.region_names
    ]
