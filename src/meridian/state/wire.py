"""The State API's wire forms: entries, durations, read levels and item errors
as protos; a request's consistency, page token and set elements from its
proto, checked. Pure."""

from __future__ import annotations

import base64
import binascii

from google.protobuf.duration_pb2 import Duration

from meridian._pb.meridian.v1 import state_pb2
from meridian.core.errors import ConflictError, FieldViolation, InvalidArgumentError, MeridianError
from meridian.core.keyspace import Consistency, ReadLevel, check, key_violations
from meridian.state.model.crdt import LwwRegister, MultiValue, ORSet, PNCounter
from meridian.state.model.replicated import ReplicatedEntry
from meridian.state.model.view import StoredEntry

Level = state_pb2.Consistency.Level
#: The largest protobuf Duration (10,000 years): the staleness bound of an
#: EVENTUAL read whose freshness nothing has proven yet.
UNBOUNDED_S = 315_576_000_000
MAX_SET_ELEMENTS = 1000

LEVELS = {
    Level.LEVEL_STRONG: ReadLevel.STRONG,
    Level.LEVEL_BOUNDED: ReadLevel.BOUNDED,
    Level.LEVEL_EVENTUAL: ReadLevel.EVENTUAL,
}
#: Weakest first: a scan over several partitions is served at the weakest of them.
LEVEL_ORDER = {ReadLevel.EVENTUAL: 0, ReadLevel.BOUNDED: 1, ReadLevel.STRONG: 2}.__getitem__
WIRE = {
    ReadLevel.STRONG: Level.LEVEL_STRONG,
    ReadLevel.BOUNDED: Level.LEVEL_BOUNDED,
    ReadLevel.EVENTUAL: Level.LEVEL_EVENTUAL,
}


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def stored_entry(e: StoredEntry) -> state_pb2.Entry:
    return state_pb2.Entry(
        key=e.key, value=e.value, revision=e.revision, hlc=e.hlc, region=e.region
    )


def merged_entry_pb(e: ReplicatedEntry) -> state_pb2.Entry:
    out = state_pb2.Entry(key=e.key, revision=e.revision, hlc=e.hlc, region=e.region)
    state = e.state
    if isinstance(state, LwwRegister):
        out.value = state.value or b""
        out.hlc, out.region = state.hlc.to_int(), state.region
    elif isinstance(state, PNCounter):
        out.counter = state.value
    elif isinstance(state, ORSet):
        out.elements.extend(sorted(state.elements))
    elif isinstance(state, MultiValue):
        siblings = state.siblings()
        out.siblings.extend(
            state_pb2.Sibling(value=d.value, hlc=d.hlc.to_int(), region=d.region) for d in siblings
        )
        if siblings:
            newest = siblings[-1]
            out.value, out.hlc, out.region = newest.value, newest.hlc.to_int(), newest.region
    return out


def item_error(exc: MeridianError) -> state_pb2.ItemError:
    current = exc.current_revision if isinstance(exc, ConflictError) else 0
    return state_pb2.ItemError(code=exc.code.value, message=exc.message, current_revision=current)


def consistency_from_proto(
    msg: state_pb2.Consistency, present: bool, default: ReadLevel
) -> Consistency:
    if not present or msg.level == Level.LEVEL_UNSPECIFIED:
        level = default
    elif msg.level in LEVELS:
        level = LEVELS[msg.level]
    else:
        raise InvalidArgumentError(
            FieldViolation("consistency.level", "must be STRONG, BOUNDED or EVENTUAL")
        )
    staleness = msg.max_staleness.ToNanoseconds() / 1e9 if msg.HasField("max_staleness") else 0.0
    return Consistency(level, staleness)


def page_after(
    request: state_pb2.ScanRequest, key_max_bytes: int, violations: list[FieldViolation]
) -> str:
    """The key a Scan's page token says to start after; a token that is not one
    of ours (or not of this prefix) is added to ``violations``."""
    if not request.page_token:
        return ""
    try:
        after = base64.urlsafe_b64decode(request.page_token.encode("ascii")).decode()
    except (ValueError, binascii.Error, UnicodeError):
        after = "\0"
    if key_violations(after, key_max_bytes) or not after.startswith(request.prefix):
        violations.append(
            FieldViolation("page_token", "is not a token from a previous Scan of this prefix")
        )
    return after


def set_elements(request: state_pb2.SetRequest, key_max_bytes: int) -> list[str]:
    """A SetAdd's or SetRemove's elements, once each follows the rules."""
    elements = list(request.elements)
    violations: list[FieldViolation] = []
    if not elements:
        violations.append(FieldViolation("elements", "name at least one element"))
    if len(elements) > MAX_SET_ELEMENTS:
        violations.append(FieldViolation("elements", f"at most {MAX_SET_ELEMENTS} per call"))
    for i, element in enumerate(elements[:MAX_SET_ELEMENTS]):
        size = len(element.encode("utf-8", errors="surrogatepass"))
        if not 1 <= size <= key_max_bytes:
            violations.append(
                FieldViolation(
                    f"elements[{i}]",
                    f"must be 1 to {key_max_bytes} bytes",
                )
            )
    check(violations)
    return elements
