"""``replicated`` keyspaces: local operations and the merged view, per conflict policy.

Every region writes to its own stream; each message carries the whole CRDT
state of one key as the writing region knew it after its operation
(state-based replication). A region's view merges every message it receives,
from every region, in any order and with duplicates. The merge functions are
commutative, associative and idempotent (:mod:`meridian.state.model.crdt`), so every
region converges to the same state, and therefore the same canonical bytes.

Pure: no I/O; the caller supplies HLC timestamps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.core.hlc import HlcTimestamp
from meridian.core.keyspace import ConflictPolicy
from meridian.state.model.crdt import Dot, LwwRegister, MultiValue, ORSet, PNCounter, Tag

State = LwwRegister | PNCounter | ORSet | MultiValue

_TYPES: dict[ConflictPolicy, type[State]] = {
    ConflictPolicy.LWW: LwwRegister,
    ConflictPolicy.COUNTER: PNCounter,
    ConflictPolicy.SET: ORSet,
    ConflictPolicy.MULTI_VALUE: MultiValue,
}


def decode(policy: ConflictPolicy, data: bytes) -> State:
    """A state from its canonical bytes; InvalidArgumentError if malformed."""
    return _TYPES[policy].from_canonical(data)


def merge(a: State | None, b: State) -> State:
    if a is None:
        return b
    return a.merge(b)  # type: ignore[arg-type]


def _wrong_policy(op: str, policy: ConflictPolicy) -> InvalidArgumentError:
    return InvalidArgumentError(
        FieldViolation("keyspace", f"{op} is not an operation of {policy.value!r} keyspaces")
    )


def put(
    policy: ConflictPolicy,
    state: State | None,
    value: bytes,
    hlc: HlcTimestamp,
    region: str,
    supersedes: Iterable[int] = (),
) -> State:
    """A plain write: an LWW register, or a new multi-value sibling."""
    if policy is ConflictPolicy.LWW:
        return merge(state, LwwRegister(value, hlc, region))
    if policy is ConflictPolicy.MULTI_VALUE:
        mv = state if isinstance(state, MultiValue) else MultiValue()
        return mv.write(value, hlc, region, _context_of(mv, supersedes))
    raise _wrong_policy("Put", policy)


def delete(
    policy: ConflictPolicy,
    state: State | None,
    hlc: HlcTimestamp,
    region: str,
    supersedes: Iterable[int] = (),
) -> State:
    if policy is ConflictPolicy.LWW:
        return merge(state, LwwRegister(None, hlc, region))
    if policy is ConflictPolicy.MULTI_VALUE:
        mv = state if isinstance(state, MultiValue) else MultiValue()
        names = list(supersedes)
        return mv.delete(_context_of(mv, names) if names else dict(mv.context))
    raise _wrong_policy("Delete", policy)


def increment(policy: ConflictPolicy, state: State | None, region: str, delta: int) -> State:
    if policy is not ConflictPolicy.COUNTER:
        raise _wrong_policy("Increment", policy)
    counter = state if isinstance(state, PNCounter) else PNCounter()
    return counter.increment(region, delta)


def set_add(
    policy: ConflictPolicy,
    state: State | None,
    elements: Iterable[str],
    hlc: HlcTimestamp,
    region: str,
) -> State:
    """Add each element with its own tag: ``<hlc>.<position>`` from ``region``."""
    if policy is not ConflictPolicy.SET:
        raise _wrong_policy("SetAdd", policy)
    s = state if isinstance(state, ORSet) else ORSet()
    for i, element in enumerate(dict.fromkeys(elements)):
        s = s.add(element, Tag(region, f"{hlc.encode()}.{i}"))
    return s


def set_remove(policy: ConflictPolicy, state: State | None, elements: Iterable[str]) -> State:
    if policy is not ConflictPolicy.SET:
        raise _wrong_policy("SetRemove", policy)
    s = state if isinstance(state, ORSet) else ORSet()
    for element in elements:
        s = s.remove(element)
    return s


def _context_of(mv: MultiValue, supersedes: Iterable[int]) -> dict[str, HlcTimestamp]:
    """The causal context that resolves the named siblings (and older ones of their regions)."""
    by_hlc = {d.hlc.to_int(): d for d in mv.siblings()}
    context: dict[str, HlcTimestamp] = {}
    for i, name in enumerate(supersedes):
        dot = by_hlc.get(name)
        if dot is None:
            raise InvalidArgumentError(
                FieldViolation(f"supersedes[{i}]", f"{name} is not a current sibling's hlc")
            )
        if dot.region not in context or context[dot.region] < dot.hlc:
            context[dot.region] = dot.hlc
    return context


def exists(state: State) -> bool:
    """Whether the key reads as present (an LWW tombstone or an empty value reads as absent)."""
    if isinstance(state, LwwRegister):
        return not state.is_tombstone
    if isinstance(state, MultiValue):
        return bool(state.siblings())
    if isinstance(state, ORSet):
        return bool(state.elements)
    return True


@dataclass(frozen=True)
class ReplicatedEntry:
    key: str
    state: State
    #: Sequence of the last message applied to this key in this region's aggregate stream.
    revision: int
    hlc: int
    region: str

    def siblings(self) -> list[Dot]:
        return self.state.siblings() if isinstance(self.state, MultiValue) else []


def merged_entry(
    old: ReplicatedEntry | None,
    key: str,
    incoming: State,
    revision: int,
    hlc: int,
    region: str,
) -> ReplicatedEntry:
    """``old`` merged with one write of ``region`` at ``hlc``.

    The entry is labelled with the newest (hlc, region) it has seen, so every
    region shows the same label, whatever order the writes arrived in.
    """
    latest = max((hlc, region), (old.hlc, old.region) if old else (0, ""))
    return ReplicatedEntry(key, merge(old.state if old else None, incoming), revision, *latest)
