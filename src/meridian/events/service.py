"""The Event API, once, for both transports: publish, subscribe, replay, invalidate.

Every request is validated before anything is published; a bad one gets
INVALID_ARGUMENT naming the field and the rule, and nothing is written. A
resident topic (``[[topic]]``) this region may not hold gets
RESIDENCY_VIOLATION, to publish, subscribe or replay, and nothing is written.

A subscription is a durable consumer group of this region: the engine under
it (consumers, reading messages as Events, dead letters, the inbox, acks, HTTP
push) is :mod:`meridian.events.groups`, :mod:`~meridian.events.delivery` and
:mod:`~meridian.events.push`, below this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from meridian._pb.meridian.v1 import events_pb2 as pb
from meridian.backbone.connection import PubAck
from meridian.core.batch import MAX_ITEMS, batch_violations, indexed
from meridian.core.calls import CALLER
from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.core.hlc import Clock
from meridian.core.quota import StreamQuota
from meridian.events import model as ev
from meridian.events.delivery import stream_deliveries
from meridian.events.groups import ConsumerGroups, start_from_proto
from meridian.events.push import PushDeliveries
from meridian.observability.tracing import current_traceparent

log = logging.getLogger(__name__)

#: Publishes of one PublishStream awaiting JetStream's ack at once.
STREAM_IN_FLIGHT = 256


def _check(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgumentError(violations)


def _ignore_outcome(future: asyncio.Future[PubAck]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True)
class _Pending:
    """A PublishStream publish sent to JetStream, its ack not yet read."""

    topic: str
    ack: asyncio.Future[PubAck]


class EventsApi:
    """The EventService over this region's event streams."""

    def __init__(
        self,
        groups: ConsumerGroups,
        push: PushDeliveries,
        *,
        clock: Clock,
        stream_quota: StreamQuota | None = None,
    ) -> None:
        """``stream_quota``: the agent's per-identity cap on watches and subscriptions."""
        self.stream_quota = stream_quota or StreamQuota()
        self.groups = groups
        self.push = push
        self.component = groups.component
        self.streams = groups.streams
        self.region = groups.region
        self.clock = clock
        self.metrics = groups.metrics
        self.tracer = groups.tracer

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
        # Every event's residency before any is sent: a refused batch writes nothing.
        for i, event in enumerate(request.events):
            self.streams.subject_of(event.topic, f"events[{i}].topic")
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
        """PublishStream: the responses to ``requests``; see :meth:`_publish_stream`."""
        return self._publish_stream(requests)

    async def _publish_stream(
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

    async def replay(self, request: pb.ReplayRequest) -> pb.ReplayResponse:
        violations: list[FieldViolation] = []
        start, bad = start_from_proto(request.start, request.HasField("start"))
        violations += bad
        if not request.HasField("start"):
            violations.append(FieldViolation("start", "say where to replay from: sequence or time"))
        source = self.groups.source_of(
            request.group,
            request.WhichOneof("source"),
            request.topic_filter,
            request.keyspace,
            violations,
        )
        _check(violations)
        assert source is not None
        if request.WhichOneof("source") == "topic_filter":
            self.streams.check_served(request.topic_filter)
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
        opts = self.groups.group_options(o)
        identity = CALLER.get().identity
        self.stream_quota.check(identity, "subscription")
        reader = await self.groups.open(
            o.group, opts.source, opts.start, opts.max_in_flight, opts.max_deliveries, identity
        )
        return self.stream_quota.guard(
            identity, "subscription", stream_deliveries(reader, requests)
        )

    # -- HTTP push ----------------------------------------------------------------------

    async def register_push(self, request: pb.RegisterPushRequest) -> pb.RegisterPushResponse:
        await self.push.register(request)
        return pb.RegisterPushResponse()

    async def unregister_push(self, request: pb.UnregisterPushRequest) -> pb.UnregisterPushResponse:
        await self.push.unregister(request)
        return pb.UnregisterPushResponse()
