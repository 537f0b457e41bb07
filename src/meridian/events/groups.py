"""Consumer groups: the engine under Subscribe, RegisterPush and Replay.

A group is a durable JetStream consumer of this region (on the event stream,
or a keyspace's change feed), read by every subscriber of the group here.
:class:`ConsumerGroups` works out what a group consumes from a request
(:meth:`~ConsumerGroups.group_options`), binds readers to it
(:class:`~meridian.events.delivery.GroupReader`) and reads its messages as
Events. Subscribe (:mod:`meridian.events.service`) and HTTP push
(:mod:`meridian.events.push`) sit on it.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from meridian._pb.meridian.v1 import events_pb2 as pb
from meridian.backbone.connection import Msg
from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.core.hlc import HlcTimestamp
from meridian.core.keyspace import RESERVED_KEY_PREFIX, Keyspace, Locality
from meridian.core.residency import refuse
from meridian.events import model as ev
from meridian.events.component import EventsComponent
from meridian.events.delivery import GroupReader
from meridian.events.streams import (
    EVENT_ID_HEADER,
    PUBLISHED_HEADER,
    TOPIC_KEY_HEADER,
    ConsumerSpec,
)
from meridian.observability.metrics import AgentMetrics
from meridian.state import HLC_HEADER, KV_OPERATION, REGION_HEADER, replicated_deleted


def _check(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgumentError(violations)


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


class ConsumerGroups:
    """This region's consumer groups, over its event streams."""

    def __init__(
        self,
        component: EventsComponent,
        *,
        region: str,
        keyspaces: Mapping[str, Keyspace],
        metrics: AgentMetrics,
        tracer: trace.Tracer,
    ) -> None:
        self.component = component
        self.streams = component.streams
        self.region = region
        self.keyspaces = keyspaces
        self.metrics = metrics
        self.tracer = tracer
        #: Event ids delivered and not yet settled, per consumer, across this
        #: agent's subscribers: a second copy (the same event published in two
        #: regions) arriving meanwhile is absorbed, not delivered in parallel.
        self.in_flight_ids: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        #: Groups one identity may create on one stream.
        self.max_groups_per_identity = ev.MAX_GROUPS_PER_IDENTITY

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
            if not ks.allowed(self.region):
                raise refuse(f"keyspace {ks.name!r}", self.region, ks.residency)
            if ks.locality is Locality.REGIONAL:
                # One bucket per partition, found as they are made: no single feed.
                violations.append(
                    FieldViolation(
                        "keyspace",
                        f"{ks.name!r} is regional: its change feed is per partition; "
                        "use StateService/Watch with a '<partition>.' prefix",
                    )
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

    def group_options(self, o: pb.SubscribeOpen | pb.RegisterPushRequest) -> GroupOptions:
        """Validate how a group is consumed (shared by Subscribe and RegisterPush):
        INVALID_ARGUMENT naming every bad field, then RESIDENCY_VIOLATION for a
        topic filter naming a resident topic this region may not serve."""
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
        if o.WhichOneof("source") == "topic_filter":
            self.streams.check_served(o.topic_filter)
        return GroupOptions(source, start, max_in_flight, max_deliveries, ack_wait_s)

    async def open(
        self,
        group: str,
        source: EventSource,
        start: ev.Start,
        max_in_flight: int,
        max_deliveries: int,
        owner: str = "",
    ) -> GroupReader:
        """Bind a reader to ``group``'s consumer of ``source`` (created at
        ``start``, for ``owner``, within its quota, if missing)."""
        self.component.require_ready()
        psub = await self.streams.consumer(source.spec, start, owner, self.max_groups_per_identity)
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
