"""Figure 3: cross-region delivery lag, publish in region A → a consumer group's
delivery in region B, through the agents.

For each publishing region A, both other regions B read at once, so one series
of events serves both pairs A→B. Per round:

- B's agent: a fresh consumer group subscribed over gRPC (``Subscribe``) to
  topic ``benchlag.<A>``, acking every delivery as it arrives;
- baseline, the raw NATS path: a nats-py ordered JetStream consumer on B's
  aggregate stream ``EVA_<B>`` (filter ``mev.<A>.benchlag.<A>``) seeing the
  message JetStream sourced from ``EV_<A>``, without B's agent.

A's agent gets ``samples`` Publishes, ``interval_s`` apart. Lag is the time from
just before the Publish call to the first arrival of its event id on each path
(one process, one monotonic clock). Markers are published first until every
path has seen one, so every subscriber is in place before timing starts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import nats
from nats.aio.msg import Msg
from nats.js import api

from bench.state.sandbox import BenchSandbox
from meridian.client import MeridianClient
from meridian.events import model as ev
from meridian.events.streams import EVENT_ID_HEADER

AGENT, RAW = "agent", "raw"
PATHS = (AGENT, RAW)
PAYLOAD = b"l" * 100


@dataclass
class PairLag:
    writer: str
    reader: str
    #: seconds from send to arrival, per path, pooled over the rounds
    lag_s: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    #: the same, one list per round (for the spread between rounds)
    rounds_s: dict[str, list[list[float]]] = field(default_factory=lambda: {p: [] for p in PATHS})
    sent: int = 0
    missing: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PATHS, 0))
    duplicates: int = 0


def topic(writer: str) -> str:
    return f"benchlag.{writer}"


async def _round(
    sb: BenchSandbox,
    writer: str,
    pairs: dict[str, PairLag],
    *,
    samples: int,
    interval_s: float,
    ready_timeout_s: float,
    drain_s: float,
) -> None:
    run = uuid.uuid4().hex[:8]
    readers = list(pairs)
    arrived: dict[tuple[str, str], dict[str, int]] = {(r, p): {} for r in readers for p in PATHS}
    dupes: dict[str, int] = dict.fromkeys(readers, 0)
    sent: dict[str, int] = {}

    def record(reader: str, path: str, event_id: str, now: int) -> None:
        seen = arrived[(reader, path)]
        if event_id in seen:
            if path == AGENT:
                dupes[reader] += 1
            return
        seen[event_id] = now

    async def consume(reader: str, client: MeridianClient) -> None:
        async with client.subscribe(f"lag{run}", topic_filter=topic(writer)) as sub:
            async for delivery in sub:
                record(reader, AGENT, delivery.event.event_id, time.perf_counter_ns())
                await sub.ack(delivery)

    def on_raw(reader: str):  # type: ignore[no-untyped-def]
        async def cb(msg: Msg) -> None:
            now = time.perf_counter_ns()
            record(reader, RAW, (msg.headers or {}).get(EVENT_ID_HEADER, ""), now)

        return cb

    async with AsyncExitStack() as stack:
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        for reader in readers:
            nc = await nats.connect(sb.nats_url(reader), allow_reconnect=False)
            stack.push_async_callback(nc.close)
            sub = await nc.jetstream(timeout=10).subscribe(
                ev.subject(writer, topic(writer)),
                cb=on_raw(reader),
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.NEW,
                stream=ev.aggregate_stream(reader),
            )
            stack.push_async_callback(sub.unsubscribe)
            client = MeridianClient(sb.region(reader).grpc_address)
            stack.push_async_callback(client.aclose)
            consumer = tasks.create_task(consume(reader, client))
            stack.callback(consumer.cancel)
        pub = MeridianClient(sb.region(writer).grpc_address)
        stack.push_async_callback(pub.aclose)

        async def send(event_id: str) -> None:
            sent[event_id] = time.perf_counter_ns()
            await pub.publish(topic(writer), "k", PAYLOAD, event_id=event_id)

        # Markers until every reader's every path has seen one.
        deadline = time.monotonic() + ready_timeout_s
        markers: list[str] = []
        while not all(any(m in arrived[k] for m in markers) for k in arrived):
            if time.monotonic() > deadline:
                lacking = [f"{r}/{p}" for (r, p), seen in arrived.items() if not seen]
                raise TimeoutError(
                    f"markers published in {writer} never reached {', '.join(lacking)} "
                    f"within {ready_timeout_s:.0f}s"
                )
            markers.append(f"{run}-marker-{len(markers)}")
            await send(markers[-1])
            await asyncio.sleep(0.2)
        ids = [f"{run}-{i:05d}" for i in range(samples)]
        t0 = time.monotonic()
        for i, event_id in enumerate(ids):
            await asyncio.sleep(max(0.0, t0 + i * interval_s - time.monotonic()))
            await send(event_id)
        for _ in range(int(drain_s / 0.05)):  # stragglers, briefly
            if all(e in arrived[k] for k in arrived for e in ids):
                break
            await asyncio.sleep(0.05)
    for reader, pair in pairs.items():
        pair.sent += samples
        pair.duplicates += dupes[reader]
        for path in PATHS:
            seen = arrived[(reader, path)]
            lags = [(seen[e] - sent[e]) / 1e9 for e in ids if e in seen]
            pair.lag_s[path] += lags
            pair.rounds_s[path].append(lags)
            pair.missing[path] += samples - len(lags)


async def delivery_lag(
    sb: BenchSandbox,
    *,
    rounds: int,
    samples: int,
    interval_s: float,
    ready_timeout_s: float = 60.0,
    drain_s: float = 5.0,
) -> list[PairLag]:
    """Every ordered pair A→B: ``rounds`` rounds of ``samples`` events per writer."""
    regions = sb.config.region_names
    pairs = {w: {r: PairLag(w, r) for r in regions if r != w} for w in regions}
    # Rounds outermost, so drift in the machine's load spreads over every pair.
    for _ in range(rounds):
        for writer in regions:
            await _round(
                sb,
                writer,
                pairs[writer],
                samples=samples,
                interval_s=interval_s,
                ready_timeout_s=ready_timeout_s,
                drain_s=drain_s,
            )
    return [p for w in regions for p in pairs[w].values()]
