"""A ``global`` keyspace on JetStream: an R3 KV bucket placed in the ``global`` cluster.

Writes are JetStream publishes to the bucket's stream. A publish ack means a
quorum of ``global`` replicas (one per region, by ``unique_tag``) committed it.
Compare-and-set uses ``Nats-Expected-Last-Subject-Sequence``; the revision of a
key is the stream sequence of its last write, as in NATS KV.

Every write carries the writer's HLC timestamp and region in headers.

Strong reads are linearizable. A leader's answer alone is not enough, because
a leader cut off from its quorum keeps answering until it steps down. So a
strong read first commits a *barrier* write through the quorum, which proves the
stream has a leader backed by a quorum at that moment, and then reads the key
through the leader. The residual window is a leader deposed between those two
steps, which are milliseconds apart.

Bounded reads are served from the agent's view of the change feed, and its
freshness is proven by quorum commits only (:mod:`meridian.state.model.view`): a read
barrier every freshness interval, plus the acks of this agent's own writes and
barriers. Barriers are pipelined (one starts every interval, whatever the
previous one is doing, at most :data:`MAX_BARRIERS_IN_FLIGHT` at once), so a
proof is at most one barrier round trip plus one interval old. The cost is one
quorum write per keyspace per interval per agent.

Failures are translated here, once: a lost CAS becomes ``ConflictError`` (with
the current revision of the committed write that won), a CAS refused while no
committed write beat it becomes ``UnavailableError`` (not applied; retry), and
no quorum within ``timeout_s`` becomes ``QuorumUnavailableError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from meridian.backbone.connection import (
    BackboneConnection,
    translate_nats_errors,
)
from meridian.backbone.feed import WATCH_QUEUE_MESSAGES, every, ordered_feed
from meridian.config import GLOBAL_CLUSTER
from meridian.core.errors import (
    ConflictError,
    InvalidArgumentError,
    QuorumUnavailableError,
    UnavailableError,
)
from meridian.core.hlc import HlcTimestamp
from meridian.core.keyspace import RESERVED_KEY_PREFIX, Keyspace
from meridian.state.model.view import KeyspaceView, StoredEntry

log = logging.getLogger(__name__)
T = TypeVar("T")

HLC_HEADER = "Meridian-HLC"
REGION_HEADER = "Meridian-Region"
KV_OPERATION = "KV-Operation"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
#: JetStream's "wrong last sequence" codes: with the sequence (10071), or without,
#: when the leader rejects it against in-flight proposals (10164).
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
STREAM_NOT_FOUND = 10059
NO_MESSAGE_FOUND = 10037
#: Reserved key for read barriers (user keys may not start with RESERVED_KEY_PREFIX).
BARRIER_KEY = f"{RESERVED_KEY_PREFIX}.barrier"
#: Freshness barriers under way at once (they pile up only while the quorum is out of reach).
MAX_BARRIERS_IN_FLIGHT = 8


def bucket_config(
    keyspace: Keyspace,
    bucket: str,
    description: str,
    *,
    cluster: str,
    replicas: int,
    metadata: dict[str, str] | None = None,
) -> api.StreamConfig:
    """The stream of a KV bucket placed in ``cluster``.

    Written out rather than left to nats-py's ``create_key_value``, which drops
    the placement (a bucket meant for one region's cluster could land in any
    cluster) and cannot set stream metadata. The settings are the ones it uses.
    """
    return api.StreamConfig(
        name=f"KV_{bucket}",
        description=description,
        subjects=[f"$KV.{bucket}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        deny_delete=True,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=min(120.0, keyspace.ttl_s) if keyspace.ttl_s else 120.0,
        max_age=keyspace.ttl_s or None,
        max_consumers=-1,
        max_msg_size=keyspace.value_max_bytes,
        max_msgs=-1,
        # Watch can replay from a revision: keep the last changes of each key
        # (by default 64, NATS KV's maximum history).
        max_msgs_per_subject=keyspace.history,
        num_replicas=replicas,
        storage=api.StorageType.FILE,
        placement=api.Placement(cluster=cluster),
        metadata=metadata,
    )


def _is_delete(headers: dict[str, str] | None) -> bool:
    return bool(headers) and (headers or {}).get(KV_OPERATION) in ("DEL", "PURGE")


class GlobalKeyspaceStore:
    """Reads and writes one ``global`` keyspace. Create it, ``await ensure()``, then use."""

    def __init__(
        self,
        conn: BackboneConnection,
        keyspace: Keyspace,
        *,
        region: str,
        replicas: int,
        timeout_s: float,
        clock_now: Callable[[], HlcTimestamp],
        cluster: str = GLOBAL_CLUSTER,
    ) -> None:
        self.cluster = cluster
        self.conn = conn
        self.keyspace = keyspace
        self.region = region
        self.replicas = replicas
        self.timeout_s = timeout_s
        self.clock_now = clock_now
        self.stream = f"KV_{keyspace.bucket}"
        #: The stream the view and watches follow: the bucket's own, or (a
        #: regional partition elsewhere) this region's mirror of it.
        self.feed_stream = self.stream
        self._prefix = f"$KV.{keyspace.bucket}."
        self._ready = False
        #: The view being followed: quorum acks (own writes, barriers) prove its freshness.
        self._view: KeyspaceView[StoredEntry] | None = None

    def subject(self, key: str) -> str:
        return self._prefix + key

    def key_of(self, subject: str) -> str:
        return subject[len(self._prefix) :]

    # -- setup ------------------------------------------------------------

    async def ensure(self) -> None:
        """Create the bucket if it does not exist (idempotent)."""
        js = self.conn.jetstream(self.timeout_s)
        try:
            await js.key_value(self.keyspace.bucket)
        except nats.js.errors.BucketNotFoundError:
            config = bucket_config(
                self.keyspace,
                self.keyspace.bucket,
                f"Meridian keyspace {self.keyspace.name}",
                cluster=self.cluster,
                replicas=self.replicas,
            )
            await self._quorum_call("create the bucket", js.add_stream(config))
        self._ready = True

    # -- writes -----------------------------------------------------------

    async def put(
        self, key: str, value: bytes, if_revision: int | None = None
    ) -> tuple[int, HlcTimestamp]:
        """Write ``key``; with ``if_revision``, only at that revision."""
        return await self._write(key, value, if_revision, delete=False)

    async def create(self, key: str, value: bytes) -> tuple[int, HlcTimestamp]:
        """Write ``key`` only if it is absent or deleted."""
        try:
            return await self._write(key, value, 0, delete=False)
        except ConflictError as exc:
            # A deleted key's last message is its delete marker: create over it.
            last = await self._last(key)
            if last is not None and last[1] is None:
                return await self._write(key, value, last[0], delete=False)
            raise exc

    async def delete(self, key: str, if_revision: int | None = None) -> tuple[int, HlcTimestamp]:
        return await self._write(key, b"", if_revision, delete=True)

    async def _write(
        self, key: str, value: bytes, if_revision: int | None, *, delete: bool
    ) -> tuple[int, HlcTimestamp]:
        hlc = self.clock_now()
        headers = {HLC_HEADER: hlc.encode(), REGION_HEADER: self.region}
        if delete:
            headers[KV_OPERATION] = "DEL"
        if if_revision is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(if_revision)
        js = self.conn.jetstream(self.timeout_s)
        asked_at = time.monotonic()
        try:
            ack = await self._quorum_call(
                f"write {self.keyspace.name}/{key}",
                js.publish(self.subject(key), value, timeout=self.timeout_s, headers=headers),
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                winner = await self._committed_winner(key, if_revision or 0)
                applied = await self._our_write_after(key, if_revision or 0, headers)
                if applied:
                    # The refusal was wrong: this very write is the first after the
                    # expected revision (seen by the chaos harness right after a
                    # heal, while JetStream re-elected the stream's leader).
                    log.warning(
                        "%s/%s: CAS was refused with %d but applied at %d",
                        self.keyspace.name,
                        key,
                        exc.err_code,
                        applied,
                    )
                    return applied, hlc
                if winner is None:
                    # No committed write beat this one: the leader refused it for a
                    # write in flight that has not committed (an old leader cut off
                    # from its quorum does that). CONFLICT would claim a winner.
                    raise UnavailableError(
                        f"{self.keyspace.name}/{key}: the write was not applied: the "
                        f"leader refused it for a concurrent write, and no write past "
                        f"revision {if_revision or 0} was committed within "
                        f"{self.timeout_s:g}s; retry"
                    ) from exc
                raise ConflictError(
                    f"{self.keyspace.name}/{key}: expected revision {if_revision}, "
                    f"current revision is {winner}",
                    current_revision=winner,
                ) from exc
            raise
        self._proven(asked_at, int(ack.seq))
        return int(ack.seq), hlc

    async def _committed_winner(self, key: str, expected: int) -> int | None:
        """The revision (0 if deleted) of a committed write of ``key`` past
        ``expected``, or None if none shows within the write timeout.

        The leader may refuse a compare-and-set because a competing write is
        still in flight (error 10164); that write may commit soon, or never (a
        leader cut off from its quorum keeps refusing against proposals it
        cannot commit, and shows them in its reads). So each look is a STRONG
        read, a quorum barrier and then the key through the leader, which sees
        only what a quorum committed; a look the quorum does not answer sees
        nothing.
        """
        deadline = time.monotonic() + self.timeout_s
        while True:
            with contextlib.suppress(QuorumUnavailableError):
                last = await self._last_committed(key)
                if (last[0] if last else 0) != expected:
                    return 0 if last is None or last[1] is None else last[0]
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.01)

    async def _our_write_after(self, key: str, expected: int, headers: dict[str, str]) -> int:
        """The sequence of this write if it is the key's first message after
        ``expected`` (its HLC and region headers are unique to it), else 0."""
        js = self.conn.jetstream(self.timeout_s)
        try:
            msg = await self._quorum_call(
                f"read {self.keyspace.name}/{key}",
                js.get_msg(self.stream, seq=expected + 1, subject=self.subject(key), next=True),
            )
        except (nats.js.errors.NotFoundError, nats.js.errors.APIError):
            return 0
        got = dict(msg.headers or {})
        if got.get(HLC_HEADER) == headers[HLC_HEADER] and got.get(REGION_HEADER) == self.region:
            return int(msg.seq or 0)
        return 0

    async def _current_revision(self, key: str) -> int:
        last = await self._last(key)
        if last is None or last[1] is None:
            return 0
        return last[0]

    # -- reads ------------------------------------------------------------

    async def barrier(self) -> int:
        """Commit a no-op through the quorum; returns its stream sequence. Every write
        acknowledged before this call has a lower sequence (a proof of freshness
        for the followed view, too)."""
        js = self.conn.jetstream(self.timeout_s)
        asked_at = time.monotonic()
        ack = await self._quorum_call(
            "commit the read barrier",
            js.publish(self.subject(BARRIER_KEY), b"", timeout=self.timeout_s),
        )
        self._proven(asked_at, int(ack.seq))
        return int(ack.seq)

    def bounded_read(self) -> None:
        """A BOUNDED read asked how fresh the view is. A global keyspace proves it
        all the time; a regional partition only while such reads come."""

    async def prove_freshness(self) -> None:
        """One freshness proof of the followed view: a barrier."""
        await self.barrier()

    def _proven(self, asked_at: float, seq: int) -> None:
        """A quorum committed ``seq`` for a write invoked at ``asked_at``."""
        if self._view is not None:
            self._view.prove(asked_at, seq)

    async def get_strong(self, key: str) -> StoredEntry | None:
        """Linearizable read: a quorum barrier, then the key through the leader."""
        last = await self._last_committed(key)
        return None if last is None else last[1]

    async def _last_committed(self, key: str) -> tuple[int, StoredEntry | None] | None:
        """The key's last committed message, read as :meth:`get_strong` reads:
        (sequence, entry or None if it is a delete marker), None if absent."""
        await self.barrier()
        return await self._last(key)

    async def _last(self, key: str) -> tuple[int, StoredEntry | None] | None:
        """The key's last message through the stream leader: (seq, entry or None if deleted)."""
        js = self.conn.jetstream(self.timeout_s)
        try:
            msg = await self._quorum_call(
                f"read {self.keyspace.name}/{key}",
                js.get_last_msg(self.stream, self.subject(key), direct=False),
            )
        except nats.js.errors.NotFoundError:
            return None
        except nats.js.errors.APIError as exc:
            if exc.err_code == NO_MESSAGE_FOUND:
                return None
            raise
        headers = dict(msg.headers or {})
        seq = int(msg.seq or 0)
        if _is_delete(headers):
            return seq, None
        return seq, self._entry(key, msg.data or b"", seq, headers)

    def _entry(self, key: str, data: bytes, seq: int, headers: dict[str, str]) -> StoredEntry:
        hlc_text = headers.get(HLC_HEADER, "")
        try:
            hlc = HlcTimestamp.decode(hlc_text).to_int() if hlc_text else 0
        except InvalidArgumentError:
            log.warning("bad %s header on %s seq %d", HLC_HEADER, self.stream, seq)
            hlc = 0
        return StoredEntry(key, data, seq, hlc, headers.get(REGION_HEADER, ""))

    # -- change feed ------------------------------------------------------

    async def follow(
        self,
        view: KeyspaceView[StoredEntry],
        freshness_interval_s: float,
        on_applied: Callable[[int], Awaitable[None]],
    ) -> None:
        """Keep ``view`` current from the change feed and prove its freshness with a
        barrier every ``freshness_interval_s``; after each applied message, await
        ``on_applied(hlc_wall_ms)``. Runs until cancelled."""
        js = self.conn.jetstream(self.timeout_s)
        self._view = view
        async with (
            ordered_feed(
                js,
                f"{self._prefix}>",
                stream=self.feed_stream,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ) as queue,
            asyncio.TaskGroup() as tg,
        ):
            tg.create_task(self._apply(queue, view, on_applied))
            tg.create_task(
                every(
                    freshness_interval_s,
                    self.prove_freshness,
                    in_flight=MAX_BARRIERS_IN_FLIGHT,
                    what=f"freshness barrier of {self.stream}",
                )
            )

    async def _apply(
        self,
        queue: asyncio.Queue[Msg],
        view: KeyspaceView[StoredEntry],
        on_applied: Callable[[int], Awaitable[None]],
    ) -> None:
        while True:
            msg = await queue.get()
            key = self.key_of(msg.subject)
            seq = msg.metadata.sequence.stream
            pending = msg.metadata.num_pending
            if key.startswith(RESERVED_KEY_PREFIX):
                # A barrier: advances the view, stores nothing.
                view.apply(seq, key, None, pending=pending)
                await on_applied(0)
                continue
            headers = dict(msg.headers or {})
            entry = None if _is_delete(headers) else self._entry(key, msg.data, seq, headers)
            view.apply(seq, key, entry, pending=pending)
            await on_applied(HlcTimestamp.from_int(entry.hlc).wall_ms if entry and entry.hlc else 0)

    async def watch(
        self, prefix: str, from_revision: int | None
    ) -> AsyncIterator[tuple[int, str, StoredEntry | None]]:
        """Changes under ``prefix`` as ``(revision, key, entry or None if deleted)``:
        from ``from_revision`` on, or only new ones. Runs until the caller stops."""
        js = self.conn.jetstream(self.timeout_s)
        if from_revision:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_revision
            )
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
        async with ordered_feed(
            js,
            f"{self._prefix}>",
            stream=self.feed_stream,
            config=config,
            max_messages=WATCH_QUEUE_MESSAGES,
        ) as q:
            while True:
                msg = await q.next(f"the watch of {self.feed_stream} {prefix!r}")
                key = self.key_of(msg.subject)
                if key.startswith(RESERVED_KEY_PREFIX) or not key.startswith(prefix):
                    continue
                seq = msg.metadata.sequence.stream
                headers = dict(msg.headers or {})
                entry = None if _is_delete(headers) else self._entry(key, msg.data, seq, headers)
                yield seq, key, entry

    # -- errors -----------------------------------------------------------

    async def _quorum_call(self, what: str, aw: Awaitable[T]) -> T:
        """Await ``aw``; no answer in time, or no leader, is QuorumUnavailableError."""
        with translate_nats_errors(
            f"cannot {what} from {self.region} (the {self.cluster} quorum is needed)",
            unreachable=QuorumUnavailableError,
            timeout=QuorumUnavailableError,
        ):
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that races with completion, which left feeds running after shutdown.
            async with asyncio.timeout(self.timeout_s + 0.5):
                return await aw
        raise AssertionError("unreachable")  # translate_nats_errors re-raises
