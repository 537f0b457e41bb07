"""The State API, once, for both transports: proto in, proto out.

Validation happens before anything touches NATS, so a bad request writes
nothing. Each call is routed by the keyspace's locality.

``global`` reads are served at the requested consistency:

- STRONG (the default): through the keyspace's leader, after a quorum barrier;
- BOUNDED(max): from the agent's view if it is provably at most ``max`` stale,
  else as STRONG;
- EVENTUAL: from the view (as STRONG if the view never synced).

``replicated`` reads come from the merged view: EVENTUAL (the default) or
BOUNDED, which fails with UNAVAILABLE when the view can't prove the bound
(say, a region cut off). The response always says what was served and how
stale it may be: a true upper bound, proven as :mod:`meridian.state.model.view`
describes (for an EVENTUAL read that nothing has proven yet, the largest
Duration).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from meridian._pb.meridian.v1 import state_pb2
from meridian.core.batch import batch_violations, indexed
from meridian.core.calls import CALLER
from meridian.core.errors import (
    ClockSkewError,
    FieldViolation,
    InvalidArgumentError,
    MeridianError,
    NotFoundError,
    UnavailableError,
)
from meridian.core.hlc import HlcTimestamp, HybridLogicalClock, SkewMonitor
from meridian.core.keyspace import (
    ConflictPolicy,
    Consistency,
    Keyspace,
    ReadLevel,
    check,
    key_prefix_violations,
    key_violations,
    value_violations,
)
from meridian.core.quota import StreamQuota
from meridian.core.residency import refuse
from meridian.observability.metrics import AgentMetrics
from meridian.state.model import replicated as rep
from meridian.state.model.regional import PARTITION, partition_violations
from meridian.state.model.view import StoredEntry
from meridian.state.regional_replica import RegionalReplica
from meridian.state.replicas import GlobalReplica, ReplicatedReplica
from meridian.state.wire import (
    LEVEL_ORDER,
    UNBOUNDED_S,
    WIRE,
    consistency_from_proto,
    duration,
    item_error,
    merged_entry_pb,
    page_after,
    set_elements,
    stored_entry,
)

DEFAULT_SCAN_LIMIT = 100
MAX_SCAN_LIMIT = 1000
MAX_DELTA = 2**53 - 1

Replica = GlobalReplica | ReplicatedReplica | RegionalReplica
#: A replica that serves keys itself (a regional keyspace's is its key's partition).
Resolved = GlobalReplica | ReplicatedReplica


class StateApi:
    """The StateService over the declared keyspaces."""

    def __init__(
        self,
        region: str,
        replicas: Mapping[str, Replica],
        *,
        hlc: HybridLogicalClock,
        skew: SkewMonitor,
        metrics: AgentMetrics,
        strong_timeout_s: float,
        stream_quota: StreamQuota | None = None,
        refused: Mapping[str, Keyspace] | None = None,
    ) -> None:
        """``stream_quota``: the agent's per-identity cap on watches and subscriptions;
        ``refused``: declared keyspaces this region may not hold (residency)."""
        self.stream_quota = stream_quota or StreamQuota()
        self.region = region
        self.replicas = replicas
        self.refused = dict(refused or {})
        self.hlc = hlc
        self.skew = skew
        self.metrics = metrics
        self.strong_timeout_s = strong_timeout_s
        self._served: dict[tuple[str, ReadLevel, ReadLevel], Any] = {}

    # -- routing and validation ----------------------------------------------

    def _replica(self, keyspace: str, *, forwardable: bool = False) -> Replica:
        """The keyspace's replica; RESIDENCY_VIOLATION if this region may not
        serve the call (``forwardable``: a regional keyspace may forward it)."""
        if keyspace in self.refused:
            raise refuse(f"keyspace {keyspace!r}", self.region, self.refused[keyspace].residency)
        replica = self.replicas.get(keyspace)
        if isinstance(replica, RegionalReplica):
            replica.require_served(forwardable=forwardable)
        if replica is None:
            known = ", ".join(sorted(self.replicas)) or "none"
            raise InvalidArgumentError(
                FieldViolation(
                    "keyspace", f"unknown keyspace {keyspace[:80]!r}; declared keyspaces: {known}"
                )
            )
        replica.require_ready()
        return replica

    def _clock_ok(self) -> None:
        """Writes stamp an HLC: refuse them while this agent's clock is off its peers."""
        why = self.skew.check()
        if why:
            raise ClockSkewError(f"{self.region} refuses writes that need the clock: {why}")

    def _writable(self, keyspace: str, key: str, value: bytes | None = None) -> Replica:
        replica = self._checked(keyspace, key, value)
        self._clock_ok()
        return replica

    def _checked(self, keyspace: str, key: str, value: bytes | None = None) -> Replica:
        """The keyspace's replica, once the key (and value) follow its rules;
        point reads and writes are what a regional keyspace may forward."""
        replica = self._replica(keyspace, forwardable=True)
        violations = key_violations(key, replica.keyspace.key_max_bytes)
        if isinstance(replica, RegionalReplica) and not violations:
            violations += partition_violations(key)
        if value is not None:
            violations += value_violations(value, replica.keyspace.value_max_bytes)
        check(violations)
        return replica

    @staticmethod
    async def _partition(replica: Replica, key: str, *, create: bool = False) -> Resolved:
        """A regional keyspace's partition of ``key`` (made on a first write);
        any other keyspace's replica as it is. NOT_FOUND for a read of a
        partition nothing was ever written to."""
        if not isinstance(replica, RegionalReplica):
            return replica
        part = await replica.partition(key, create=create)
        if part is None:
            raise NotFoundError(f"{replica.keyspace.name}/{key} does not exist")
        return part

    def _count(self, keyspace: str, want: ReadLevel, served: ReadLevel, n: int = 1) -> None:
        key = (keyspace, want, served)
        counter = self._served.get(key)
        if counter is None:  # the metric child, looked up once per combination
            counter = self.metrics.state_served.labels(
                self.region, keyspace, want.value, served.value
            )
            self._served[key] = counter
        counter.inc(n)

    # -- reads -----------------------------------------------------------------

    async def get(self, request: state_pb2.GetRequest) -> state_pb2.GetResponse:
        replica = await self._partition(self._checked(request.keyspace, request.key), request.key)
        served, staleness = self._serving(
            replica, request.consistency, request.HasField("consistency")
        )
        return await self._read(replica, request.key, served, staleness)

    async def get_many(self, request: state_pb2.GetManyRequest) -> state_pb2.GetManyResponse:
        """GetMany: every key checked first, the consistency decided once, then each
        key read as Get reads it; a key's NOT_FOUND (or other error) is its own."""
        keys = list(request.keys)
        check(batch_violations("keys", len(keys), 0, item="item", data="values"))
        replica = self._replica(request.keyspace, forwardable=True)
        limit = replica.keyspace.key_max_bytes
        regional = isinstance(replica, RegionalReplica)
        check(
            [
                FieldViolation(f"keys[{i}]", v.rule)
                for i, key in enumerate(keys)
                for v in key_violations(key, limit)
                or (partition_violations(key) if regional else [])
            ]
        )
        if isinstance(replica, RegionalReplica):
            return await self._get_many_regional(replica, request, keys)
        served, staleness = self._serving(
            replica, request.consistency, request.HasField("consistency"), n=len(keys)
        )

        async def one(key: str) -> state_pb2.GetManyResult:
            try:
                return state_pb2.GetManyResult(
                    response=await self._read(replica, key, served, staleness)
                )
            except MeridianError as exc:
                return state_pb2.GetManyResult(error=item_error(exc))

        if served is ReadLevel.STRONG:  # each through the leader: all at once
            results = await asyncio.gather(*(one(key) for key in keys))
        else:  # from the view: nothing to wait for
            results = [await one(key) for key in keys]
        return state_pb2.GetManyResponse(results=results)

    async def _get_many_regional(
        self, replica: RegionalReplica, request: state_pb2.GetManyRequest, keys: list[str]
    ) -> state_pb2.GetManyResponse:
        """GetMany of a regional keyspace: each key in its own partition, as Get reads it."""

        async def one(key: str) -> state_pb2.GetManyResult:
            try:
                part = await self._partition(replica, key)
                served, staleness = self._serving(
                    part, request.consistency, request.HasField("consistency")
                )
                return state_pb2.GetManyResult(
                    response=await self._read(part, key, served, staleness)
                )
            except MeridianError as exc:
                return state_pb2.GetManyResult(error=item_error(exc))

        return state_pb2.GetManyResponse(results=await asyncio.gather(*(one(k) for k in keys)))

    def _serving(
        self,
        replica: Resolved,
        consistency: state_pb2.Consistency,
        present: bool,
        *,
        n: int = 1,
    ) -> tuple[ReadLevel, float]:
        """What a read of ``replica`` is served at, and how stale it may be; counted ``n`` times."""
        keyspace = replica.keyspace.name
        if isinstance(replica, ReplicatedReplica):
            want = consistency_from_proto(consistency, present, ReadLevel.EVENTUAL)
            staleness = self._replicated_staleness(replica, want)
            self._count(keyspace, want.level, want.level, n)
            return want.level, staleness
        want = consistency_from_proto(consistency, present, ReadLevel.STRONG)
        served, staleness = self._global_serving(replica, want)
        self._count(keyspace, want.level, served, n)
        return served, staleness

    async def _read(
        self, replica: Resolved, key: str, served: ReadLevel, staleness: float
    ) -> state_pb2.GetResponse:
        if isinstance(replica, ReplicatedReplica):
            entry = replica.view.get(key)
            if entry is None or not rep.exists(entry.state):
                raise NotFoundError(f"{replica.keyspace.name}/{key} does not exist")
            return state_pb2.GetResponse(
                entry=merged_entry_pb(entry),
                served=WIRE[served],
                staleness_bound=duration(staleness),
            )
        if served is ReadLevel.STRONG:
            found = await replica.store.get_strong(key)
        else:
            found = replica.view.get(key)
        if found is None:
            raise NotFoundError(f"{replica.keyspace.name}/{key} does not exist")
        return state_pb2.GetResponse(
            entry=stored_entry(found), served=WIRE[served], staleness_bound=duration(staleness)
        )

    def _global_serving(self, replica: GlobalReplica, want: Consistency) -> tuple[ReadLevel, float]:
        if want.level is ReadLevel.STRONG:
            return ReadLevel.STRONG, 0.0
        if want.level is ReadLevel.BOUNDED:
            replica.store.bounded_read()
        staleness = replica.staleness(time.monotonic())
        if staleness is None:
            return ReadLevel.STRONG, 0.0
        if want.level is ReadLevel.BOUNDED and staleness > want.max_staleness_s:
            return ReadLevel.STRONG, 0.0
        return want.level, staleness

    def _replicated_staleness(self, replica: ReplicatedReplica, want: Consistency) -> float:
        if want.level is ReadLevel.STRONG:
            raise InvalidArgumentError(
                FieldViolation(
                    "consistency.level",
                    f"{replica.keyspace.name!r} is replicated: reads are BOUNDED or EVENTUAL",
                )
            )
        staleness, why = replica.store.staleness(replica.view, time.monotonic())
        if want.level is ReadLevel.BOUNDED and (
            staleness is None or staleness > want.max_staleness_s
        ):
            raise UnavailableError(
                f"cannot serve {replica.keyspace.name} within {want.max_staleness_s:g}s of "
                f"staleness from {self.region}: {why}"
            )
        # EVENTUAL with no proof from some region: no bound is known, and zero
        # would be a lie; the largest Duration says "unbounded" to every SDK.
        return UNBOUNDED_S if staleness is None else staleness

    async def scan(self, request: state_pb2.ScanRequest) -> state_pb2.ScanResponse:
        replica = self._replica(request.keyspace)
        violations = key_prefix_violations(request.prefix, replica.keyspace.key_max_bytes)
        limit = request.limit or DEFAULT_SCAN_LIMIT
        if limit > MAX_SCAN_LIMIT:
            violations.append(FieldViolation("limit", f"must be at most {MAX_SCAN_LIMIT}"))
        after = page_after(request, replica.keyspace.key_max_bytes, violations)
        check(violations)
        present = request.HasField("consistency")
        if isinstance(replica, ReplicatedReplica):
            want = consistency_from_proto(request.consistency, present, ReadLevel.EVENTUAL)
            staleness = self._replicated_staleness(replica, want)
            served = want.level
            found = [
                e
                for e in replica.view.scan(request.prefix, after, limit + 1)
                if rep.exists(e.state)
            ]
            entries = [merged_entry_pb(e) for e in found]
        elif isinstance(replica, RegionalReplica):
            want = consistency_from_proto(request.consistency, present, ReadLevel.EVENTUAL)
            served, staleness = ReadLevel.STRONG, 0.0
            keys: list[StoredEntry] = []
            for part in replica.matching(request.prefix):
                level, bound = await self._global_scan_ready(part, want)
                served, staleness = min(served, level, key=LEVEL_ORDER), max(staleness, bound)
                keys += part.view.scan(request.prefix, after, limit + 1)
            keys.sort(key=lambda e: e.key)
            entries = [stored_entry(e) for e in keys[: limit + 1]]
        else:
            want = consistency_from_proto(request.consistency, present, ReadLevel.EVENTUAL)
            served, staleness = await self._global_scan_ready(replica, want)
            entries = [stored_entry(e) for e in replica.view.scan(request.prefix, after, limit + 1)]
        self._count(request.keyspace, want.level, served)
        token = ""
        if len(entries) > limit:
            entries = entries[:limit]
            token = base64.urlsafe_b64encode(entries[-1].key.encode()).decode("ascii")
        return state_pb2.ScanResponse(
            entries=entries,
            next_page_token=token,
            served=WIRE[served],
            staleness_bound=duration(staleness),
        )

    async def _global_scan_ready(
        self, replica: GlobalReplica, want: Consistency
    ) -> tuple[ReadLevel, float]:
        """What a scan of a global view is served at; for STRONG, waits until
        the view holds every write acknowledged before a quorum barrier."""
        served, staleness = self._global_serving(replica, want)
        if served is ReadLevel.STRONG:
            seq = await replica.store.barrier()
            await replica.wait_applied(seq, self.strong_timeout_s)
        return served, staleness

    async def watch(self, request: state_pb2.WatchRequest) -> AsyncIterator[state_pb2.WatchEvent]:
        """Validate, then return the stream of changes (errors raise before streaming)."""
        replica = self._replica(request.keyspace)
        check(key_prefix_violations(request.prefix, replica.keyspace.key_max_bytes))
        start = request.from_revision if request.HasField("from_revision") else None
        put, deleted = state_pb2.WatchEvent.KIND_PUT, state_pb2.WatchEvent.KIND_DELETE
        if isinstance(replica, ReplicatedReplica):
            merged_events = replica.store.watch(request.prefix, start)

            async def merged_stream() -> AsyncIterator[state_pb2.WatchEvent]:
                async for e in merged_events:
                    kind = put if rep.exists(e.state) else deleted
                    yield state_pb2.WatchEvent(kind=kind, entry=merged_entry_pb(e))

            return self.stream_quota.guard(CALLER.get().identity, "watch", merged_stream())
        if isinstance(replica, RegionalReplica):
            if "." not in request.prefix:
                raise InvalidArgumentError(
                    FieldViolation(
                        "prefix",
                        "a watch of a regional keyspace follows one partition: start the "
                        "prefix with '<partition>.'",
                    )
                )
            replica = await self._partition(replica, request.prefix, create=True)
            assert isinstance(replica, GlobalReplica)
        changes = replica.store.watch(request.prefix, start)

        async def stored_stream() -> AsyncIterator[state_pb2.WatchEvent]:
            async for seq, key, entry in changes:
                if entry is None:
                    yield state_pb2.WatchEvent(
                        kind=deleted, entry=state_pb2.Entry(key=key, revision=seq)
                    )
                else:
                    yield state_pb2.WatchEvent(kind=put, entry=stored_entry(entry))

        return self.stream_quota.guard(CALLER.get().identity, "watch", stored_stream())

    # -- writes ----------------------------------------------------------------

    async def put(self, request: state_pb2.PutRequest) -> state_pb2.WriteResponse:
        replica = self._put_checked(request)
        self._clock_ok()
        return await self._put(replica, request)

    async def put_many(self, request: state_pb2.PutManyRequest) -> state_pb2.PutManyResponse:
        """PutMany: every Put checked first (nothing written if one is bad), the
        clock once, then all written at once, each with its own result."""
        puts = list(request.puts)
        check(
            batch_violations(
                "puts", len(puts), sum(len(p.value) for p in puts), item="item", data="values"
            )
        )
        replicas: list[Replica] = []
        violations: list[FieldViolation] = []
        for i, put in enumerate(puts):
            try:
                replicas.append(self._put_checked(put))
            except InvalidArgumentError as exc:
                violations += indexed("puts", i, exc.violations)
        check(violations)
        self._clock_ok()

        async def one(replica: Replica, put: state_pb2.PutRequest) -> state_pb2.PutManyResult:
            try:
                return state_pb2.PutManyResult(written=await self._put(replica, put))
            except MeridianError as exc:
                return state_pb2.PutManyResult(error=item_error(exc))

        results = await asyncio.gather(*(one(r, p) for r, p in zip(replicas, puts, strict=True)))
        return state_pb2.PutManyResponse(results=results)

    def _put_checked(self, request: state_pb2.PutRequest) -> Replica:
        """Everything about a Put that can be checked without writing."""
        replica = self._checked(request.keyspace, request.key, request.value)
        if isinstance(replica, ReplicatedReplica):
            if request.HasField("if_revision"):
                raise InvalidArgumentError(
                    FieldViolation(
                        "if_revision",
                        "compare-and-set needs a global keyspace; replicated ones merge writes",
                    )
                )
        elif request.supersedes:
            raise InvalidArgumentError(
                FieldViolation("supersedes", "only multi_value keyspaces have siblings")
            )
        return replica

    async def _put(
        self, replica: Replica, request: state_pb2.PutRequest
    ) -> state_pb2.WriteResponse:
        if isinstance(replica, ReplicatedReplica):
            policy = replica.keyspace.conflict
            supersedes = list(request.supersedes)
            value = request.value
            return await self._mutate(
                replica,
                request.key,
                lambda state, hlc: rep.put(policy, state, value, hlc, self.region, supersedes),
            )
        part = await self._partition(replica, request.key, create=True)
        assert isinstance(part, GlobalReplica)
        if_revision = request.if_revision if request.HasField("if_revision") else None
        revision, hlc = await part.store.put(request.key, request.value, if_revision)
        return state_pb2.WriteResponse(revision=revision, hlc=hlc.to_int())

    async def create(self, request: state_pb2.CreateRequest) -> state_pb2.WriteResponse:
        replica = await self._partition(
            self._writable(request.keyspace, request.key, request.value), request.key, create=True
        )
        if isinstance(replica, ReplicatedReplica):
            raise InvalidArgumentError(
                FieldViolation("keyspace", "Create (write only if absent) needs a global keyspace")
            )
        revision, hlc = await replica.store.create(request.key, request.value)
        return state_pb2.WriteResponse(revision=revision, hlc=hlc.to_int())

    async def delete(self, request: state_pb2.DeleteRequest) -> state_pb2.WriteResponse:
        replica = await self._partition(
            self._writable(request.keyspace, request.key), request.key, create=True
        )
        if isinstance(replica, ReplicatedReplica):
            if request.HasField("if_revision"):
                raise InvalidArgumentError(
                    FieldViolation("if_revision", "conditional delete needs a global keyspace")
                )
            policy = replica.keyspace.conflict
            return await self._mutate(
                replica,
                request.key,
                lambda state, hlc: rep.delete(policy, state, hlc, self.region),
            )
        if_revision = request.if_revision if request.HasField("if_revision") else None
        revision, hlc = await replica.store.delete(request.key, if_revision)
        return state_pb2.WriteResponse(revision=revision, hlc=hlc.to_int())

    async def increment(self, request: state_pb2.IncrementRequest) -> state_pb2.WriteResponse:
        replica = self._typed(request.keyspace, request.key, ConflictPolicy.COUNTER, "Increment")
        if abs(request.delta) > MAX_DELTA:
            raise InvalidArgumentError(FieldViolation("delta", f"must be within ±{MAX_DELTA}"))
        delta = request.delta
        return await self._mutate(
            replica,
            request.key,
            lambda state, _hlc: rep.increment(ConflictPolicy.COUNTER, state, self.region, delta),
        )

    async def set_add(self, request: state_pb2.SetRequest) -> state_pb2.WriteResponse:
        replica = self._typed(request.keyspace, request.key, ConflictPolicy.SET, "SetAdd")
        elements = set_elements(request, replica.keyspace.key_max_bytes)
        return await self._mutate(
            replica,
            request.key,
            lambda state, hlc: rep.set_add(ConflictPolicy.SET, state, elements, hlc, self.region),
        )

    async def set_remove(self, request: state_pb2.SetRequest) -> state_pb2.WriteResponse:
        replica = self._typed(request.keyspace, request.key, ConflictPolicy.SET, "SetRemove")
        elements = set_elements(request, replica.keyspace.key_max_bytes)
        return await self._mutate(
            replica,
            request.key,
            lambda state, _hlc: rep.set_remove(ConflictPolicy.SET, state, elements),
        )

    def _typed(self, keyspace: str, key: str, policy: ConflictPolicy, op: str) -> ReplicatedReplica:
        replica = self._writable(keyspace, key)
        if not isinstance(replica, ReplicatedReplica) or replica.keyspace.conflict is not policy:
            raise InvalidArgumentError(
                FieldViolation(
                    "keyspace",
                    f"{op} needs a replicated keyspace with conflict = {policy.value!r}; "
                    f"{keyspace!r} is {replica.keyspace.locality.value} with "
                    f"{replica.keyspace.conflict.value!r}",
                )
            )
        return replica

    async def _mutate(
        self,
        replica: ReplicatedReplica,
        key: str,
        operation: Callable[[rep.State | None, HlcTimestamp], rep.State],
    ) -> state_pb2.WriteResponse:
        hlc = self.hlc.now()
        current = replica.view.get(key)
        revision, new = await replica.store.mutate(
            key,
            current.state if current else None,
            lambda state: operation(state, hlc),
            hlc,
        )
        # Read-your-writes: show the write now; the feed merges it again, harmlessly.
        base_rev = current.revision if current else 0
        replica.view.merge_local(
            key, rep.merged_entry(current, key, new, base_rev, hlc.to_int(), self.region)
        )
        return state_pb2.WriteResponse(revision=revision, hlc=hlc.to_int())

    # -- admin -----------------------------------------------------------------

    async def rehome(self, request: state_pb2.RehomeRequest) -> state_pb2.RehomeResponse:
        """Move a regional keyspace's partition to another home region (audited by the guard)."""
        replica = self._replica(request.keyspace, forwardable=True)
        violations: list[FieldViolation] = []
        if not isinstance(replica, RegionalReplica):
            violations.append(
                FieldViolation(
                    "keyspace",
                    f"{request.keyspace!r} is {replica.keyspace.locality.value}: only a "
                    "regional keyspace has home regions",
                )
            )
        if not PARTITION.fullmatch(request.partition):
            violations.append(
                FieldViolation("partition", "a partition is 1-64 letters, digits, '-' or '_'")
            )
        if not request.region:
            violations.append(FieldViolation("region", "name the new home region"))
        check(violations)
        assert isinstance(replica, RegionalReplica)
        previous, revision = await replica.rehome(request.partition, request.region)
        return state_pb2.RehomeResponse(
            previous_region=previous, region=request.region, revision=revision
        )
