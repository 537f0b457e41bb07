"""The Event API, once, for both transports: publish, subscribe, replay, invalidate.

Every request is validated before anything is published; a bad one gets
INVALID_ARGUMENT naming the field and the rule, and nothing is written.

A subscription is a durable consumer group of this region; delivering its
events (dead letters, the inbox, acks) is :mod:`meridian.events.delivery`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from meridian._pb.meridian.v1 import events_pb2 as pb
from meridian.backbone.connection import Msg, PubAck
from meridian.core.batch import MAX_ITEMS, batch_violations, indexed
from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.core.hlc import Clock, HlcTimestamp
from meridian.core.keyspace import RESERVED_KEY_PREFIX, Keyspace, Locality
from meridian.events import model as ev
from meridian.events.component import EventsComponent
from meridian.events.delivery import GroupReader, stream_deliveries
from meridian.events.streams import (
    EVENT_ID_HEADER,
    PUBLISHED_HEADER,
    TOPIC_KEY_HEADER,
    ConsumerSpec,
)
from meridian.observability.metrics import AgentMetrics
from meridian.observability.tracing import current_traceparent
from meridian.state import HLC_HEADER, KV_OPERATION, REGION_HEADER, replicated_deleted

log = logging.getLogger(__name__)

FETCH_WAIT_S = 1.0
#: Publishes of one PublishStream awaiting JetStream's ack at once.
STREAM_IN_FLIGHT = 256


def _check(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgumentError(violations)


def _ignore_outcome(future: asyncio.Future[PubAck]) -> None:
    if not future.cancelled():
        future.exception()


def _timestamp(epoch_ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(epoch_ms)
    return ts


def start_from_proto(msg: pb.StartPosition, present: bool) -> tuple[ev.Start, list[FieldViolation]]:
    which = msg.WhichOneof("position") if present else None
    if which == "sequence":
        if msg.sequence < 1:
            return ev.Start(), [FieldViolation("start.sequence", "must be at least 1")]
        return ev.Start(sequence=msg.sequence), []
    if which == "time":
        ms = msg.time.ToMilliseconds()
        if ms <= 0:
            return ev.Start(), [FieldViolation("start.time", "must be after 1970-01-01")]
        return ev.Start(time_ms=ms), []
    return ev.Start(), []


def _origin_sequence(headers: Mapping[str, str], local: int) -> int:
    """The sequence in the origin stream, from the ``Nats-Stream-Source`` header
    JetStream adds when sourcing ("<stream> <sequence> ...")."""
    parts = headers.get("Nats-Stream-Source", "").split(" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else local


@dataclass(frozen=True)
class _Pending:
    """A PublishStream publish sent to JetStream, its ack not yet read."""

    topic: str
    ack: asyncio.Future[PubAck]


@dataclass(frozen=True)
class GroupOptions:
    source: EventSource
    start: ev.Start
    max_in_flight: int
    max_deliveries: int
    ack_wait_s: float


@dataclass(frozen=True)
class EventSource:
    """What a group consumes: its consumer, and how to read a message as an Event."""

    spec: ConsumerSpec
    keyspace: Keyspace | None


class EventsApi:
    """The EventService over this region's event streams."""

    def __init__(
        self,
        component: EventsComponent,
        *,
        region: str,
        keyspaces: Mapping[str, Keyspace],
        clock: Clock,
        metrics: AgentMetrics,
        tracer: trace.Tracer,
    ) -> None:
        self.component = component
        self.streams = component.streams
        self.region = region
        self.keyspaces = keyspaces
        self.clock = clock
        self.metrics = metrics
        self.tracer = tracer
        #: Event ids delivered and not yet settled, per consumer, across this
        #: agent's subscribers: a second copy (the same event published in two
        #: regions) arriving meanwhile is absorbed, not delivered in parallel.
        self.in_flight_ids: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )

    # -- publish / invalidate ------------------------------------------------

    @staticmethod
    def _validated_headers(request: pb.PublishRequest) -> dict[str, str]:
        """Check a PublishRequest (INVALID_ARGUMENT naming every bad field); returns
        its headers as a dict of its own."""
        headers = dict(request.headers)
        _check(
            ev.topic_violations(request.topic)
            + ev.printable_violations(request.key, "key", ev.MAX_KEY_CHARS)
            + ev.printable_violations(request.event_id, "event_id", ev.MAX_EVENT_ID_CHARS)
            + ev.payload_violations(request.payload)
            + ev.header_violations(headers)
        )
        return headers

    async def publish(self, request: pb.PublishRequest) -> pb.PublishResponse:
        headers = self._validated_headers(request)
        return await self._publish(
            request.topic, request.key, request.payload, request.event_id, headers
        )

    async def publish_batch(self, request: pb.PublishBatchRequest) -> pb.PublishBatchResponse:
        """PublishBatch: every event validated first (nothing published if one is
        bad), then all sent to JetStream at once; results in request order."""
        violations = batch_violations(
            "events",
            len(request.events),
            sum(len(e.payload) for e in request.events),
            item="event",
            data="payloads",
        )
        if len(request.events) > MAX_ITEMS:
            _check(violations)  # not worth checking each of too many
        headers: list[dict[str, str]] = []
        for i, event in enumerate(request.events):
            try:
                headers.append(self._validated_headers(event))
            except InvalidArgumentError as exc:
                violations += indexed("events", i, exc.violations)
        _check(violations)
        self.component.require_ready()
        traceparent = current_traceparent()
        published_ms = self.clock.now_ms()
        acks: list[asyncio.Future[PubAck]] = []
        results: list[pb.PublishResponse] = []
        try:
            for event, hdrs in zip(request.events, headers, strict=True):
                if traceparent:
                    hdrs["traceparent"] = traceparent
                acks.append(
                    await self.streams.publish_pipelined(
                        event.topic, event.key, event.payload, event.event_id, hdrs, published_ms
                    )
                )
            for event, ack in zip(request.events, acks, strict=True):
                seq, duplicate = await self.streams.acked(event.topic, ack)
                results.append(
                    pb.PublishResponse(sequence=seq, region=self.region, duplicate=duplicate)
                )
        except BaseException:
            for ack in acks:  # nobody reads the rest: retrieve their outcome when it comes
                ack.add_done_callback(_ignore_outcome)
            raise
        dups = sum(r.duplicate for r in results)
        self.metrics.events_published.labels(self.region, "duplicate").inc(dups)
        self.metrics.events_published.labels(self.region, "stored").inc(len(results) - dups)
        return pb.PublishBatchResponse(results=results)

    async def publish_stream(
        self, requests: AsyncIterator[pb.PublishRequest]
    ) -> AsyncIterator[pb.PublishResponse]:
        """PublishStream: each request validated and published as :meth:`publish`
        does, up to :data:`STREAM_IN_FLIGHT` awaiting JetStream's ack at once; the
        responses in request order. The first failure ends the stream (raised after
        the responses before it); nothing after an invalid request is published."""
        traceparent = current_traceparent()
        acks: asyncio.Queue[_Pending | Exception | None] = asyncio.Queue(STREAM_IN_FLIGHT)

        async def send() -> None:
            try:
                async for request in requests:
                    headers = self._validated_headers(request)
                    self.component.require_ready()
                    if traceparent:
                        headers["traceparent"] = traceparent
                    ack = await self.streams.publish_pipelined(
                        request.topic,
                        request.key,
                        request.payload,
                        request.event_id,
                        headers,
                        self.clock.now_ms(),
                    )
                    await acks.put(_Pending(request.topic, ack))
            except Exception as exc:  # the stream ends with it, after the earlier responses
                await acks.put(exc)
            else:
                await acks.put(None)

        sender = asyncio.create_task(send())
        counted = {
            outcome: self.metrics.events_published.labels(self.region, outcome)
            for outcome in ("stored", "duplicate")
        }
        try:
            while (item := await acks.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                seq, duplicate = await self.streams.acked(item.topic, item.ack)
                counted["duplicate" if duplicate else "stored"].inc()
                yield pb.PublishResponse(sequence=seq, region=self.region, duplicate=duplicate)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _publish(
        self, topic: str, key: str, payload: bytes, event_id: str, headers: dict[str, str]
    ) -> pb.PublishResponse:
        self.component.require_ready()
        traceparent = current_traceparent()
        if traceparent:
            headers["traceparent"] = traceparent
        seq, duplicate = await self.streams.publish(
            topic, key, payload, event_id, headers, self.clock.now_ms()
        )
        self.metrics.events_published.labels(
            self.region, "duplicate" if duplicate else "stored"
        ).inc()
        return pb.PublishResponse(sequence=seq, region=self.region, duplicate=duplicate)

    async def invalidate(self, request: pb.InvalidateRequest) -> pb.InvalidateResponse:
        keys = list(request.keys)
        violations = ev.name_violations(request.namespace, "namespace")
        if not 1 <= len(keys) <= ev.MAX_INVALIDATE_KEYS:
            violations.append(FieldViolation("keys", f"must hold 1..{ev.MAX_INVALIDATE_KEYS} keys"))
        for key in keys:
            if ev.printable_violations(key, "keys", ev.MAX_KEY_CHARS):
                violations.append(
                    FieldViolation(
                        "keys", f"each key must be 1..{ev.MAX_KEY_CHARS} printable ASCII characters"
                    )
                )
                break
        _check(violations)
        payload = json.dumps({"namespace": request.namespace, "keys": keys}).encode()
        resp = await self._publish(
            f"{ev.INVALIDATE_TOPIC}.{request.namespace}",
            request.namespace,
            payload,
            f"inv-{uuid.uuid4()}",
            {},
        )
        return pb.InvalidateResponse(sequence=resp.sequence)

    # -- sources -----------------------------------------------------------------

    def source_of(
        self,
        group: str,
        which: str | None,
        topic_filter: str,
        keyspace: str,
        violations: list[FieldViolation],
        *,
        ack_wait_s: float = ev.DEFAULT_ACK_WAIT_S,
        max_in_flight: int = ev.DEFAULT_MAX_IN_FLIGHT,
    ) -> EventSource | None:
        """What ``group`` consumes, and its consumer; appends broken rules to ``violations``."""
        violations += ev.name_violations(group, "group")
        if which == "topic_filter":
            violations += ev.topic_filter_violations(topic_filter)
            spec = ConsumerSpec(
                self.streams.aggregate,
                ev.consumer_name(group, f"topic:{topic_filter}"),
                ev.filter_subject(topic_filter),
                ack_wait_s,
                max_in_flight,
            )
            return EventSource(spec, None)
        if which == "keyspace":
            ks = self.keyspaces.get(keyspace)
            if ks is None:
                known = ", ".join(sorted(self.keyspaces)) or "none"
                violations.append(
                    FieldViolation("keyspace", f"unknown keyspace {keyspace!r}; declared: {known}")
                )
                return None
            if ks.locality is Locality.REPLICATED:
                stream, subject = f"MRA_{ks.name}_{self.region}", f"mr.{ks.name}.>"
            else:
                stream, subject = f"KV_{ks.bucket}", f"$KV.{ks.bucket}.>"
            # The global stream is shared by every region: name the region's consumer.
            name = ev.consumer_name(group, f"keyspace:{ks.name}:{self.region}")
            return EventSource(ConsumerSpec(stream, name, subject, ack_wait_s, max_in_flight), ks)
        violations.append(FieldViolation("source", "set topic_filter or keyspace"))
        return None

    async def replay(self, request: pb.ReplayRequest) -> pb.ReplayResponse:
        violations: list[FieldViolation] = []
        start, bad = start_from_proto(request.start, request.HasField("start"))
        violations += bad
        if not request.HasField("start"):
            violations.append(FieldViolation("start", "say where to replay from: sequence or time"))
        source = self.source_of(
            request.group,
            request.WhichOneof("source"),
            request.topic_filter,
            request.keyspace,
            violations,
        )
        _check(violations)
        assert source is not None
        self.component.require_ready()
        await self.streams.reset(source.spec, request.group, start)
        return pb.ReplayResponse()

    # -- subscribe --------------------------------------------------------------------

    async def subscribe(
        self, requests: AsyncIterator[pb.SubscribeRequest]
    ) -> AsyncIterator[pb.Delivery]:
        """Validate the opening message; returns the delivery stream."""
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            raise InvalidArgumentError(
                FieldViolation("open", "the first message must open the subscription")
            ) from None
        if first.WhichOneof("kind") != "open":
            raise InvalidArgumentError(
                FieldViolation("open", "the first message must open the subscription")
            )
        o = first.open
        opts = self.group_options(o)
        reader = await self.open_group(
            o.group, opts.source, opts.start, opts.max_in_flight, opts.max_deliveries
        )
        return stream_deliveries(reader, requests)

    def group_options(self, o: pb.SubscribeOpen | pb.RegisterPushRequest) -> GroupOptions:
        """Validate how a group is consumed (shared by Subscribe and RegisterPush)."""
        violations: list[FieldViolation] = []
        max_in_flight = o.max_in_flight or ev.DEFAULT_MAX_IN_FLIGHT
        if not 1 <= max_in_flight <= ev.MAX_IN_FLIGHT:
            violations.append(FieldViolation("max_in_flight", f"must be 1..{ev.MAX_IN_FLIGHT}"))
        max_deliveries = o.max_deliveries or ev.DEFAULT_MAX_DELIVERIES
        if not 1 <= max_deliveries <= ev.MAX_DELIVERIES:
            violations.append(FieldViolation("max_deliveries", f"must be 1..{ev.MAX_DELIVERIES}"))
        ack_wait_s = (
            o.ack_wait.ToMilliseconds() / 1000 if o.HasField("ack_wait") else ev.DEFAULT_ACK_WAIT_S
        )
        if not 0.1 <= ack_wait_s <= ev.MAX_ACK_WAIT_S:
            violations.append(
                FieldViolation("ack_wait", f"must be 0.1..{ev.MAX_ACK_WAIT_S:g} seconds")
            )
        start, bad = start_from_proto(o.start, o.HasField("start"))
        violations += bad
        source = self.source_of(
            o.group,
            o.WhichOneof("source"),
            o.topic_filter,
            o.keyspace,
            violations,
            ack_wait_s=ack_wait_s,
            max_in_flight=max_in_flight,
        )
        _check(violations)
        assert source is not None
        return GroupOptions(source, start, max_in_flight, max_deliveries, ack_wait_s)

    async def open_group(
        self,
        group: str,
        source: EventSource,
        start: ev.Start,
        max_in_flight: int,
        max_deliveries: int,
    ) -> GroupReader:
        """Bind a reader to ``group``'s consumer of ``source`` (created at ``start``)."""
        self.component.require_ready()
        psub = await self.streams.consumer(source.spec, start)
        return GroupReader(self, group, source, psub, max_in_flight, max_deliveries)

    # -- reading messages --------------------------------------------------------------

    def event_of(self, msg: Msg, source: EventSource) -> pb.Event | None:
        """The Event a message carries; None for messages that are not events
        (a keyspace's read barriers)."""
        headers = dict(msg.headers or {})
        meta = msg.metadata
        if source.keyspace is None:
            origin, topic = ev.split_subject(msg.subject)
            published = int(headers.get(PUBLISHED_HEADER, "0") or 0)
            return pb.Event(
                topic=topic,
                key=headers.get(TOPIC_KEY_HEADER, ""),
                payload=msg.data,
                event_id=headers.get(EVENT_ID_HEADER, ""),
                headers={
                    k: v
                    for k, v in headers.items()
                    if not k.lower().startswith(ev.RESERVED_HEADER_PREFIXES)
                },
                origin_region=origin,
                origin_sequence=_origin_sequence(headers, meta.sequence.stream),
                published_at=_timestamp(published) if published else None,
            )
        ks = source.keyspace
        if ks.locality is Locality.REPLICATED:
            _, _, rest = msg.subject.split(".", 2)
            origin, _, key = rest.partition(".")
        else:
            key = msg.subject[len(f"$KV.{ks.bucket}.") :]
            origin = headers.get(REGION_HEADER, "")
        if key.startswith(RESERVED_KEY_PREFIX):
            return None
        hlc = headers.get(HLC_HEADER, "")
        published_ms = HlcTimestamp.decode(hlc).wall_ms if hlc else 0
        if ks.locality is Locality.REPLICATED:
            # The message is the key's whole CRDT state; a delete is a tombstone in it.
            deleted = replicated_deleted(ks.conflict, msg.data)
        else:
            deleted = headers.get(KV_OPERATION) in ("DEL", "PURGE")
        return pb.Event(
            topic=f"{ev.STATE_TOPIC}.{ks.name}",
            key=key,
            payload=msg.data,
            event_id=f"{ks.name}:{origin}:{meta.sequence.stream}",
            headers={"operation": "delete" if deleted else "put", "hlc": hlc},
            origin_region=origin,
            origin_sequence=meta.sequence.stream,
            published_at=_timestamp(published_ms) if published_ms else None,
        )
