"""A ``replicated`` keyspace on JetStream: a stream per region, sourced into every region.

For keyspace ``ks`` and region ``r``:

- ``MR_<ks>_<r>`` lives in cluster ``r`` and takes region ``r``'s writes on
  ``mr.<ks>.<r>.<key>``. It is local to the region, so writes keep working when
  the region is cut off from every other region.
- ``MRA_<ks>_<r>``, also in cluster ``r``, *sources* every region's
  ``MR_<ks>_<s>`` stream. JetStream copies across the gateways, and catches up
  by itself after a partition heals. The agent materializes this stream.

Each message holds the whole CRDT state of one key as its region knew it
(``core.replicated``), so both streams keep only the last message per subject.
Writes within a region are serialized per key by compare-and-set on the
region's own stream (``Nats-Expected-Last-Subject-Sequence``), so several agents
in one region never lose each other's updates.

Freshness (:mod:`meridian.state.model.view`) is proven per writing region ``s``, on
``MR_<ks>_<s>`` itself, never on the aggregate: JetStream's sourcing reports a
source as caught up from the aggregating server's own, possibly stale, idea of
the source (the chaos harness saw the "proof" arrive 3 s before the writes,
and reads served 17 s stale). The agent reads ``MR_<ks>_<s>`` directly with an
ordered consumer (its own region's too), so it knows exactly which of ``s``'s
messages have been merged, and every freshness interval it asks that stream's
leader for its last sequence, pipelined (:func:`~meridian.backbone.feed.every`).
Its own writes' acks are proofs for its own region at no cost. A proof of a
peer region is one WAN round trip old when it arrives; the view is proven
fresh for ``s`` once it has merged every message of ``s`` up to the proven
sequence.

The leader's word is sound here where it is not for ``global``: a regional
stream with one replica has no election (its one server holds every
acknowledged write), and an answer from a replicated stream that names no
leader (a member that lost its leader answers for itself) is not taken. What
remains is a regional leader deposed inside its own region without knowing
it yet, which needs a partition inside a region.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from meridian.backbone.connection import (
    BackboneConnection,
    reraise_if_cancelling,
    translate_nats_errors,
)
from meridian.backbone.fanin import RegionFanIn
from meridian.backbone.feed import WATCH_QUEUE_MESSAGES, every, ordered_feed, until_stalled
from meridian.core.errors import ClockSkewError, InvalidArgumentError, UnavailableError
from meridian.core.hlc import HlcTimestamp, HybridLogicalClock
from meridian.core.keyspace import Keyspace
from meridian.state.global_store import HLC_HEADER, REGION_HEADER, WRONG_LAST_SEQUENCE
from meridian.state.model.replicated import ReplicatedEntry, State, decode, merge, merged_entry
from meridian.state.model.view import Freshness, KeyspaceView

log = logging.getLogger(__name__)

NO_MESSAGE_FOUND = 10037
CAS_ATTEMPTS = 20
#: How often a direct peer feed is checked for a stall.
PEER_CHECK_S = 3.0
#: Freshness probes of one region's stream under way at once.
MAX_PROBES_IN_FLIGHT = 8


def own_stream(keyspace: str, region: str) -> str:
    return f"MR_{keyspace}_{region}"


def aggregate_stream(keyspace: str, region: str) -> str:
    return f"MRA_{keyspace}_{region}"


class ReplicatedKeyspaceStore(RegionFanIn):
    """Writes of one region and the merged view of all regions for one keyspace."""

    def __init__(
        self,
        conn: BackboneConnection,
        keyspace: Keyspace,
        *,
        region: str,
        regions: Sequence[str],
        replicas: int,
        timeout_s: float,
        hlc: HybridLogicalClock,
        on_skewed: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(
            conn,
            region=region,
            regions=regions,
            replicas=replicas,
            timeout_s=timeout_s,
            own_stream=partial(own_stream, keyspace.name),
            aggregate=aggregate_stream(keyspace.name, region),
            aggregate_description=(
                f"Meridian replicated keyspace {keyspace.name}: all regions, in {region}"
            ),
            max_msgs_per_subject=1,
        )
        self.hlc = hlc
        self.on_skewed = on_skewed
        self.keyspace = keyspace
        self._subject_prefix = f"mr.{keyspace.name}."
        #: The view being followed: this region's write acks prove its freshness.
        self._view: KeyspaceView[ReplicatedEntry] | None = None

    def subject(self, region: str, key: str) -> str:
        return f"{self._subject_prefix}{region}.{key}"

    def _split(self, subject: str) -> tuple[str, str]:
        region, _, key = subject[len(self._subject_prefix) :].partition(".")
        return region, key

    async def ensure(self) -> None:
        """Create this region's two streams if missing (needs the JetStream meta leader)."""
        await self.ensure_streams(
            [
                self.regional_stream(
                    self.own,
                    f"Meridian replicated keyspace {self.keyspace.name}: writes of {self.region}",
                    [f"{self._subject_prefix}{self.region}.>"],
                    max_msgs_per_subject=1,
                    allow_direct=True,
                ),
                self.aggregate_config(),
            ]
        )

    async def mutate(
        self,
        key: str,
        current: State | None,
        operation: Callable[[State | None], State],
        hlc: HlcTimestamp,
    ) -> tuple[int, State]:
        """Apply ``operation`` to the key's state and publish it to this region's stream.

        ``current`` is the merged state from the view; it is merged with this
        region's latest message for the key, so a concurrent write by another
        agent in the region is never lost (compare-and-set, retried).
        """
        js = self.conn.jetstream(self.timeout_s)
        subject = self.subject(self.region, key)
        for _ in range(CAS_ATTEMPTS):
            asked_at = time.monotonic()
            last_seq, mine = await self._last_own(subject)
            base = merge(current, mine) if mine is not None else current
            new = operation(base)
            headers = {
                HLC_HEADER: hlc.encode(),
                REGION_HEADER: self.region,
                "Nats-Expected-Last-Subject-Sequence": str(last_seq),
            }
            try:
                with translate_nats_errors(
                    f"cannot write {self.keyspace.name}/{key} in {self.region}"
                ):
                    async with asyncio.timeout(self.timeout_s + 0.5):
                        ack = await js.publish(
                            subject, new.to_canonical(), timeout=self.timeout_s, headers=headers
                        )
            except nats.js.errors.APIError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE:
                    continue  # another agent in this region wrote first; merge and retry
                raise UnavailableError(
                    f"cannot write {self.keyspace.name}/{key} in {self.region}: {exc.description}"
                ) from exc
            if self._view is not None:
                self._source(self._view, self.region).prove(asked_at, int(ack.seq))
            return int(ack.seq), new
        raise UnavailableError(
            f"cannot write {self.keyspace.name}/{key}: {CAS_ATTEMPTS} concurrent writers in a row"
        )

    async def _last_own(self, subject: str) -> tuple[int, State | None]:
        """This region's latest message for ``subject``, by a direct get.

        A direct get is answered by the stream's servers themselves. The
        JetStream API proper (``STREAM.MSG.GET``) answers "temporarily
        unavailable" in a region cut off from the JetStream meta leader, which
        would make a partitioned region refuse writes (the chaos harness saw it
        some 5 s into a partition). With more than one replica a follower may
        answer from slightly behind; the publish's expected-sequence check then
        fails and the write is retried.
        """
        js = self.conn.jetstream(self.timeout_s)
        try:
            with translate_nats_errors(f"cannot read this region's stream {self.own}"):
                msg = await js.get_last_msg(self.own, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return 0, None
        except nats.js.errors.APIError as exc:
            if exc.err_code == NO_MESSAGE_FOUND:
                return 0, None
            raise
        return int(msg.seq or 0), decode(self.keyspace.conflict, msg.data or b"")

    # -- the merged view ------------------------------------------------------

    async def follow(
        self,
        view: KeyspaceView[ReplicatedEntry],
        freshness_interval_s: float,
        on_applied: Callable[[int], Awaitable[None]],
    ) -> None:
        """Merge every region's messages into ``view`` and prove, per writing region,
        how fresh it is; runs until cancelled."""
        js = self.conn.jetstream(self.timeout_s)
        self._view = view
        async with (
            ordered_feed(
                js,
                f"{self._subject_prefix}>",
                stream=self.aggregate,
                deliver_policy=api.DeliverPolicy.ALL,
            ) as queue,
            asyncio.TaskGroup() as tg,
        ):
            tg.create_task(self._apply(queue, view, on_applied))
            for region in self.regions:
                source = self._source(view, region)
                tg.create_task(self._follow_source(region, view, source, on_applied))
                tg.create_task(
                    every(
                        freshness_interval_s,
                        partial(self._probe, region, source),
                        in_flight=MAX_PROBES_IN_FLIGHT,
                        what=f"freshness of {own_stream(self.keyspace.name, region)}",
                    )
                )

    @staticmethod
    def _source(view: KeyspaceView[ReplicatedEntry], region: str) -> Freshness:
        return view.sources.setdefault(region, Freshness())

    async def _probe(self, region: str, source: Freshness) -> None:
        """Prove ``region``'s writes: its stream's last sequence, from its leader."""
        js = self.conn.jetstream(self.timeout_s)
        stream = own_stream(self.keyspace.name, region)
        asked_at = time.monotonic()
        with translate_nats_errors(f"cannot reach {stream}"):
            async with asyncio.timeout(self.timeout_s + 0.5):
                info = await js.stream_info(stream)
        if self.replicas > 1 and not (info.cluster and info.cluster.leader):
            raise UnavailableError(f"{stream} has no leader: its answer proves nothing")
        source.prove(asked_at, int(info.state.last_seq))

    async def _apply(
        self,
        queue: asyncio.Queue[Msg],
        view: KeyspaceView[ReplicatedEntry],
        on_applied: Callable[[int], Awaitable[None]],
        *,
        source: Freshness | None = None,
        progress: list[int] | None = None,
    ) -> None:
        """Merge queued messages into ``view``. Aggregate messages advance the view's
        sequence; messages read straight from a region's own stream (``source``
        given) only merge, and make that region's proof complete up to them.
        ``progress[0]`` is kept at the last stream sequence taken from the queue."""
        while True:
            msg = await queue.get()
            seq = msg.metadata.sequence.stream
            if progress is not None:
                progress[0] = seq
            wall_ms = self._merge(msg, seq, view, direct=source is not None)
            if source is not None and msg.metadata.num_pending == 0:
                source.completed(seq)  # every message of that region up to seq is in
            if wall_ms is not None:
                await on_applied(wall_ms)

    def _merge(
        self, msg: Msg, seq: int, view: KeyspaceView[ReplicatedEntry], *, direct: bool
    ) -> int | None:
        """Merge one message into ``view``: the writer's HLC wall milliseconds for
        the lag metric (0 for this region's own writes), None if it was malformed
        and skipped (an aggregate message still advances the view's sequence)."""
        writer, key = self._split(msg.subject)
        try:
            incoming, hlc = self._decode(msg)
        except InvalidArgumentError as exc:
            log.error("skipping malformed message on %s: %s", msg.subject, exc)
            if not direct:
                view.apply(seq, key, view.get(key))
            return None
        if writer != self.region:
            try:
                self.hlc.update(hlc)  # later local writes order after what we've seen
            except ClockSkewError as exc:
                # Rejected and counted; the write still merges, or regions would diverge.
                log.warning("%s", exc.message)
                self.on_skewed()
        old = view.get(key)
        if direct:
            entry = merged_entry(
                old, key, incoming, old.revision if old else 0, hlc.to_int(), writer
            )
            if old is None or (entry.state, entry.hlc, entry.region) != (
                old.state,
                old.hlc,
                old.region,
            ):
                view.merge_local(key, entry)
        else:
            view.apply(seq, key, merged_entry(old, key, incoming, seq, hlc.to_int(), writer))
        return hlc.wall_ms if writer != self.region else 0

    async def _follow_source(
        self,
        region: str,
        view: KeyspaceView[ReplicatedEntry],
        source: Freshness,
        on_applied: Callable[[int], Awaitable[None]],
    ) -> None:
        """Also read ``region``'s own stream directly (across the gateway, for a peer).

        This is what proves freshness per region (see the module docstring).
        It also bounds a known stall: JetStream sourcing into the aggregate can
        stall after a partition heals (nats-server issues #6206, #8346);
        merging is idempotent, so reading directly as well costs only
        bandwidth. The
        direct consumer can stall too (seen after heals): every
        ``PEER_CHECK_S`` the peer stream's last sequence is compared with what
        this feed has taken, and a feed that is behind and made no progress
        since the previous check is recreated. Best effort: retries while the
        peer is unreachable, never fails the keyspace's feed.
        """
        js = self.conn.jetstream(self.timeout_s)
        stream = own_stream(self.keyspace.name, region)
        while True:
            try:
                async with (
                    ordered_feed(
                        js,
                        f"{self._subject_prefix}{region}.>",
                        stream=stream,
                        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                    ) as queue,
                    asyncio.TaskGroup() as tg,
                ):
                    progress = [0]
                    applying = tg.create_task(
                        self._apply(queue, view, on_applied, source=source, progress=progress)
                    )
                    await until_stalled(js, stream, progress, PEER_CHECK_S)
                    log.info("direct feed from %s stalled; recreating it", region)
                    applying.cancel()
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("direct feed from %s not available yet: %s", region, exc)
            reraise_if_cancelling()
            await asyncio.sleep(2.0)

    async def watch(self, prefix: str, from_revision: int | None) -> AsyncIterator[ReplicatedEntry]:
        """Merged entries under ``prefix`` as this region applies changes: from
        aggregate sequence ``from_revision`` on, or only new ones."""
        js = self.conn.jetstream(self.timeout_s)
        start = from_revision or int((await js.stream_info(self.aggregate)).state.last_seq) + 1
        merged: dict[str, ReplicatedEntry] = {}
        # Replay from the start to know each key's merged state; emit from `start`.
        async with ordered_feed(
            js,
            f"{self._subject_prefix}>",
            stream=self.aggregate,
            deliver_policy=api.DeliverPolicy.ALL,
            max_messages=WATCH_QUEUE_MESSAGES,
            # The replay before `start` is read as it comes; only what is sent on counts.
            counted=lambda m: m.metadata.sequence.stream >= start,
        ) as queue:
            while True:
                msg = await queue.next(f"the watch of {self.aggregate} {prefix!r}")
                writer, key = self._split(msg.subject)
                if not key.startswith(prefix):
                    continue
                seq = msg.metadata.sequence.stream
                try:
                    incoming, hlc = self._decode(msg)
                except InvalidArgumentError:
                    continue
                entry = merged_entry(merged.get(key), key, incoming, seq, hlc.to_int(), writer)
                merged[key] = entry
                if seq >= start:
                    yield entry

    def _decode(self, msg: Msg) -> tuple[State, HlcTimestamp]:
        """A message's CRDT state and HLC; InvalidArgumentError if malformed."""
        headers = dict(msg.headers or {})
        incoming = decode(self.keyspace.conflict, msg.data)
        return incoming, HlcTimestamp.decode(headers.get(HLC_HEADER, "0" * 16))

    def staleness(
        self, view: KeyspaceView[ReplicatedEntry], now: float
    ) -> tuple[float | None, str]:
        """How stale the view may be: the oldest proof among the writing regions
        (None, with the reason, while a region has none)."""
        worst, why = 0.0, ""
        for region in self.regions:
            source = view.sources.get(region)
            age = source.staleness(now) if source is not None else None
            if age is None:
                return (
                    None,
                    f"writes from {region} have not been confirmed since this agent started",
                )
            if age >= worst:
                worst, why = age, f"writes from {region} last confirmed {age:.2f}s ago"
        return worst, why
