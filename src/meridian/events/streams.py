"""Events on JetStream: a region's own stream, its aggregate of every region's
streams, durable consumer groups, the dead-letter stream and the inbox.

Names and rules come from :mod:`meridian.events.model`. This module does the
I/O: creating the streams, publishing with ``Nats-Msg-Id``, creating and
resetting durable pull consumers, recording processed event ids in the
region's inbox bucket, and moving dead letters.

Every region's own stream is sourced into every region's aggregate by
JetStream. Delivery during a partition and after it heals is checked by the
e2e tier; no stalled source has been seen for events so far (nats-server
#6206 and #8346 were seen with replicated keyspaces, which therefore also read
peers directly). Sources that never started are restarted (:mod:`.sources`).

Resident topics (``[[topic]]``) are published to the region's resident stream
``EVR_<region>`` instead, made only in a region some declared topic allows,
and each aggregate sources from it only the topics it may hold
(:class:`~meridian.events.model.ResidentSource`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

from meridian.backbone.connection import (
    BackboneConnection,
    reraise_if_cancelling,
    translate_nats_errors,
)
from meridian.backbone.fanin import RegionFanIn
from meridian.core.errors import (
    DeadlineExceededError,
    ResourceExhaustedError,
    UnavailableError,
)
from meridian.core.residency import TopicResidency
from meridian.events import model as ev
from meridian.events.model import Start

log = logging.getLogger(__name__)
T = TypeVar("T")

CONSUMER_NOT_FOUND = 10014
MSG_ID = "Nats-Msg-Id"
TOPIC_KEY_HEADER = "Meridian-Key"
EVENT_ID_HEADER = "Meridian-Event-Id"
PUBLISHED_HEADER = "Meridian-Published-Ms"
DLQ_REASON_HEADER = "Meridian-Dead-Letter-Reason"
DLQ_GROUP_HEADER = "Meridian-Dead-Letter-Group"
DUPLICATE_WINDOW_S = 120.0
CONSUMER_ATTEMPTS = 4
#: JetStream lists a stream's consumers in pages of this many.
CONSUMER_PAGE = 256
#: How long an agent trusts its count of one identity's groups on a stream.
OWNED_TTL_S = 300.0
#: How long dead_letters waits for a new consumer's group to answer.
DLQ_READ_PATIENCE_S = 5.0


@dataclass(frozen=True)
class ConsumerSpec:
    """One durable pull consumer: a group's view of one source."""

    stream: str
    name: str
    filter_subject: str
    ack_wait_s: float
    max_ack_pending: int


class EventStreams(RegionFanIn):
    """This region's event streams, consumers and inbox. ``await ensure()`` first."""

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        regions: Sequence[str],
        replicas: int,
        timeout_s: float,
        inbox_ttl_s: float,
        topics: Iterable[TopicResidency] = (),
    ) -> None:
        """``topics``: the declared resident topics (``[[topic]]``)."""
        self.topics = tuple(topics)
        super().__init__(
            conn,
            region=region,
            regions=regions,
            replicas=replicas,
            timeout_s=timeout_s,
            own_stream=ev.own_stream,
            aggregate=ev.aggregate_stream(region),
            aggregate_description=f"Meridian events of every region, in {region}",
        )
        self.inbox_ttl_s = inbox_ttl_s
        self.dlq = ev.dlq_stream(region)
        self.inbox_bucket = f"mg__inbox_{region}"
        #: (stream, owner) -> (valid until, groups the owner created there).
        self._owned_counts: dict[tuple[str, str], tuple[float, int]] = {}

    # -- setup ------------------------------------------------------------

    def region_sources(self, region: str) -> list[api.StreamSource]:
        """The own stream of ``region``, and its resident stream once per topic
        this region and ``region`` may both hold (with the transforms back to
        ``mev.`` subjects)."""
        return super().region_sources(region) + [
            api.StreamSource(
                name=source.stream,
                subject_transforms=[
                    api.SubjectTransform(src=src, dest=dest) for src, dest in source.transforms
                ],
            )
            for source in ev.resident_sources(self.topics, self.region, [region])
        ]

    def resident_config(self) -> api.StreamConfig | None:
        """This region's resident stream; None where no declared topic is allowed."""
        if not ev.holds_resident_stream(self.topics, self.region):
            return None
        return self.regional_stream(
            ev.resident_stream(self.region),
            f"Meridian events of resident topics published in {self.region}",
            [f"{ev.RESIDENT_SUBJECT_PREFIX}.{self.region}.>"],
            duplicate_window=DUPLICATE_WINDOW_S,
        )

    async def ensure(self) -> None:
        """Create the streams and the inbox bucket if missing (idempotent), and
        give an aggregate made before the declared topics the sources they need."""
        js = self._js()
        resident = self.resident_config()
        aggregate = self.aggregate_config()
        await self.ensure_streams(
            [
                self.regional_stream(
                    self.own,
                    f"Meridian events published in {self.region}",
                    [f"{ev.SUBJECT_PREFIX}.{self.region}.>"],
                    duplicate_window=DUPLICATE_WINDOW_S,
                ),
                # Before the aggregate, so that its source of it starts at once.
                *([resident] if resident is not None else []),
                aggregate,
                self.regional_stream(
                    self.dlq,
                    f"Meridian dead letters of {self.region}'s consumer groups",
                    [f"{ev.DLQ_SUBJECT_PREFIX}.{self.region}.>"],
                ),
            ]
        )
        if await self.ensure_sources(aggregate):
            log.info("%s's sources updated: %d now", self.aggregate, len(aggregate.sources or ()))
        try:
            await js.key_value(self.inbox_bucket)
        except nats.js.errors.BucketNotFoundError:
            await self._call(
                "create the inbox bucket",
                js.create_key_value(
                    api.KeyValueConfig(
                        bucket=self.inbox_bucket,
                        description=f"Meridian consumer-group inboxes of {self.region}",
                        history=1,
                        ttl=self.inbox_ttl_s,
                        direct=True,
                        storage=api.StorageType.FILE,
                        replicas=self.replicas,
                        placement=api.Placement(cluster=self.region),
                    )
                ),
            )

    # -- publishing ---------------------------------------------------------

    def subject_of(self, topic: str, field: str = "topic") -> str:
        """The subject an event of ``topic`` is published to from this region;
        RESIDENCY_VIOLATION naming ``field`` if this region may not hold it."""
        return ev.publish_subject(self.topics, self.region, topic, field)

    def check_served(self, topic_filter: str) -> None:
        """RESIDENCY_VIOLATION if ``topic_filter`` names a resident topic this
        region may not serve."""
        ev.check_served(self.topics, self.region, topic_filter)

    async def publish(
        self,
        topic: str,
        key: str,
        payload: bytes,
        event_id: str,
        headers: dict[str, str],
        published_ms: int,
    ) -> tuple[int, bool]:
        """Publish to this region's stream (its resident stream for a resident
        topic); returns (sequence, duplicate). RESIDENCY_VIOLATION, and nothing
        published, for a resident topic this region may not hold."""
        subj = self.subject_of(topic)
        all_headers = {
            **headers,
            MSG_ID: event_id,
            EVENT_ID_HEADER: event_id,
            TOPIC_KEY_HEADER: key,
            PUBLISHED_HEADER: str(published_ms),
        }
        ack = await self._call(
            f"publish to {topic}",
            self._js().publish(subj, payload, timeout=self.timeout_s, headers=all_headers),
        )
        return int(ack.seq), bool(ack.duplicate)

    async def publish_pipelined(
        self,
        topic: str,
        key: str,
        payload: bytes,
        event_id: str,
        headers: dict[str, str],
        published_ms: int,
    ) -> asyncio.Future[api.PubAck]:
        """Send a publish like :meth:`publish` without waiting for its ack: returns
        the ack's future once the message is written; :meth:`acked` waits for it."""
        subj = self.subject_of(topic)
        all_headers = {
            **headers,
            MSG_ID: event_id,
            EVENT_ID_HEADER: event_id,
            TOPIC_KEY_HEADER: key,
            PUBLISHED_HEADER: str(published_ms),
        }
        with translate_nats_errors(f"cannot publish to {topic} in {self.region}"):
            return await self._js().publish_async(subj, payload, headers=all_headers)

    async def acked(self, topic: str, ack: asyncio.Future[api.PubAck]) -> tuple[int, bool]:
        """(sequence, duplicate) of a :meth:`publish_pipelined`; DEADLINE_EXCEEDED if
        JetStream does not answer within the timeout."""
        if not ack.done():  # pipelined, the ack is often in already: no timer then
            with translate_nats_errors(f"cannot publish to {topic} in {self.region}"):
                async with asyncio.timeout(self.timeout_s):
                    await ack
            reraise_if_cancelling()
        with translate_nats_errors(f"cannot publish to {topic} in {self.region}"):
            got = ack.result()
        return int(got.seq), bool(got.duplicate)

    # -- consumer groups ------------------------------------------------------

    async def consumer(
        self,
        spec: ConsumerSpec,
        start: Start,
        owner: str = "",
        max_owned: int = ev.MAX_GROUPS_PER_IDENTITY,
    ) -> JetStreamContext.PullSubscription:
        """Bind to the group's durable consumer, creating it at ``start`` if missing.

        Looking a consumer up goes through the JetStream meta leader, which is
        briefly missing while it is re-elected (after a partition heals, say):
        that is retried a few times before UNAVAILABLE reaches the caller.
        """
        for attempt in range(CONSUMER_ATTEMPTS):
            try:
                return await self._consumer(spec, start, owner, max_owned)
            except UnavailableError:
                if attempt == CONSUMER_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    async def _consumer(
        self, spec: ConsumerSpec, start: Start, owner: str, max_owned: int
    ) -> JetStreamContext.PullSubscription:
        js = self._js()
        await self.ensure_consumer(spec, start, owner, max_owned)
        return await self._call(
            "bind to a consumer group",
            js.pull_subscribe_bind(durable=spec.name, stream=spec.stream),
        )

    async def ensure_consumer(
        self, spec: ConsumerSpec, start: Start, owner: str, max_owned: int
    ) -> None:
        """Create the group's consumer at ``start`` for ``owner`` unless it exists;
        RESOURCE_EXHAUSTED when ``owner`` already created ``max_owned`` groups on
        its stream.

        The count is a quota, not a ledger: two creations racing at the limit may
        both pass, it is cached for OWNED_TTL_S per agent, and when the servers
        cannot list the consumers in time the group is created anyway (a slow
        JetStream API must not make Subscribe less available than it was)."""
        js = self._js()
        try:
            await self._call("look up a consumer group", js.consumer_info(spec.stream, spec.name))
            return
        except nats.js.errors.NotFoundError:
            pass
        owned = await self._owned(js, spec.stream, owner)
        if owned is not None and owned >= max_owned:
            raise ResourceExhaustedError(
                f"{owner or 'unauthenticated callers'} already created {owned} consumer groups "
                f"on {spec.stream} (at most {max_owned}); reuse a group or delete one"
            )
        await self._create_consumer(js, spec, start, owner)
        if owned is not None:  # the cached count now includes this group
            until, _ = self._owned_counts[(spec.stream, owner)]
            self._owned_counts[(spec.stream, owner)] = (until, owned + 1)

    async def _owned(self, js: JetStreamContext, stream: str, owner: str) -> int | None:
        """How many consumers of ``stream`` ``owner`` created (cached); None when
        the servers did not list them in time."""
        now = time.monotonic()
        cached = self._owned_counts.get((stream, owner))
        if cached is not None and cached[0] > now:
            return cached[1]
        owned, offset = 0, 0
        try:
            while True:
                page = await self._call(
                    "list consumer groups", js.consumers_info(stream, offset=offset)
                )
                owned += sum(
                    1 for c in page if (c.config.metadata or {}).get(ev.OWNER_METADATA, "") == owner
                )
                offset += len(page)
                if len(page) < CONSUMER_PAGE:
                    break
        except (UnavailableError, DeadlineExceededError) as exc:
            log.warning("group quota not checked for %s on %s: %s", owner, stream, exc)
            return None
        self._owned_counts[(stream, owner)] = (now + OWNED_TTL_S, owned)
        return owned

    async def reset(self, spec: ConsumerSpec, group: str, start: Start) -> None:
        """Move a group to ``start``: JetStream consumers can't be rewound, so the
        consumer is deleted and created again at the new position. The group's
        inbox is emptied, so replayed events are delivered again rather than
        absorbed as duplicates. Deliveries in flight to current subscribers fail
        their acks and are redelivered."""
        js = self._js()
        await self._call(
            "empty the group's inbox",
            js.purge_stream(
                f"KV_{self.inbox_bucket}", subject=f"$KV.{self.inbox_bucket}.{group}.>"
            ),
        )
        owner = ""
        with contextlib.suppress(nats.js.errors.NotFoundError):
            info = await self._call(
                "look up a consumer group", js.consumer_info(spec.stream, spec.name)
            )
            owner = (info.config.metadata or {}).get(ev.OWNER_METADATA, "")
            await self._call("delete a consumer group", js.delete_consumer(spec.stream, spec.name))
        await self._create_consumer(js, spec, start, owner)

    async def _create_consumer(
        self, js: JetStreamContext, spec: ConsumerSpec, start: Start, owner: str
    ) -> None:
        config = api.ConsumerConfig(
            durable_name=spec.name,
            filter_subject=spec.filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait_s,
            max_ack_pending=spec.max_ack_pending,
            # Meridian counts attempts itself and dead-letters; JetStream must not stop early.
            max_deliver=-1,
            deliver_policy=api.DeliverPolicy.NEW,
            metadata={ev.OWNER_METADATA: owner} if owner else None,
        )
        if start.sequence:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start.sequence
        elif start.time_ms:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.fromtimestamp(start.time_ms / 1000, UTC)
        await self._call("create a consumer group", js.add_consumer(spec.stream, config=config))

    # -- inbox --------------------------------------------------------------------

    async def processed(self, group: str, event_id: str) -> bool:
        """Whether ``group`` in this region already processed ``event_id``."""
        js = self._js()
        try:
            await self._call(
                "read the inbox",
                js.get_last_msg(
                    f"KV_{self.inbox_bucket}",
                    f"$KV.{self.inbox_bucket}.{ev.inbox_key(group, event_id)}",
                    direct=True,
                ),
            )
        except (nats.js.errors.NotFoundError, nats.js.errors.APIError):
            return False
        return True

    async def mark_processed(self, group: str, event_id: str) -> None:
        await self._call(
            "record a processed event",
            self._js().publish(
                f"$KV.{self.inbox_bucket}.{ev.inbox_key(group, event_id)}",
                b"",
                timeout=self.timeout_s,
            ),
        )

    # -- dead letters ------------------------------------------------------------

    async def dead_letter(self, msg: Msg, group: str, reason: str) -> None:
        """Copy ``msg`` to the dead-letter stream (then the caller terminates it)."""
        # JetStream refuses a publish carrying its own headers (Nats-Msg-Id,
        # Nats-Stream-Source, ...); the event's own headers are kept.
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        headers[DLQ_REASON_HEADER] = reason
        headers[DLQ_GROUP_HEADER] = group
        # A topic event keeps its topic; a change-feed event files under "change".
        prefix = f"{ev.SUBJECT_PREFIX}."
        topic = ev.split_subject(msg.subject)[1] if msg.subject.startswith(prefix) else ""
        await self._call(
            "move an event to the dead-letter stream",
            self._js().publish(
                f"{ev.DLQ_SUBJECT_PREFIX}.{self.region}.{group}.{topic or 'change'}",
                msg.data,
                timeout=self.timeout_s,
                headers=headers,
            ),
        )

    async def dead_letters(self, group: str, limit: int = 1000) -> list[Msg]:
        """The dead letters of ``group`` (for operators and tests)."""
        js = self._js()
        out: list[Msg] = []
        sub = await js.pull_subscribe(
            f"{ev.DLQ_SUBJECT_PREFIX}.{self.region}.{group}.>",
            stream=self.dlq,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.ALL,
                inactive_threshold=30.0,
            ),
        )
        # A consumer just made may answer 503 until its group has a leader:
        # wait for it a little, then say so as UNAVAILABLE.
        patience = asyncio.get_running_loop().time() + DLQ_READ_PATIENCE_S
        try:
            while len(out) < limit:
                try:
                    batch = await sub.fetch(min(100, limit - len(out)), timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    break
                except nats.js.errors.ServiceUnavailableError:
                    if asyncio.get_running_loop().time() > patience:
                        with translate_nats_errors(f"reading the dead letters of {group}"):
                            raise
                    await asyncio.sleep(0.1)
                    continue
                out.extend(batch)
        finally:
            await sub.unsubscribe()
        return out
