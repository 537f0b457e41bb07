"""The audit log on JetStream: entries appended in batches, and checkpoints
signed by one region and cosigned by the others.

Two streams in the stretched ``global`` cluster (R3, one replica per region),
both with ``deny_delete`` and ``deny_purge``, so no client can remove what
was written:

- ``MG_AUDIT``: one message per entry on ``mg.audit.entry``, its data the
  entry's canonical JSON; entry ``i`` of the Merkle tree is stream message
  ``i + 1`` (no deletes, so sequences have no gaps). Each entry carries its
  request id as ``Nats-Msg-Id``, so a retried append is stored once.
- ``MG_AUDIT_CHECKPOINTS``: each agent's signed checkpoints on
  ``mg.audit.checkpoint.<region>`` and its cosignatures of the other regions'
  checkpoints on ``mg.audit.cosign.<region>``, as C2SP signed notes.

Every agent follows ``MG_AUDIT`` from the start and keeps the tree in
memory. With its region's key it signs a checkpoint of the tree whenever it
grew (every ``audit.checkpoint_interval_s``), and it cosigns another region's
checkpoint only once its own tree, built from what it read, has the same
root at that size: one region cannot show a history the others did not see
without its checkpoint going uncosigned (and ``meridian audit verify``
failing).

An admin change writes its entry itself and waits for the quorum's ack
(:meth:`AuditLog.record`): one global write. Denials are queued
(:meth:`AuditLog.record_nowait`) and appended in batches: one writer
publishes a batch without waiting between messages, then waits for the
acks. When the queue is full a denial is dropped, counted and logged: a
flood of denials must not become a flood of quorum writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.aio.msg import Msg
from nats.js import api

from meridian.audit.checkpoint import Checkpoint, SignedCheckpoint, cosign, open_note
from meridian.audit.keys import load_private, load_public
from meridian.audit.merkle import MerkleTree, leaf_hash
from meridian.audit.model import AuditEntry
from meridian.audit.verify import key_name, log_origin, region_verifiers
from meridian.backbone.connection import (
    BackboneConnection,
    ensure_until_done,
    retry_forever,
    translate_nats_errors,
)
from meridian.backbone.feed import ordered_feed
from meridian.backbone.lifecycle import Background
from meridian.config import GLOBAL_CLUSTER
from meridian.core.calls import CALLER
from meridian.core.errors import QuorumUnavailableError, UnavailableError
from meridian.core.hlc import HybridLogicalClock
from meridian.policy import Access

log = logging.getLogger(__name__)

ENTRIES_STREAM = "MG_AUDIT"
ENTRY_SUBJECT = "mg.audit.entry"
CHECKPOINTS_STREAM = "MG_AUDIT_CHECKPOINTS"
CHECKPOINT_PREFIX = "mg.audit.checkpoint"
COSIGN_PREFIX = "mg.audit.cosign"

#: Entries one publish batch holds at most.
BATCH_MAX = 512
#: Entries waiting to be written at most; a denial beyond it is dropped.
QUEUE_MAX = 20_000
#: Attempts of one entry before its caller gets the failure.
ATTEMPTS = 3
#: Longest resource or key an entry keeps (the rest is cut).
MAX_FIELD = 512
#: How long a cosigner waits for its own tree to reach a checkpoint's size.
COSIGN_WAIT_S = 30.0


def stream_configs(replicas: int) -> list[api.StreamConfig]:
    """The two audit streams (see the module docstring)."""

    def config(name: str, description: str, subjects: list[str]) -> api.StreamConfig:
        return api.StreamConfig(
            name=name,
            description=description,
            subjects=subjects,
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            placement=api.Placement(cluster=GLOBAL_CLUSTER),
            duplicate_window=120.0,
            deny_delete=True,
            deny_purge=True,
            allow_rollup_hdrs=False,
        )

    return [
        config(ENTRIES_STREAM, "Meridian audit log entries (append-only)", [ENTRY_SUBJECT]),
        config(
            CHECKPOINTS_STREAM,
            "Meridian audit checkpoints and cosignatures",
            [f"{CHECKPOINT_PREFIX}.*", f"{COSIGN_PREFIX}.*"],
        ),
    ]


@dataclass
class _Pending:
    entry: AuditEntry
    attempts: int = 0
    #: Its stream sequence, once stored.
    seq: int = 0


class AuditLog(Background):
    """The agent's side of the audit log; see the module docstring."""

    name = "audit"

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        trust_domain: str,
        keys_dir: Path | None,
        replicas: int,
        timeout_s: float,
        checkpoint_interval_s: float,
        hlc: HybridLogicalClock,
    ) -> None:
        super().__init__()
        self.conn = conn
        self.hlc = hlc
        self.region = region
        self.trust_domain = trust_domain
        self.origin = log_origin(trust_domain)
        self.replicas = replicas
        self.timeout_s = timeout_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self.key: Ed25519PrivateKey | None = load_private(keys_dir, region) if keys_dir else None
        self.public: dict[str, Ed25519PublicKey] = load_public(keys_dir) if keys_dir else {}
        #: The tree of every entry read so far, in stream order.
        self.tree = MerkleTree()
        #: Denials dropped because the queue was full.
        self.dropped = 0
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(QUEUE_MAX)
        self._streams_ready = False
        self._grown = asyncio.Event()
        self._signed_size = 0

    # -- what the policy decision point records (meridian.policy.AuditTrail) --

    def _entry(
        self, request_id: str, access: Access, decision: str, detail: Mapping[str, str]
    ) -> AuditEntry:
        return AuditEntry(
            request_id=request_id,
            principal=CALLER.get().identity,
            action=access.action,
            resource=access.resource_text[:MAX_FIELD],
            decision=decision,
            region=self.region,
            hlc=self.hlc.now().encode(),
            detail=detail,
        )

    def denied(self, decision_id: str, access: Access) -> None:
        """Queue the denial of ``access`` to the caller being served."""
        try:
            entry = self._entry(decision_id, access, "deny", {"key": access.key[:MAX_FIELD]})
        except ValueError as exc:  # an identity or a name beyond what an entry holds
            log.error("cannot record denial %s: %s", decision_id, exc)
            return
        self.record_nowait(entry)

    async def admin(self, request_id: str, access: Access, detail: Mapping[str, str]) -> None:
        """Record the caller's permitted admin change ``access``; raises what
        :meth:`record` raises."""
        await self.record(self._entry(request_id, access, "permit", detail))

    # -- appending ----------------------------------------------------------

    async def record(self, entry: AuditEntry) -> int:
        """Append ``entry`` and return its stream sequence once a quorum stored
        it. UnavailableError while the streams are not set up; what the append
        failed with after :data:`ATTEMPTS` tries (QUORUM_UNAVAILABLE, say)."""
        if not self._streams_ready:
            raise UnavailableError("the audit log is not ready yet (its streams are being set up)")
        # Not through the batch queue: an admin change waits for its own write,
        # not for the batch of denials in flight ahead of it (which doubled its
        # latency in bench-audit).
        pending = _Pending(entry)
        for _ in range(ATTEMPTS):
            if not await self._write([pending]):
                return pending.seq
            await asyncio.sleep(0.2)
        self._give_up(pending)
        raise QuorumUnavailableError(
            f"cannot append to the audit log from {self.region} (the {GLOBAL_CLUSTER} "
            "quorum is needed)"
        )

    def record_nowait(self, entry: AuditEntry) -> None:
        """Queue ``entry`` without waiting; dropped (counted, logged) if the
        queue is full."""
        try:
            self._queue.put_nowait(_Pending(entry))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("audit queue full: %d entries dropped so far", self.dropped)

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        self.serving()  # records are refused (UNAVAILABLE) until the streams exist
        await ensure_until_done(self.conn, self._ensure, "audit streams")
        self._streams_ready = True
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_forever(), name="audit-writer")
            tg.create_task(
                retry_forever("following the audit log", self._follow), name="audit-follower"
            )
            if self.key is not None:
                tg.create_task(self._checkpoint_forever(), name="audit-checkpoints")
                tg.create_task(
                    retry_forever("cosigning audit checkpoints", self._cosign_all),
                    name="audit-cosigner",
                )

    async def _ensure(self) -> None:
        js = self.conn.jetstream(self.timeout_s)
        for config in stream_configs(self.replicas):
            try:
                await js.stream_info(config.name or "")
            except nats.js.errors.NotFoundError:
                with translate_nats_errors(
                    f"cannot create {config.name}", timeout=QuorumUnavailableError
                ):
                    await js.add_stream(config)

    # -- the writer -----------------------------------------------------------

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            failed = await self._write(batch)
            for p in failed:
                p.attempts += 1
                if p.attempts < ATTEMPTS and not self._queue.full():
                    self._queue.put_nowait(p)  # same Nats-Msg-Id: stored once
                else:
                    self._give_up(p)
            if failed:
                await asyncio.sleep(0.2)

    def _give_up(self, p: _Pending) -> None:
        log.error(
            "audit entry %s not stored: the %s quorum is needed", p.entry.request_id, GLOBAL_CLUSTER
        )

    async def _write(self, batch: list[_Pending]) -> list[_Pending]:
        """Publish ``batch`` pipelined, then wait for the acks; the entries
        that were not stored."""
        js = self.conn.jetstream(self.timeout_s)
        sent: list[tuple[_Pending, asyncio.Future[api.PubAck]]] = []
        failed: list[_Pending] = []
        for p in batch:
            try:
                ack = await js.publish_async(
                    ENTRY_SUBJECT,
                    p.entry.canonical(),
                    headers={"Nats-Msg-Id": p.entry.request_id},
                )
                sent.append((p, ack))
            except (nats.errors.Error, OSError) as exc:
                log.debug("audit publish: %s", exc)
                failed.append(p)
        for p, ack in sent:
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await ack
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                log.debug("audit ack: %s", exc)
                failed.append(p)
                continue
            p.seq = int(result.seq)
        return failed

    # -- the tree ---------------------------------------------------------------

    async def _follow(self) -> None:
        js = self.conn.jetstream(self.timeout_s)
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.tree.size + 1,
        )
        async with ordered_feed(js, ENTRY_SUBJECT, stream=ENTRIES_STREAM, config=config) as q:
            while True:
                msg = await q.next("the audit log")
                self._apply(msg)

    def _apply(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq != self.tree.size + 1:
            # Sequences have no gaps (deny_delete); a gap means this agent missed
            # messages, and the feed is made again from where the tree ends.
            raise UnavailableError(f"audit log: expected entry {self.tree.size + 1}, got {seq}")
        self.tree.append(leaf_hash(msg.data))
        self._grown.set()

    # -- checkpoints --------------------------------------------------------------

    def _name(self, region: str) -> str:
        return key_name(region, self.trust_domain)

    async def _checkpoint_forever(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            size = self.tree.size
            if size > self._signed_size:
                try:
                    await self._sign(size)
                except (nats.errors.Error, TimeoutError, UnavailableError) as exc:
                    log.warning("cannot publish an audit checkpoint: %s", exc)

    async def _sign(self, size: int) -> None:
        assert self.key is not None
        checkpoint = Checkpoint(self.origin, size, self.tree.root_at(size))
        note = SignedCheckpoint.sign(checkpoint, self._name(self.region), self.key).format()
        js = self.conn.jetstream(self.timeout_s)
        with translate_nats_errors("cannot publish an audit checkpoint"):
            await js.publish(f"{CHECKPOINT_PREFIX}.{self.region}", note, timeout=self.timeout_s)
        self._signed_size = size

    async def _cosign_all(self) -> None:
        js = self.conn.jetstream(self.timeout_s)
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
        async with ordered_feed(
            js, f"{CHECKPOINT_PREFIX}.*", stream=CHECKPOINTS_STREAM, config=config
        ) as q:
            while True:
                msg = await q.next("audit checkpoints")
                signer = msg.subject.rsplit(".", 1)[-1]
                if signer != self.region:
                    await self._cosign(signer, msg.data)

    async def _cosign(self, signer: str, note: bytes) -> None:
        """Cosign ``signer``'s checkpoint if it verifies and our tree agrees."""
        public = self.public.get(signer)
        if public is None:
            log.warning("audit checkpoint from %s: no public key for that region", signer)
            return
        required = region_verifiers(signer, self.trust_domain, public).signer
        try:
            opened = open_note(note, {required.ref: required}, required=required)
        except ValueError as exc:
            log.error("audit checkpoint from %s does not verify: %s", signer, exc)
            return
        cp = opened.checkpoint
        if cp.origin != self.origin:
            log.error("audit checkpoint from %s is for origin %r", signer, cp.origin)
            return
        deadline = time.monotonic() + COSIGN_WAIT_S
        while self.tree.size < cp.size and time.monotonic() < deadline:
            self._grown.clear()
            try:
                async with asyncio.timeout(1.0):
                    await self._grown.wait()
            except TimeoutError:
                pass
        if self.tree.size < cp.size:
            log.warning("audit checkpoint from %s of size %d: not read that far", signer, cp.size)
            return
        ours = self.tree.root_at(cp.size)
        if ours != cp.root_hash:
            log.error(
                "audit checkpoint from %s of size %d has root %s, but this region read %s: "
                "a fork; not cosigned",
                signer,
                cp.size,
                cp.root_hash.hex(),
                ours.hex(),
            )
            return
        assert self.key is not None
        sig = cosign(cp, self._name(self.region), self.key, int(time.time()))
        cosigned = SignedCheckpoint(cp, (sig,)).format()
        js = self.conn.jetstream(self.timeout_s)
        with translate_nats_errors("cannot publish an audit cosignature"):
            await js.publish(
                f"{COSIGN_PREFIX}.{self.region}",
                cosigned,
                timeout=self.timeout_s,
                headers={
                    "Nats-Msg-Id": f"cosign-{self.region}-"
                    + hashlib.sha256(cp.body()).hexdigest()[:32]
                },
            )
