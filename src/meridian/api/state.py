"""The State API, once, for both transports: proto in, proto out.

Validation happens before anything touches NATS, so a bad request writes
nothing. Reads are served at the requested consistency:

- STRONG: through the keyspace's leader, after a quorum barrier;
- BOUNDED(max): from the agent's view if it is provably at most ``max`` stale,
  else as STRONG;
- EVENTUAL: from the view (as STRONG if the view was never synced).

The response says what was served and how stale it may be.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping

from google.protobuf.duration_pb2 import Duration

from meridian._pb.meridian.v1 import state_pb2
from meridian.agent.state import KeyspaceReplica
from meridian.core.errors import FieldViolation, InvalidArgumentError, NotFoundError
from meridian.core.keyspace import (
    Consistency,
    ReadLevel,
    check,
    key_prefix_violations,
    key_violations,
    value_violations,
)
from meridian.core.view import StoredEntry
from meridian.observability.metrics import AgentMetrics

Level = state_pb2.Consistency.Level
DEFAULT_SCAN_LIMIT = 100
MAX_SCAN_LIMIT = 1000

_LEVELS = {
    Level.LEVEL_UNSPECIFIED: ReadLevel.STRONG,
    Level.LEVEL_STRONG: ReadLevel.STRONG,
    Level.LEVEL_BOUNDED: ReadLevel.BOUNDED,
    Level.LEVEL_EVENTUAL: ReadLevel.EVENTUAL,
}
_WIRE = {
    ReadLevel.STRONG: Level.LEVEL_STRONG,
    ReadLevel.BOUNDED: Level.LEVEL_BOUNDED,
    ReadLevel.EVENTUAL: Level.LEVEL_EVENTUAL,
}


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _entry(e: StoredEntry) -> state_pb2.Entry:
    return state_pb2.Entry(
        key=e.key, value=e.value, revision=e.revision, hlc=e.hlc, region=e.region
    )


def consistency_from_proto(msg: state_pb2.Consistency, present: bool) -> Consistency:
    if not present:
        return Consistency(ReadLevel.STRONG)
    if msg.level not in _LEVELS:
        raise InvalidArgumentError(
            FieldViolation("consistency.level", "must be STRONG, BOUNDED or EVENTUAL")
        )
    staleness = msg.max_staleness.ToNanoseconds() / 1e9 if msg.HasField("max_staleness") else 0.0
    return Consistency(_LEVELS[msg.level], staleness)


class StateApi:
    """Get, Put, Create, Delete and Scan over the declared keyspaces."""

    def __init__(
        self,
        region: str,
        replicas: Mapping[str, KeyspaceReplica],
        *,
        metrics: AgentMetrics,
        strong_timeout_s: float,
    ) -> None:
        self.region = region
        self.replicas = replicas
        self.metrics = metrics
        self.strong_timeout_s = strong_timeout_s

    def _replica(self, keyspace: str) -> KeyspaceReplica:
        replica = self.replicas.get(keyspace)
        if replica is None:
            known = ", ".join(sorted(self.replicas)) or "none"
            raise InvalidArgumentError(
                FieldViolation(
                    "keyspace",
                    f"unknown keyspace {keyspace[:80]!r}; declared keyspaces: {known}",
                )
            )
        replica.require_ready()
        return replica

    def _key(self, replica: KeyspaceReplica, key: str) -> None:
        check(key_violations(key, replica.keyspace.key_max_bytes))

    # -- reads -------------------------------------------------------------

    async def get(self, request: state_pb2.GetRequest) -> state_pb2.GetResponse:
        replica = self._replica(request.keyspace)
        self._key(replica, request.key)
        want = consistency_from_proto(request.consistency, request.HasField("consistency"))
        served, staleness = self._serve_from_view(replica, want)
        if served is ReadLevel.STRONG:
            found = await replica.store.get_strong(request.key)
        else:
            found = replica.view.get(request.key)
        self.metrics.state_served.labels(
            self.region, request.keyspace, want.level.value, served.value
        ).inc()
        if found is None:
            raise NotFoundError(f"{request.keyspace}/{request.key} does not exist")
        return state_pb2.GetResponse(
            entry=_entry(found), served=_WIRE[served], staleness_bound=_duration(staleness)
        )

    def _serve_from_view(
        self, replica: KeyspaceReplica, want: Consistency
    ) -> tuple[ReadLevel, float]:
        if want.level is ReadLevel.STRONG:
            return ReadLevel.STRONG, 0.0
        staleness = replica.view.staleness(time.monotonic())
        if staleness is None:
            return ReadLevel.STRONG, 0.0
        if want.level is ReadLevel.BOUNDED and staleness > want.max_staleness_s:
            return ReadLevel.STRONG, 0.0
        return want.level, staleness

    async def scan(self, request: state_pb2.ScanRequest) -> state_pb2.ScanResponse:
        replica = self._replica(request.keyspace)
        violations = key_prefix_violations(request.prefix, replica.keyspace.key_max_bytes)
        limit = request.limit or DEFAULT_SCAN_LIMIT
        if limit > MAX_SCAN_LIMIT:
            violations.append(FieldViolation("limit", f"must be at most {MAX_SCAN_LIMIT}"))
        after = ""
        if request.page_token:
            try:
                after = base64.urlsafe_b64decode(request.page_token.encode("ascii")).decode()
            except (ValueError, binascii.Error, UnicodeError):
                after = "\0"
            if key_violations(after, replica.keyspace.key_max_bytes) or not after.startswith(
                request.prefix
            ):
                violations.append(
                    FieldViolation(
                        "page_token", "is not a token from a previous Scan of this prefix"
                    )
                )
        check(violations)
        want = consistency_from_proto(request.consistency, request.HasField("consistency"))
        served, staleness = self._serve_from_view(replica, want)
        if served is ReadLevel.STRONG:
            # Linearizable: every write acknowledged before the barrier is in the view after it.
            seq = await replica.store.barrier()
            await replica.wait_applied(seq, self.strong_timeout_s)
        entries = replica.view.scan(request.prefix, after, limit + 1)
        more = len(entries) > limit
        entries = entries[:limit]
        token = ""
        if more:
            token = base64.urlsafe_b64encode(entries[-1].key.encode()).decode("ascii")
        return state_pb2.ScanResponse(
            entries=[_entry(e) for e in entries],
            next_page_token=token,
            served=_WIRE[served],
            staleness_bound=_duration(staleness),
        )

    # -- writes ------------------------------------------------------------

    async def put(self, request: state_pb2.PutRequest) -> state_pb2.WriteResponse:
        replica = self._replica(request.keyspace)
        check(
            key_violations(request.key, replica.keyspace.key_max_bytes)
            + value_violations(request.value, replica.keyspace.value_max_bytes)
        )
        if_revision = request.if_revision if request.HasField("if_revision") else None
        revision, hlc = await replica.store.put(request.key, request.value, if_revision)
        return state_pb2.WriteResponse(revision=revision, hlc=hlc.to_int())

    async def create(self, request: state_pb2.CreateRequest) -> state_pb2.WriteResponse:
        replica = self._replica(request.keyspace)
        check(
            key_violations(request.key, replica.keyspace.key_max_bytes)
            + value_violations(request.value, replica.keyspace.value_max_bytes)
        )
        revision, hlc = await replica.store.create(request.key, request.value)
        return state_pb2.WriteResponse(revision=revision, hlc=hlc.to_int())

    async def delete(self, request: state_pb2.DeleteRequest) -> state_pb2.WriteResponse:
        replica = self._replica(request.keyspace)
        self._key(replica, request.key)
        if_revision = request.if_revision if request.HasField("if_revision") else None
        revision, hlc = await replica.store.delete(request.key, if_revision)
        return state_pb2.WriteResponse(revision=revision, hlc=hlc.to_int())
