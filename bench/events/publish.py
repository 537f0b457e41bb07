"""Figure 2: publish throughput of one agent, async-acked.

Closed loop: ``concurrency`` callers each issue their next publish as soon as
the previous one is acknowledged (the agent acks a Publish once JetStream has
stored the event), every event id distinct, each caller on an event key of its
own, 100-byte payloads, all on one topic.

- Through the agent: unary ``EventService/Publish`` over gRPC from the native
  load generator (``bench/state/loadgen``, ``-mode=grpc-publish``), or from the
  Python client with ``--load-client python``; and ``EventService/PublishStream``
  (``-mode=grpc-publish-stream``: one stream per connection, the same number of
  publishes in flight in all, responses read as they come).
- ``EventService/PublishBatch`` (``-mode=grpc-publish-batch``): calls of
  ``batch`` events each, as many calls at once as make the same number of
  events in flight.
- Baseline, same run, same concurrency: nats-py JetStream publishes straight to
  the region's stream ``EV_<region>`` on subject ``mev.<region>.<topic>``, with
  the headers the agent sets (``Nats-Msg-Id`` and Meridian's own).

The two paths alternate for ``rounds`` rounds; each round counts completions in
1 s slices after a warm-up.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import nats
from nats.js import JetStreamContext

from bench.state import load, native
from bench.state.sandbox import BenchSandbox
from bench.state.stats import Target
from meridian.client import MeridianClient
from meridian.events import model as ev
from meridian.events.streams import EVENT_ID_HEADER, MSG_ID, PUBLISHED_HEADER, TOPIC_KEY_HEADER

TOPIC = "bench.load"
PAYLOAD = b"p" * 100

Op = Callable[[int], Awaitable[object]]


async def direct(
    sb: BenchSandbox,
    region: str,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    pids: Mapping[str, Target],
) -> load.LoadResult:
    """nats-py JetStream publishes to ``EV_<region>``, as the agent makes them."""
    nc = await nats.connect(sb.nats_url(region), allow_reconnect=False)
    js: JetStreamContext = nc.jetstream(timeout=10)
    subject = ev.subject(region, TOPIC)
    run = uuid.uuid4().hex[:8]
    try:

        def make(c: int) -> Op:
            key = f"d{run}-{c}"

            async def op(i: int) -> object:
                event_id = f"{key}-{i}"
                headers = {
                    MSG_ID: event_id,
                    EVENT_ID_HEADER: event_id,
                    TOPIC_KEY_HEADER: key,
                    PUBLISHED_HEADER: str(time.time_ns() // 1_000_000),
                }
                ack = await js.publish(subject, PAYLOAD, timeout=10, headers=headers)
                if ack.duplicate:
                    raise RuntimeError(f"event {event_id} stored as a duplicate")
                return ack

            return op

        return await load.closed_loop(
            f"publishes/s in {region}, direct nats-py JetStream publish",
            make,
            concurrency=concurrency,
            warmup_s=warmup_s,
            duration_s=duration_s,
            pids=pids,
        )
    finally:
        await nc.close()


async def through_agent(
    sb: BenchSandbox,
    region: str,
    *,
    loadgen: Path | None,
    concurrency: int,
    connections: int,
    loadgen_procs: int,
    warmup_s: float,
    duration_s: float,
    pids: Mapping[str, Target],
    stream: bool = False,
    batch: int = 0,
) -> load.LoadResult:
    """gRPC Publish through ``region``'s agent: unary calls, or with ``stream``
    ``PublishStream`` (native load generator only), one stream per connection
    sharing the ``concurrency`` publishes in flight, or with ``batch``
    ``PublishBatch`` calls of ``batch`` events each, ``concurrency`` // ``batch``
    calls at once (native load generator only)."""
    run = uuid.uuid4().hex[:8]
    if (batch or stream) and loadgen is None:
        what = "PublishBatch" if batch else "PublishStream"
        raise native.NativeUnavailable(f"{what} is driven by the native load generator")
    if loadgen is not None:
        if batch:
            callers = max(1, concurrency // batch)
            path, mode, prefix = f"PublishBatch of {batch}, {callers} calls at once", "batch", "b"
        elif stream:
            callers, path, mode, prefix = (
                concurrency,
                f"PublishStream x{connections}",
                "stream",
                "s",
            )
        else:
            callers, path, mode, prefix = concurrency, "Publish", "", "a"
        res = await native.closed_loop(
            loadgen,
            f"publishes/s in {region}, agent gRPC {path} (native client)",
            mode="grpc-publish" + (f"-{mode}" if mode else ""),
            target=sb.region(region).grpc_address,
            keyspace="",
            key=f"{prefix}{run}",
            topic=TOPIC,
            value=PAYLOAD,
            concurrency=callers,
            connections=connections,
            warmup_s=warmup_s,
            duration_s=duration_s,
            pids=pids,
            procs=loadgen_procs,
            batch=batch,
        )
        res.concurrency = callers * max(batch, 1)  # events in flight, whatever the path
        return res
    async with MeridianClient(sb.region(region).grpc_address) as client:

        def make(c: int) -> Op:
            key = f"a{run}-{c}"

            async def op(i: int) -> object:
                _, duplicate = await client.publish(TOPIC, key, PAYLOAD, event_id=f"{key}-{i}")
                if duplicate:
                    raise RuntimeError(f"event {key}-{i} stored as a duplicate")
                return None

            return op

        return await load.closed_loop(
            f"publishes/s in {region}, agent gRPC Publish (Python client)",
            make,
            concurrency=concurrency,
            warmup_s=warmup_s,
            duration_s=duration_s,
            pids=pids,
        )
