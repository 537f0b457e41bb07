"""The agent's idempotency store: Begin, Complete and Abort on a KV bucket (DESIGN §4).

Records live in a JetStream KV bucket, ``mg__idempotency`` in the stretched
``global`` cluster by default (``idempotency.storage = "regional"``: one per
region, ``mg__idempotency_<region>``, in that region's cluster). The bucket's
``max_age`` is the retention, so JetStream itself forgets expired keys.

Every step is one compare-and-set on the key's storage revision, so two
callers in two regions can't both win:

- Begin first tries to create the record (the common case: one quorum write).
  If the key exists it reads the record through the leader and
  :func:`~meridian.idempotency.model.judge` decides: replay the stored
  response, report the live lease, report a mismatch, or take over an expired
  lease with a compare-and-set at the record's revision.
- The fencing token is the storage revision of the record that granted the
  lease; Complete and Abort are compare-and-sets at exactly that revision, so
  a holder whose lease was taken over gets FENCED.

The agent remembers the leases it granted (bounded), so a Complete needs no
read first; a Complete that reaches another region's agent reads the record
through the leader.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from meridian.backbone.connection import (
    BackboneConnection,
    ensure_until_done,
)
from meridian.backbone.lifecycle import Background
from meridian.config import GLOBAL_CLUSTER, IdempotencyConfig
from meridian.core.errors import ConflictError, FencedError, UnavailableError
from meridian.core.hlc import Clock, HlcTimestamp, HybridLogicalClock
from meridian.core.keyspace import Keyspace
from meridian.core.residency import refuse
from meridian.idempotency.model import (
    MAX_RECORD_BYTES,
    IdempotencyRecord,
    RecordState,
    StoredResponse,
    Verdict,
    judge,
    storage_key,
)
from meridian.observability.metrics import AgentMetrics
from meridian.state import GlobalKeyspaceStore

log = logging.getLogger(__name__)

#: Begin re-reads at most this often when records change under it.
MAX_ATTEMPTS = 8
#: Leases this agent granted and remembers, so Complete can skip a read.
GRANTED_CACHE = 100_000


@dataclass(frozen=True)
class BeginResult:
    verdict: Verdict
    fingerprint: str
    token: int = 0
    lease_expires_ms: int = 0
    response: StoredResponse | None = None
    took_over: bool = False
    expires_ms: int = 0


@dataclass(frozen=True)
class _Grant:
    fingerprint: str
    created_ms: int


class IdempotencyComponent(Background):
    """Agent component owning the idempotency bucket; serves once the bucket exists."""

    name = "idempotency"

    def __init__(
        self,
        conn: BackboneConnection,
        config: IdempotencyConfig,
        *,
        region: str,
        global_replicas: int,
        regional_replicas: int,
        timeout_s: float,
        hlc: HybridLogicalClock,
        clock: Clock,
        metrics: AgentMetrics,
    ) -> None:
        super().__init__()
        self.config = config
        self.clock = clock
        self.region = region
        self.hlc = hlc
        self.metrics = metrics
        regional = config.storage == "regional"
        self.keyspace = Keyspace(
            f"_idempotency_{region}" if regional else "_idempotency",
            value_max_bytes=MAX_RECORD_BYTES,
            history=1,
            ttl_s=config.retention_s,
        )
        self.store = GlobalKeyspaceStore(
            conn,
            self.keyspace,
            region=region,
            replicas=regional_replicas if regional else global_replicas,
            timeout_s=timeout_s,
            clock_now=hlc.now,
            cluster=region if regional else GLOBAL_CLUSTER,
        )
        #: Resident scopes' records: one bucket per home (the first region of a
        #: scope's residency), in that region's cluster, shared by every allowed
        #: region, so exactly-once holds across them and nothing is stored elsewhere.
        self.resident: dict[str, GlobalKeyspaceStore] = {}
        for scope in config.scopes:
            home = scope.residency[0]
            if home not in self.resident:
                self.resident[home] = GlobalKeyspaceStore(
                    conn,
                    Keyspace(
                        f"_idempotency_r_{home}",
                        value_max_bytes=MAX_RECORD_BYTES,
                        history=1,
                        ttl_s=config.retention_s,
                    ),
                    region=region,
                    replicas=regional_replicas,
                    timeout_s=timeout_s,
                    clock_now=hlc.now,
                    cluster=home,
                )
        self._granted: OrderedDict[tuple[str, int], _Grant] = OrderedDict()

    # -- lifecycle --------------------------------------------------------

    async def run(self) -> None:
        await ensure_until_done(self.store.conn, self.store.ensure, "idempotency bucket")
        for home, store in self.resident.items():
            await ensure_until_done(store.conn, store.ensure, f"idempotency bucket of {home}")
        self.serving()
        log.info("idempotency store ready", extra={"storage": self.config.storage})

    def _require_ready(self) -> None:
        if not self.ready:
            raise UnavailableError(
                "the idempotency store is not ready yet in this region (its bucket is being set up)"
            )

    def _bucket(self, scope: str) -> GlobalKeyspaceStore:
        """Where ``scope``'s records live; RESIDENCY_VIOLATION for a resident
        scope called in a region outside its residency (nothing is stored)."""
        self._require_ready()
        declared = self.config.scope_residency(scope)
        if declared is None:
            return self.store
        if not declared.allowed(self.region):
            raise refuse(f"idempotency scope {scope!r}", self.region, declared.residency)
        return self.resident[declared.residency[0]]

    # -- the calls --------------------------------------------------------

    def _now_ms(self) -> int:
        return self.clock.now_ms()

    async def begin(
        self, scope: str, key: str, fingerprint: str, lease_ms: int, *, owner: str = ""
    ) -> BeginResult:
        """``owner``: the caller's identity; its keys are its own (storage_key)."""
        store = self._bucket(scope)
        skey = storage_key(scope, key, owner)
        for _ in range(MAX_ATTEMPTS):
            now = self._now_ms()
            claim = IdempotencyRecord(
                scope=scope,
                key=key,
                fingerprint=fingerprint,
                state=RecordState.IN_PROGRESS,
                created_ms=now,
                lease_expires_ms=now + lease_ms,
            )
            try:
                token, _ = await store.create(skey, claim.encode())
                return self._granted_result(skey, claim, token, took_over=False)
            except ConflictError:
                pass
            entry = await store.get_strong(skey)
            if entry is None:
                continue  # aborted or expired between the two steps: claim again
            record = IdempotencyRecord.decode(entry.value)
            verdict = judge(record, fingerprint, self._now_ms())
            if verdict is Verdict.EXPIRED:
                takeover = IdempotencyRecord(
                    scope=scope,
                    key=key,
                    fingerprint=fingerprint,
                    state=RecordState.IN_PROGRESS,
                    created_ms=record.created_ms,
                    lease_expires_ms=self._now_ms() + lease_ms,
                )
                try:
                    token, _ = await store.put(skey, takeover.encode(), entry.revision)
                except ConflictError:
                    continue  # someone else took it over first: look again
                return self._granted_result(skey, takeover, token, took_over=True)
            self._count(verdict)
            if verdict is Verdict.COMPLETED:
                return BeginResult(
                    verdict,
                    record.fingerprint,
                    response=record.response,
                    expires_ms=self._expires_ms(entry.hlc),
                )
            if verdict is Verdict.IN_PROGRESS:
                return BeginResult(
                    verdict, record.fingerprint, lease_expires_ms=record.lease_expires_ms
                )
            return BeginResult(verdict, record.fingerprint)
        raise UnavailableError(
            f"idempotency key {key!r} changed {MAX_ATTEMPTS} times while Begin looked at it; retry"
        )

    async def complete(
        self, scope: str, key: str, token: int, response: StoredResponse, *, owner: str = ""
    ) -> int:
        """Store ``response``; returns when the record will be forgotten (epoch ms)."""
        store = self._bucket(scope)
        skey = storage_key(scope, key, owner)
        grant: _Grant | int | None = self._granted.pop((skey, token), None)
        if grant is None:
            grant = await self._grant_from_storage(store, skey, key, token)
        if isinstance(grant, int):
            return grant  # already completed with this token
        done = IdempotencyRecord(
            scope=scope,
            key=key,
            fingerprint=grant.fingerprint,
            state=RecordState.COMPLETED,
            created_ms=grant.created_ms,
            completed_token=token,
            response=response,
        )
        try:
            _, hlc = await store.put(skey, done.encode(), token)
        except ConflictError:
            result = await self._grant_from_storage(store, skey, key, token)
            if isinstance(result, int):
                return result  # a retried Complete whose first try did land
            raise self._fenced(key, token) from None
        self.metrics.idempotency.labels(self.region, "stored").inc()
        return self._expires_ms(hlc.to_int())

    async def abort(self, scope: str, key: str, token: int, *, owner: str = "") -> None:
        store = self._bucket(scope)
        skey = storage_key(scope, key, owner)
        self._granted.pop((skey, token), None)
        try:
            await store.delete(skey, token)
        except ConflictError:
            raise self._fenced(key, token) from None
        self.metrics.idempotency.labels(self.region, "aborted").inc()

    # -- helpers ----------------------------------------------------------

    def _granted_result(
        self, skey: str, record: IdempotencyRecord, token: int, *, took_over: bool
    ) -> BeginResult:
        self._granted[(skey, token)] = _Grant(record.fingerprint, record.created_ms)
        while len(self._granted) > GRANTED_CACHE:
            self._granted.popitem(last=False)
        self.metrics.idempotency.labels(self.region, "took_over" if took_over else "new").inc()
        return BeginResult(
            Verdict.NEW,
            record.fingerprint,
            token=token,
            lease_expires_ms=record.lease_expires_ms,
            took_over=took_over,
        )

    async def _grant_from_storage(
        self, store: GlobalKeyspaceStore, skey: str, key: str, token: int
    ) -> _Grant | int:
        """The grant behind ``token`` as storage holds it, or, if ``token`` already
        completed the record, when that record expires. Anything else is FENCED."""
        entry = await store.get_strong(skey)
        if entry is None:
            raise self._fenced(key, token)
        record = IdempotencyRecord.decode(entry.value)
        if record.state is RecordState.COMPLETED and record.completed_token == token:
            return self._expires_ms(entry.hlc)
        if record.state is RecordState.IN_PROGRESS and entry.revision == token:
            return _Grant(record.fingerprint, record.created_ms)
        raise self._fenced(key, token)

    def _fenced(self, key: str, token: int) -> FencedError:
        self.metrics.idempotency.labels(self.region, "fenced").inc()
        return FencedError(
            f"fencing token {token} no longer holds idempotency key {key!r}: its lease "
            "expired and another caller took over, or it was completed or aborted"
        )

    def _expires_ms(self, hlc: int) -> int:
        written_ms = HlcTimestamp.from_int(hlc).wall_ms if hlc else self._now_ms()
        return written_ms + int(self.config.retention_s * 1000)

    def _count(self, verdict: Verdict) -> None:
        self.metrics.idempotency.labels(self.region, verdict.value).inc()
