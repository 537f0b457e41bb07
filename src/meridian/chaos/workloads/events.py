"""Events (DESIGN §4): producers in every region, a consumer group in every region.

- **Producers**: ``producers_per_region`` in each region, each with its own
  event key (``<region>-p<i>``). A producer publishes events ``seq`` 1, 2, 3,
  ... to one topic, one at a time, with event id ``<run>-<region>-p<i>-<seq>``.
  An event whose publish fails or times out is published again with the same id
  (a duplicate to absorb if the first attempt landed) until it is acknowledged;
  only then comes the next. Now and then an acknowledged event is published once
  more (a producer that missed the ack). Producers stay in their region.
- **Consumers**: one consumer group per region (the same group name, a
  durable group in each region), created during setup, so that a region cut off
  later can still serve it. Each region's group has one subscriber with
  ``max_in_flight`` 1, which records every delivery and acks it; after a broken
  stream it subscribes again.
- **Drain**: after the last heal, the subscribers keep going until every group
  has acked every acknowledged event, or ``within_s`` passes; then they close
  their streams (acks flushed).

The history format and what each checker proves are in
:mod:`meridian.chaos.checkers.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from functools import partial
from typing import Any

from meridian.chaos.checkers import Checker
from meridian.chaos.checkers.events import (
    EventsDeliveredChecker,
    EventsExpectedChecker,
    EventsOnceChecker,
    EventsOrderedChecker,
)
from meridian.chaos.workloads.base import KeyspaceSpec, RunContext, pace, record
from meridian.client import MeridianClient
from meridian.subscription import Subscription


class EventsWorkload:
    name = "events"
    keyspaces: tuple[KeyspaceSpec, ...] = ()

    def __init__(
        self,
        producers_per_region: int = 2,
        pace_s: float = 0.1,
        republish: float = 0.05,
        within_s: float = 60.0,
    ) -> None:
        self.producers_per_region = producers_per_region
        self.pace_s = pace_s
        self.republish = republish
        self.within_s = within_s
        self._sessions = itertools.count(1)
        self._closing = False
        self._subs: dict[str, Subscription] = {}
        self._consumers: list[asyncio.Task[None]] = []
        #: region -> event ids whose ack was sent by that region's subscriber
        self._acked: dict[str, set[str]] = {}

    def prefix(self, ctx: RunContext) -> str:
        return f"{ctx.run_id}-"

    def _topic(self, ctx: RunContext, leaf: str) -> str:
        return f"chaos.e{ctx.run_id}.{leaf}"

    def _group(self, ctx: RunContext) -> str:
        return f"g{ctx.run_id}"

    async def setup(self, ctx: RunContext) -> None:
        """Create each region's group, and see a warm-up event from every region in it."""
        stamp = time.monotonic_ns()
        for client in ctx.clients.values():
            # From the start of the (fresh) stream: the agent creates the group
            # after this returns, and the warm-up events may be published before.
            async with client.subscribe(
                self._group(ctx),
                topic_filter=self._topic(ctx, "*"),
                max_in_flight=1,
                start_sequence=1,
            ) as sub:
                for origin, c in ctx.clients.items():
                    await c.publish(
                        self._topic(ctx, "warm"), origin, b"", event_id=f"warm-{origin}-{stamp}"
                    )
                want = {f"warm-{origin}-{stamp}" for origin in ctx.clients}
                async with asyncio.timeout(60):
                    async for d in sub:
                        await sub.ack(d)
                        want.discard(d.event.event_id)
                        if not want:
                            break

    async def run(self, ctx: RunContext, stop: asyncio.Event) -> None:
        self._closing = False
        for region in ctx.regions:
            self._acked[region] = set()
            self._consumers.append(asyncio.create_task(self._consume(ctx, region)))
        async with asyncio.TaskGroup() as tg:
            for region in ctx.regions:
                for i in range(self.producers_per_region):
                    tg.create_task(self._produce(ctx, region, f"{region}-p{i}", stop))

    async def _produce(
        self, ctx: RunContext, region: str, producer: str, stop: asyncio.Event
    ) -> None:
        client = ctx.clients[region]
        process = ctx.new_process()
        topic = self._topic(ctx, "ev")
        seq = 0
        while not stop.is_set():
            seq += 1
            event_id = f"{self.prefix(ctx)}{producer}-{seq}"
            value = {"producer": producer, "seq": seq, "key": producer}
            publish = partial(self._publish, client, topic, producer, event_id)
            while True:
                kind, _ = await record(
                    ctx, process, region, "publish", event_id, value, publish, has_effect=True
                )
                if kind == "info":
                    process = ctx.new_process()
                if kind == "ok" or stop.is_set():
                    break
                await asyncio.sleep(0.2)
            if kind == "ok" and ctx.rng.random() < self.republish:
                kind, _ = await record(
                    ctx, process, region, "publish", event_id, value, publish, has_effect=True
                )
                if kind == "info":
                    process = ctx.new_process()
            await pace(ctx, self.pace_s)

    @staticmethod
    async def _publish(
        client: MeridianClient, topic: str, key: str, event_id: str
    ) -> dict[str, Any]:
        sequence, duplicate = await client.publish(topic, key, b"x", event_id=event_id)
        return {"sequence": sequence, "duplicate": duplicate}

    async def _consume(self, ctx: RunContext, region: str) -> None:
        client = ctx.clients[region]
        group = self._group(ctx)
        warm = self._topic(ctx, "warm")
        while not self._closing:
            session = next(self._sessions)
            sp = ctx.new_process()
            sv = {"session": session}
            ctx.history.add("invoke", sp, region, "session", group, sv)
            process = ctx.new_process()
            try:
                async with client.subscribe(
                    group, topic_filter=self._topic(ctx, "*"), max_in_flight=1
                ) as sub:
                    self._subs[region] = sub
                    async for d in sub:
                        if d.event.topic == warm:
                            await sub.ack(d)
                            continue
                        value = {
                            "group": region,
                            "attempt": d.attempt,
                            "origin": d.event.origin_region,
                            "key": d.event.key,
                            "session": session,
                        }
                        ev = d.event.event_id
                        ctx.history.add("invoke", process, region, "deliver", ev, value)
                        try:
                            await sub.ack(d)
                        except Exception as exc:
                            ctx.history.add(
                                "fail", process, region, "deliver", ev, value, error=str(exc)
                            )
                            raise
                        ctx.history.add("ok", process, region, "deliver", ev, value)
                        self._acked[region].add(ev)
            except asyncio.CancelledError:
                ctx.history.add("info", sp, region, "session", group, sv, error="cancelled")
                raise
            except Exception as exc:  # a broken stream: subscribe again
                if self._closing:
                    ctx.history.add("ok", sp, region, "session", group, sv)
                    return
                error = f"{type(exc).__name__}: {exc}"
                ctx.history.add("info", sp, region, "session", group, sv, error=error)
                await asyncio.sleep(0.5)
                continue
            finally:
                self._subs.pop(region, None)
            if self._closing:
                ctx.history.add("ok", sp, region, "session", group, sv)
                return
            ctx.history.add("info", sp, region, "session", group, sv, error="stream ended")

    async def finish(self, ctx: RunContext) -> None:
        process = ctx.new_process()
        ctx.history.add("invoke", process, "", "drain", None, None)
        acked = {
            op.key
            for op in ctx.history.ops()
            if op.f == "publish" and op.type == "ok" and op.key is not None
        }
        deadline = time.monotonic() + self.within_s
        while time.monotonic() < deadline:
            if all(acked <= got for got in self._acked.values()):
                break
            await asyncio.sleep(0.25)
        missing = {r: len(acked - got) for r, got in self._acked.items()}
        await asyncio.sleep(2.0)  # a late duplicate or redelivery still gets seen
        self._closing = True
        for sub in list(self._subs.values()):
            await sub.close()
        for task in self._consumers:
            try:
                async with asyncio.timeout(10):
                    await task
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        ctx.history.add(
            "ok", process, "", "drain", None,
            {"complete": not any(missing.values()), "missing": missing},
        )  # fmt: skip

    def checkers(self, ctx: RunContext) -> list[Checker]:
        prefix = self.prefix(ctx)
        return [
            EventsDeliveredChecker(ctx.regions, self.within_s, prefix),
            EventsExpectedChecker(prefix),
            EventsOrderedChecker(prefix),
            EventsOnceChecker(prefix),
        ]
