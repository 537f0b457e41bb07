"""The Python client's value types and error mapping (see :mod:`meridian.client`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meridian._pb.meridian.v1 import (
    events_pb2,
    idempotency_pb2,
    state_pb2,
)
from meridian.core.canonical import PayloadKind
from meridian.core.errors import (
    ClockSkewError,
    ConflictError,
    DeadlineExceededError,
    ErrorCode,
    FencedError,
    FieldViolation,
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    InternalError,
    InvalidArgumentError,
    MeridianError,
    NotFoundError,
    PermissionDeniedError,
    QuorumUnavailableError,
    ResidencyViolationError,
    ResourceExhaustedError,
    UnavailableError,
)
from meridian.idempotency import StoredResponse


@dataclass(frozen=True)
class Strong:
    """Linearizable: the latest acknowledged write."""


@dataclass(frozen=True)
class Bounded:
    """At most ``max_staleness_s`` seconds stale."""

    max_staleness_s: float


@dataclass(frozen=True)
class Eventual:
    """The agent's cache, kept current by the change feed."""


ReadConsistency = Strong | Bounded | Eventual


@dataclass(frozen=True)
class PutItem:
    """One write of :meth:`MeridianClient.put_many`, with the arguments of ``put``."""

    keyspace: str
    key: str
    value: bytes
    if_revision: int | None = None


@dataclass(frozen=True)
class OutgoingEvent:
    """One event of :meth:`MeridianClient.publish_batch`."""

    topic: str
    key: str
    payload: bytes
    event_id: str
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Sibling:
    value: bytes
    hlc: int
    region: str


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    revision: int
    hlc: int
    region: str
    #: ``counter`` keyspaces: the counter's value.
    counter: int = 0
    #: ``set`` keyspaces: the elements, sorted.
    elements: tuple[str, ...] = ()
    #: ``multi_value`` keyspaces: the concurrent values, oldest first.
    siblings: tuple[Sibling, ...] = ()


@dataclass(frozen=True)
class ReadResult:
    entry: Entry
    #: "strong", "bounded" or "eventual": what the agent actually served.
    served: str
    #: How stale the answer may be, in seconds (0 for strong).
    staleness_bound_s: float


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    next_page_token: str
    served: str
    staleness_bound_s: float


@dataclass(frozen=True)
class WatchEvent:
    #: "put" or "delete"
    kind: str
    entry: Entry


@dataclass(frozen=True)
class Begun:
    """What a Begin found. ``outcome``: "new", "in_progress", "completed" or "mismatch"."""

    outcome: str
    fingerprint: str
    #: "new": pass it to complete() or abort().
    fencing_token: int = 0
    #: "new" and "in_progress": when the lease runs out (epoch seconds).
    lease_expires_at: float = 0.0
    #: "completed": the stored response.
    response: StoredResponse | None = None
    took_over: bool = False


@dataclass(frozen=True)
class OnceResult:
    response: StoredResponse
    #: True when the command had run before and this is its stored response.
    replayed: bool


_OUTCOMES = {
    idempotency_pb2.BeginResponse.OUTCOME_NEW: "new",
    idempotency_pb2.BeginResponse.OUTCOME_IN_PROGRESS: "in_progress",
    idempotency_pb2.BeginResponse.OUTCOME_COMPLETED: "completed",
    idempotency_pb2.BeginResponse.OUTCOME_MISMATCH: "mismatch",
}
_KINDS = {
    PayloadKind.JSON: idempotency_pb2.PAYLOAD_KIND_JSON,
    PayloadKind.BINARY: idempotency_pb2.PAYLOAD_KIND_BINARY,
}


def _set_source(msg: Any, topic_filter: str, keyspace: str) -> None:
    """Fill a request's ``source`` oneof: a keyspace's change feed, or a topic filter."""
    if keyspace:
        msg.keyspace = keyspace
    else:
        msg.topic_filter = topic_filter


def _start(msg: events_pb2.StartPosition, sequence: int | None, time_s: float | None) -> None:
    if sequence is not None:
        msg.sequence = sequence
    elif time_s is not None:
        msg.time.FromNanoseconds(int(time_s * 1e9))


_SERVED = {
    state_pb2.Consistency.LEVEL_STRONG: "strong",
    state_pb2.Consistency.LEVEL_BOUNDED: "bounded",
    state_pb2.Consistency.LEVEL_EVENTUAL: "eventual",
}


def _consistency(c: ReadConsistency) -> state_pb2.Consistency:
    if isinstance(c, Bounded):
        d = Duration()
        d.FromNanoseconds(int(c.max_staleness_s * 1e9))
        return state_pb2.Consistency(level=state_pb2.Consistency.LEVEL_BOUNDED, max_staleness=d)
    if isinstance(c, Eventual):
        return state_pb2.Consistency(level=state_pb2.Consistency.LEVEL_EVENTUAL)
    return state_pb2.Consistency(level=state_pb2.Consistency.LEVEL_STRONG)


def _entry(e: state_pb2.Entry) -> Entry:
    return Entry(
        e.key,
        e.value,
        e.revision,
        e.hlc,
        e.region,
        e.counter,
        tuple(e.elements),
        tuple(Sibling(s.value, s.hlc, s.region) for s in e.siblings),
    )


#: ``ErrorInfo.domain`` of the agent's errors: a reason from another domain is
#: not a Meridian code.
ERROR_DOMAIN = "meridian.dev"
#: ``ErrorInfo.metadata`` key of a ``CONFLICT``: the key's revision now.
CURRENT_REVISION_KEY = "currentRevision"

_SIMPLE: dict[str, type[MeridianError]] = {
    ErrorCode.NOT_FOUND: NotFoundError,
    ErrorCode.QUORUM_UNAVAILABLE: QuorumUnavailableError,
    ErrorCode.CLOCK_SKEW: ClockSkewError,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    ErrorCode.FENCED: FencedError,
    ErrorCode.IDEMPOTENCY_IN_PROGRESS: IdempotencyInProgressError,
    ErrorCode.IDEMPOTENCY_MISMATCH: IdempotencyMismatchError,
    ErrorCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    ErrorCode.PERMISSION_DENIED: PermissionDeniedError,
    ErrorCode.RESIDENCY_VIOLATION: ResidencyViolationError,
    ErrorCode.UNAVAILABLE: UnavailableError,
    ErrorCode.INTERNAL: InternalError,
}


def _typed(code: str, message: str, current_revision: int) -> MeridianError | None:
    """The error a stable code stands for (None: INVALID_ARGUMENT or unknown)."""
    if code == ErrorCode.CONFLICT:
        return ConflictError(message, current_revision=current_revision)
    simple = _SIMPLE.get(code)
    return simple(message) if simple is not None else None


def error_from_item(e: state_pb2.ItemError) -> MeridianError:
    """The typed error of one item of a GetMany or PutMany."""
    return _typed(e.code, e.message, e.current_revision) or UnavailableError(
        f"{e.code}: {e.message}"
    )


_D = TypeVar("_D", bound=Message)


def _unpack(detail: any_pb2.Any, into: _D) -> _D | None:
    """``detail`` decoded into ``into``, or None if it does not decode."""
    try:
        return into if detail.Unpack(into) else None
    except DecodeError:
        return None


def _rich_details(
    exc: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.BadRequest | None]:
    """The ``ErrorInfo`` and ``BadRequest`` of a failed call's ``google.rpc.Status``.

    Missing, unreadable or inconsistent details (bytes that are not a Status,
    a Status whose code is not the call's, a detail that does not decode)
    count as absent: the caller falls back to the gRPC code.
    """
    try:
        status = rpc_status.from_call(exc)
    except (ValueError, TypeError, DecodeError):
        return None, None
    info: error_details_pb2.ErrorInfo | None = None
    bad_request: error_details_pb2.BadRequest | None = None
    for detail in status.details if status is not None else ():
        if info is None and detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = _unpack(detail, error_details_pb2.ErrorInfo())
        elif bad_request is None and detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = _unpack(detail, error_details_pb2.BadRequest())
    if info is not None and info.domain != ERROR_DOMAIN:
        info = None
    return info, bad_request


def error_from_rpc(exc: grpc.aio.AioRpcError) -> MeridianError:
    """Rebuild the typed Meridian error from a failed call's ``google.rpc``
    details: ``ErrorInfo.reason`` is the stable code, its ``metadata`` the
    structured fields, ``BadRequest`` the field violations.

    A call without a Meridian reason (none sent, an unknown one, unreadable
    details) maps by its gRPC code: ``DEADLINE_EXCEEDED`` to
    :class:`DeadlineExceededError`, anything else to :class:`UnavailableError`
    naming the code. This never raises.
    """
    message = exc.details() or ""
    info, bad_request = _rich_details(exc)
    code = info.reason if info is not None else ""
    if code == ErrorCode.INVALID_ARGUMENT:
        violations = [
            FieldViolation(v.field or "request", v.description)
            for v in (bad_request.field_violations if bad_request is not None else ())
        ]
        return InvalidArgumentError(violations or FieldViolation("request", message))
    if info is not None:
        try:
            current = int(info.metadata.get(CURRENT_REVISION_KEY, "0"))
        except ValueError:
            current = 0
        typed = _typed(code, message, max(current, 0))
        if typed is not None:
            return typed
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(message or "deadline exceeded")
    return UnavailableError(f"{exc.code().name}: {message}")
