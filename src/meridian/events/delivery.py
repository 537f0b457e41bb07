"""Delivering a consumer group's events: what every transport shares.

A :class:`GroupReader` fetches a group's messages, turns them into
deliveries (or dead-letters them, or absorbs duplicates) and applies acks and
nacks. :func:`stream_deliveries` serves one over a gRPC bidirectional stream;
:mod:`meridian.events.push` posts them to a registered HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from meridian._pb.meridian.v1 import events_pb2 as pb
from meridian.backbone.connection import translate_nats_errors
from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.events import model as ev
from meridian.observability.tracing import extract_context

if TYPE_CHECKING:
    from meridian.events.groups import ConsumerGroups, EventSource

FETCH_WAIT_S = 1.0


@dataclass
class _InFlight:
    msg: Msg
    event_id: str
    attempt: int


class GroupReader:
    """One subscriber's view of a consumer group: deliveries out, acks in.

    For every message: attempt > ``max_deliveries`` → the dead-letter stream;
    the group's inbox (or this agent's in-flight set) already has its event id
    → acked without delivery; otherwise delivered. An ack records the event id
    in the inbox, then acks the JetStream message, so a crash between the two
    redelivers an event the inbox then absorbs.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        groups: ConsumerGroups,
        group: str,
        source: EventSource,
        psub: Any,
        max_in_flight: int,
        max_deliveries: int,
    ) -> None:
        self.groups = groups
        self.group = group
        self.source = source
        self.psub = psub
        self.max_in_flight = max_in_flight
        self.max_deliveries = max_deliveries
        self.in_flight: dict[int, _InFlight] = {}
        self.ids = groups.in_flight_ids[source.spec.name]
        self.room = asyncio.Event()
        self.room.set()

    def _count(self, result: str) -> None:
        self.groups.metrics.events_delivered.labels(self.groups.region, self.group, result).inc()

    @property
    def free(self) -> int:
        return self.max_in_flight - len(self.in_flight)

    async def wait_for_room(self) -> None:
        while self.free <= 0:
            self.room.clear()
            await self.room.wait()

    async def fetch(self) -> list[pb.Delivery]:
        """Up to ``free`` new deliveries; empty after FETCH_WAIT_S without any."""
        if self.free <= 0:
            return []
        with translate_nats_errors(f"fetch events of group {self.group!r}"):
            try:
                msgs = await self.psub.fetch(self.free, timeout=FETCH_WAIT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                return []
            out = []
            for msg in msgs:
                delivery = await self._prepare(msg)
                if delivery is not None:
                    out.append(delivery)
            return out

    async def _prepare(self, msg: Msg) -> pb.Delivery | None:
        attempt = int(msg.metadata.num_delivered or 1)
        event = self.groups.event_of(msg, self.source)
        if event is None:
            await msg.ack()
            return None
        if ev.dead_letter(attempt, self.max_deliveries):
            await self._dead_letter(msg, f"not acked after {attempt - 1} deliveries")
            return None
        if self.ids[event.event_id] or await self.groups.streams.processed(
            self.group, event.event_id
        ):
            await msg.ack()
            self._count("duplicate")
            return None
        delivery_id = next(self._ids)
        self.in_flight[delivery_id] = _InFlight(msg, event.event_id, attempt)
        self.ids[event.event_id] += 1
        self._count("delivered")
        if event.HasField("published_at"):
            lag = max(0.0, time.time() - event.published_at.ToMilliseconds() / 1000)
            origin = event.origin_region
            if event.topic.startswith(ev.INVALIDATE_TOPIC + "."):
                self.groups.metrics.invalidation_lag.labels(self.groups.region, origin).observe(lag)
            else:
                self.groups.metrics.event_lag.labels(self.groups.region, origin).observe(lag)
        self._trace_delivery(event)
        return pb.Delivery(
            delivery_id=delivery_id,
            event=event,
            attempt=attempt,
            sequence=msg.metadata.sequence.stream,
        )

    def _trace_delivery(self, event: pb.Event) -> None:
        producer = trace.get_current_span(extract_context(dict(event.headers))).get_span_context()
        links = [Link(producer)] if producer.is_valid else []
        with self.groups.tracer.start_as_current_span(
            "meridian.v1.EventService/Deliver",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={"messaging.destination.name": event.topic, "meridian.group": self.group},
        ):
            pass

    def _settled(self, held: _InFlight) -> None:
        self.ids[held.event_id] -= 1
        if self.ids[held.event_id] <= 0:
            del self.ids[held.event_id]
        self.room.set()

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        await self.groups.streams.dead_letter(msg, self.group, reason)
        await msg.term()
        self._count("dead_lettered")

    async def ack(self, delivery_id: int) -> None:
        held = self.in_flight.pop(delivery_id, None)
        if held is None:
            return  # already settled, or not this subscriber's
        with translate_nats_errors(f"ack an event of group {self.group!r}"):
            try:
                await self.groups.streams.mark_processed(self.group, held.event_id)
            finally:
                self._settled(held)
            await held.msg.ack()
        self._count("acked")

    async def nack(self, delivery_id: int, delay_s: float | None) -> None:
        held = self.in_flight.pop(delivery_id, None)
        if held is None:
            return
        self._settled(held)
        with translate_nats_errors(f"nack an event of group {self.group!r}"):
            if held.attempt >= self.max_deliveries:
                await self._dead_letter(held.msg, f"nacked on all {held.attempt} deliveries")
                return
            await held.msg.nak(delay=ev.backoff_s(held.attempt) if delay_s is None else delay_s)
        self._count("nacked")

    async def close(self) -> None:
        """Hand back what this reader held, so the group's others get it at once."""
        for held in self.in_flight.values():
            self._settled(held)
            with contextlib.suppress(Exception):
                await held.msg.nak()
        self.in_flight.clear()
        with contextlib.suppress(Exception):
            await self.psub.unsubscribe()


async def stream_deliveries(
    reader: GroupReader, requests: AsyncIterator[pb.SubscribeRequest]
) -> AsyncIterator[pb.Delivery]:
    """Serve ``reader`` over a bidirectional stream: deliveries out, acks and nacks in.
    Ends when the subscriber closes its side (after applying what it sent)."""
    acks = asyncio.create_task(_read_acks(reader, requests), name=f"acks-{reader.group}")
    try:
        while True:
            if acks.done():
                acks.result()  # the subscriber closed its side, or sent a bad message
                return
            if reader.free <= 0:
                room = asyncio.create_task(reader.wait_for_room())
                await asyncio.wait({room, acks}, return_when=asyncio.FIRST_COMPLETED)
                room.cancel()
                continue
            for delivery in await reader.fetch():
                yield delivery
    finally:
        acks.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await acks
        await reader.close()


async def _read_acks(reader: GroupReader, requests: AsyncIterator[pb.SubscribeRequest]) -> None:
    async for request in requests:
        kind = request.WhichOneof("kind")
        if kind == "ack":
            await reader.ack(request.ack.delivery_id)
        elif kind == "nack":
            delay = (
                request.nack.delay.ToMilliseconds() / 1000
                if request.nack.HasField("delay")
                else None
            )
            await reader.nack(request.nack.delivery_id, delay)
        else:
            raise InvalidArgumentError(FieldViolation("kind", "after open, send only ack or nack"))
