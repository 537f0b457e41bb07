"""Conflict policies for ``replicated`` keyspaces (DESIGN §3), as pure values.

Four state-based CRDTs, each an immutable, deterministic value:

- :class:`LwwRegister`: last writer wins by ``(hlc, region)``;
- :class:`PNCounter`: per-region increment and decrement totals;
- :class:`ORSet`: add-wins observed-remove set of ``str`` elements;
- :class:`MultiValue`: concurrent writes are kept as siblings for the application.

Contract shared by all four: ``a.merge(b)`` (or :func:`merge`) is commutative,
associative and idempotent, never mutates its inputs and returns a value of
the same type (possibly one of the inputs: they are immutable). Replicas that
have merged the same set of states hold equal values with identical
``to_canonical()`` bytes, whatever the order and however often states were
delivered. ``from_canonical()`` accepts exactly the bytes ``to_canonical()``
produces and raises :class:`InvalidArgumentError` for anything else. Bad
arguments raise :class:`InvalidArgumentError` naming the field; nothing in this
module draws randomness or reads a clock, so unique tags and HLC timestamps
are supplied by the caller.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.core.hlc import HlcTimestamp

FORMAT_VERSION = 1
#: Largest canonical document :func:`from_canonical` will parse.
MAX_CANONICAL_BYTES = 16 * 1024 * 1024
#: Per-region counter ceiling: 2^53-1 keeps every number exact in RFC 8785 JSON.
MAX_COUNT = 2**53 - 1
#: Region ids follow the configuration's rule (``meridian.config.REGION_NAME``).
REGION_ID = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]")
#: OR-set tag stamps: an HLC encoding or a decimal sequence, ASCII so order is unambiguous.
TAG_STAMP = re.compile(r"[0-9A-Za-z._:-]{1,64}")


def _bad(field: str, rule: str) -> NoReturn:
    raise InvalidArgumentError(FieldViolation(field, rule))


def _region(field: str, value: object) -> str:
    if not isinstance(value, str) or not REGION_ID.fullmatch(value):
        _bad(field, "must be a region id: 2-32 chars of a-z, 0-9 and '-', starting with a letter")
    return value


def _text(field: str, value: object) -> str:
    if not isinstance(value, str):
        _bad(field, "must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _bad(field, "must be valid Unicode (no lone surrogates)")
    return value


def _hlc(field: str, value: object) -> HlcTimestamp:
    if not isinstance(value, HlcTimestamp):
        _bad(field, "must be an HlcTimestamp")
    return value


def _same_type(self: object, other: object) -> None:
    if type(other) is not type(self):
        _bad(
            "other",
            f"can only merge {type(self).__name__} with {type(self).__name__}, "
            f"not {type(other).__name__}",
        )


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _unb64(field: str, value: object) -> bytes:
    if not isinstance(value, str):
        _bad(field, "must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        _bad(field, "must be standard padded base64 (RFC 4648 section 4)")


def _dump(kind: str, body: dict[str, object]) -> bytes:
    # RFC 8785 (JCS) canonical JSON without the rfc8785 package. For the shapes
    # written here, json.dumps with sorted keys and no whitespace produces the
    # JCS bytes exactly: object keys are fixed ASCII names or ASCII region ids
    # (so code-point order equals JCS's UTF-16 order), numbers are integers
    # within +/-2^53 (printed the same as ES6), strings are valid Unicode and
    # json escapes the same characters JCS does when ensure_ascii=False.
    doc = {"type": kind, "v": FORMAT_VERSION, **body}
    text = json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            _bad("canonical", f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_floats(text: str) -> NoReturn:
    _bad("canonical", f"numbers must be integers, got {text[:32]}")


def _load(data: object, kind: str, fields: set[str]) -> dict[str, Any]:
    """Parse ``data`` as a JSON object of ``kind`` with exactly ``fields`` (plus type and v)."""
    if not isinstance(data, bytes):
        _bad("canonical", f"must be bytes, got {type(data).__name__}")
    if len(data) > MAX_CANONICAL_BYTES:
        _bad("canonical", f"must be at most {MAX_CANONICAL_BYTES} bytes, got {len(data)}")
    try:
        doc = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_float=_no_floats,
            parse_constant=_no_floats,
        )
    except RecursionError:
        _bad("canonical", "JSON is nested too deeply")
    except ValueError as exc:  # includes JSONDecodeError, UnicodeDecodeError, huge ints
        _bad("canonical", f"is not valid UTF-8 JSON: {str(exc)[:120]}")
    if not isinstance(doc, dict):
        _bad("canonical", "must be a JSON object")
    if doc.get("type") != kind:
        _bad("canonical.type", f"must be {kind!r}, got {str(doc.get('type'))[:40]!r}")
    if doc.get("v") != FORMAT_VERSION or isinstance(doc.get("v"), bool):
        _bad("canonical.v", f"must be format version {FORMAT_VERSION}")
    expected = fields | {"type", "v"}
    if unknown := sorted(set(doc) - expected):
        _bad("canonical", f"unknown fields {', '.join(map(repr, unknown[:5]))[:200]}")
    if missing := sorted(expected - set(doc)):
        _bad("canonical", f"missing fields {', '.join(map(repr, missing))}")
    return doc


def _object(field: str, raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        _bad(field, "must be a JSON object")
    return raw


def _triples(field: str, raw: object) -> list[tuple[str, str, str]]:
    if not isinstance(raw, list):
        _bad(field, "must be a JSON array")
    out: list[tuple[str, str, str]] = []
    for i, item in enumerate(raw):
        if not (
            isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)
        ):
            _bad(f"{field}[{i}]", "must be an array of 3 strings")
        out.append((item[0], item[1], item[2]))
    return out


def _canonical_only(encoded: bytes, data: bytes) -> None:
    # Exactly one byte string per state, so replicas can compare and hash bytes.
    if encoded != data:
        _bad(
            "canonical",
            "is not in canonical form (sorted keys and entries, no whitespace, "
            "no duplicate or zero entries, canonical base64)",
        )


class _Crdt:
    """Equality and hashing by canonical state, for the immutable values below."""

    __slots__ = ()

    def to_canonical(self) -> bytes:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Crdt) or type(other) is not type(self):
            return NotImplemented
        return self.to_canonical() == other.to_canonical()

    def __hash__(self) -> int:
        return hash(self.to_canonical())

    def __repr__(self) -> str:
        return f"{type(self).__name__}.from_canonical({self.to_canonical()!r})"


@dataclass(frozen=True, slots=True)
class LwwRegister:
    """A last-writer-wins register. ``value=None`` is a tombstone (a delete).

    :meth:`merge` keeps the write with the higher ``(hlc, region)``: the region
    id breaks HLC ties. Two different writes with the same ``(hlc, region)``
    can only come from a broken writer; they are still ordered deterministically
    (a value beats a tombstone, then the larger bytes win).
    """

    value: bytes | None
    hlc: HlcTimestamp
    region: str

    def __post_init__(self) -> None:
        if self.value is not None and not isinstance(self.value, bytes):
            _bad("value", "must be bytes, or None for a tombstone")
        _hlc("hlc", self.hlc)
        _region("region", self.region)

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def _rank(self) -> tuple[HlcTimestamp, str, bool, bytes]:
        return (self.hlc, self.region, self.value is not None, self.value or b"")

    def merge(self, other: LwwRegister) -> LwwRegister:
        """The winning write of the two."""
        _same_type(self, other)
        return self if self._rank() >= other._rank() else other

    def to_canonical(self) -> bytes:
        value = None if self.value is None else _b64(self.value)
        return _dump("lww", {"hlc": self.hlc.encode(), "region": self.region, "value": value})

    @classmethod
    def from_canonical(cls, data: bytes) -> LwwRegister:
        doc = _load(data, "lww", {"hlc", "region", "value"})
        raw = doc["value"]
        value = None if raw is None else _unb64("canonical.value", raw)
        reg = cls(
            value, HlcTimestamp.decode(doc["hlc"]), _region("canonical.region", doc["region"])
        )
        _canonical_only(reg.to_canonical(), data)
        return reg


def _counts(field: str, raw: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        _bad(field, "must be a mapping of region id to count")
    out: dict[str, int] = {}
    for region, count in raw.items():
        _region(f"{field} key", region)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            _bad(f"{field}.{region}", f"must be an integer in 0..{MAX_COUNT}")
        if count:
            out[region] = count
    return dict(sorted(out.items()))


def _pointwise_max(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {k: max(a.get(k, 0), b.get(k, 0)) for k in a.keys() | b.keys()}


class PNCounter(_Crdt):
    """A PN-counter: per region, the total of increments (``p``) and of decrements (``n``).

    Each region only ever raises its own totals, so merging by pointwise max
    loses no increment: :attr:`value` is the sum of every delta applied in
    every region once all states have met. Totals are capped at 2^53-1 per
    region and side. Zero totals are not stored.
    """

    __slots__ = ("_n", "_p")

    def __init__(
        self, p: Mapping[str, int] | None = None, n: Mapping[str, int] | None = None
    ) -> None:
        self._p = _counts("p", p if p is not None else {})
        self._n = _counts("n", n if n is not None else {})

    @property
    def p(self) -> Mapping[str, int]:
        return MappingProxyType(self._p)

    @property
    def n(self) -> Mapping[str, int]:
        return MappingProxyType(self._n)

    @property
    def value(self) -> int:
        return sum(self._p.values()) - sum(self._n.values())

    def increment(self, region: str, delta: int) -> PNCounter:
        """A new counter with ``delta`` (any sign) applied by ``region``.

        Raises :class:`InvalidArgumentError` if the region's total would pass 2^53-1.
        """
        _region("region", region)
        if not isinstance(delta, int) or isinstance(delta, bool):
            _bad("delta", "must be an integer")
        side = dict(self._p if delta > 0 else self._n)
        side[region] = side.get(region, 0) + abs(delta)
        if side[region] > MAX_COUNT:
            _bad("delta", f"would push region {region!r}'s total past {MAX_COUNT}")
        return PNCounter(side, self._n) if delta > 0 else PNCounter(self._p, side)

    def merge(self, other: PNCounter) -> PNCounter:
        _same_type(self, other)
        return PNCounter(_pointwise_max(self._p, other._p), _pointwise_max(self._n, other._n))

    def to_canonical(self) -> bytes:
        return _dump("pncounter", {"n": self._n, "p": self._p})

    @classmethod
    def from_canonical(cls, data: bytes) -> PNCounter:
        doc = _load(data, "pncounter", {"n", "p"})
        counter = cls(_object("canonical.p", doc["p"]), _object("canonical.n", doc["n"]))
        _canonical_only(counter.to_canonical(), data)
        return counter


@dataclass(frozen=True, order=True, slots=True)
class Tag:
    """The unique identity of one OR-set add: the adding region and a stamp.

    The caller guarantees uniqueness: a stamp is never reused within a region
    (``HlcTimestamp.encode()`` from that region's writer, or its stream
    sequence as a decimal string).
    """

    region: str
    stamp: str

    def __post_init__(self) -> None:
        _region("tag.region", self.region)
        if not isinstance(self.stamp, str) or not TAG_STAMP.fullmatch(self.stamp):
            _bad("tag.stamp", "must be 1-64 chars of A-Z, a-z, 0-9, '.', '_', ':' and '-'")

    @classmethod
    def from_hlc(cls, region: str, hlc: HlcTimestamp) -> Tag:
        return cls(region, _hlc("hlc", hlc).encode())


def _entries(field: str, raw: Iterable[tuple[str, Tag]]) -> frozenset[tuple[str, Tag]]:
    out: set[tuple[str, Tag]] = set()
    for entry in raw:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Tag)):
            _bad(field, "entries must be (element, Tag) pairs")
        out.add((_text(f"{field}.element", entry[0]), entry[1]))
    return frozenset(out)


class ORSet(_Crdt):
    """An add-wins observed-remove set of ``str`` elements.

    Elements are ``str`` (any valid Unicode) so they read naturally in the
    canonical JSON; encode binary members yourself. Each :meth:`add` carries
    a unique :class:`Tag`; :meth:`remove` tombstones only the tags it has
    observed, so an add concurrent with a remove survives it. Merge is the
    union of adds and the union of tombstones. Tombstones are kept forever:
    dropping one safely needs causal stability, which this value cannot see.
    """

    __slots__ = ("_dead", "_live")

    def __init__(
        self, live: Iterable[tuple[str, Tag]] = (), tombstones: Iterable[tuple[str, Tag]] = ()
    ) -> None:
        self._dead = _entries("tombstones", tombstones)
        self._live = _entries("live", live) - self._dead

    @property
    def elements(self) -> frozenset[str]:
        return frozenset(element for element, _ in self._live)

    def __contains__(self, element: object) -> bool:
        return any(e == element for e, _ in self._live)

    def tags(self, element: str) -> frozenset[Tag]:
        """The live tags of ``element``: what :meth:`remove` here would tombstone."""
        return frozenset(t for e, t in self._live if e == element)

    def add(self, element: str, tag: Tag) -> ORSet:
        """A new set with ``element`` added under ``tag``.

        Re-applying the same add is a no-op (also after it was removed).
        Raises :class:`InvalidArgumentError` if ``tag`` already names another element.
        """
        _text("element", element)
        if not isinstance(tag, Tag):
            _bad("tag", "must be a Tag")
        if (element, tag) in self._live or (element, tag) in self._dead:
            return self
        if any(t == tag for _, t in self._live | self._dead):
            _bad("tag", f"tag {tag.region}/{tag.stamp} is already used for another element")
        return ORSet(self._live | {(element, tag)}, self._dead)

    def remove(self, element: str) -> ORSet:
        """A new set without ``element``: tombstones every add of it observed here."""
        _text("element", element)
        seen = {entry for entry in self._live if entry[0] == element}
        return ORSet(self._live - seen, self._dead | seen) if seen else self

    def merge(self, other: ORSet) -> ORSet:
        _same_type(self, other)
        return ORSet(self._live | other._live, self._dead | other._dead)

    def to_canonical(self) -> bytes:
        def rows(entries: frozenset[tuple[str, Tag]]) -> list[list[str]]:
            return [[e, t.region, t.stamp] for e, t in sorted(entries)]

        return _dump("orset", {"live": rows(self._live), "tombstones": rows(self._dead)})

    @classmethod
    def from_canonical(cls, data: bytes) -> ORSet:
        doc = _load(data, "orset", {"live", "tombstones"})
        live = [(e, Tag(r, s)) for e, r, s in _triples("canonical.live", doc["live"])]
        dead = [(e, Tag(r, s)) for e, r, s in _triples("canonical.tombstones", doc["tombstones"])]
        orset = cls(live, dead)
        _canonical_only(orset.to_canonical(), data)
        return orset


@dataclass(frozen=True, order=True, slots=True)
class Dot:
    """One sibling of a :class:`MultiValue`: a value written by ``region`` at ``hlc``.

    ``(region, hlc)`` identifies the write; a correct writer never reuses it.
    """

    hlc: HlcTimestamp
    region: str
    value: bytes

    def __post_init__(self) -> None:
        _hlc("hlc", self.hlc)
        _region("region", self.region)
        if not isinstance(self.value, bytes):
            _bad("value", "must be bytes")


#: A causal context: per region, the newest write HLC seen (every older one is seen too).
VersionVector = Mapping[str, HlcTimestamp]


def _vv(field: str, raw: VersionVector) -> dict[str, HlcTimestamp]:
    if not isinstance(raw, Mapping):
        _bad(field, "must be a mapping of region id to HlcTimestamp")
    out = {_region(f"{field} key", r): _hlc(f"{field}.{r}", t) for r, t in raw.items()}
    return dict(sorted(out.items()))


def _covers(vv: Mapping[str, HlcTimestamp], dot: Dot) -> bool:
    seen = vv.get(dot.region)
    return seen is not None and dot.hlc <= seen


class MultiValue(_Crdt):
    """A multi-value register: concurrent writes are kept as siblings.

    State: the live siblings and a version-vector causal context covering
    every write this replica has seen. Writes from one region carry
    increasing HLCs, so "newest seen per region" describes the whole history.
    A write names the context it read (``supersedes``); siblings covered by
    it are resolved, others stay alongside the new one. Merge keeps a sibling
    unless the other side has seen it and resolved it (the dotted
    version-vector rule), and joins the contexts by pointwise max.

    Caller contract: each region's writes are sequenced (one writer, or
    serialised through the region's stream), and that writer's HLC has seen
    ``context[region]`` (``HybridLogicalClock.update``) before it writes;
    :meth:`write` refuses a stale HLC rather than silently lose a sibling.
    """

    __slots__ = ("_context", "_dots")

    def __init__(self, siblings: Iterable[Dot] = (), context: VersionVector | None = None) -> None:
        self._context = _vv("context", context if context is not None else {})
        dots: dict[tuple[str, HlcTimestamp], Dot] = {}
        for dot in siblings:
            if not isinstance(dot, Dot):
                _bad("siblings", "must be Dot values")
            if (dot.region, dot.hlc) in dots and dots[(dot.region, dot.hlc)] != dot:
                _bad("siblings", f"two values for the write {dot.region}@{dot.hlc.encode()}")
            if not _covers(self._context, dot):
                _bad("context", f"must cover sibling {dot.region}@{dot.hlc.encode()}")
            dots[(dot.region, dot.hlc)] = dot
        self._dots = dots

    @property
    def context(self) -> VersionVector:
        """What to pass as ``supersedes`` to resolve everything read from this value."""
        return MappingProxyType(self._context)

    def siblings(self) -> list[Dot]:
        """The live siblings, sorted by ``(hlc, region)``."""
        return sorted(self._dots.values())

    def write(
        self, value: bytes, hlc: HlcTimestamp, region: str, supersedes: VersionVector | None = None
    ) -> MultiValue:
        """A new value where ``region`` wrote ``value`` at ``hlc``, resolving what it read.

        Raises :class:`InvalidArgumentError` if ``hlc`` is not newer than every
        write from ``region`` already in this context or in ``supersedes``.
        """
        new = Dot(hlc, region, value)
        read = _vv("supersedes", supersedes if supersedes is not None else {})
        for vv in (self._context, read):
            if region in vv and hlc <= vv[region]:
                _bad(
                    "hlc",
                    f"must be newer than {vv[region].encode()}, already seen from "
                    f"region {region!r}",
                )
        resolved = self.delete(read)
        return MultiValue([*resolved._dots.values(), new], {**resolved._context, region: hlc})

    def delete(self, supersedes: VersionVector) -> MultiValue:
        """A new value without the siblings ``supersedes`` covers (a causal delete)."""
        read = _vv("supersedes", supersedes)
        keep = [d for d in self._dots.values() if not _covers(read, d)]
        return MultiValue(keep, _vv_join(self._context, read))

    def merge(self, other: MultiValue) -> MultiValue:
        _same_type(self, other)
        keep: list[Dot] = []
        for key, dot in self._dots.items():
            theirs = other._dots.get(key)
            if theirs is not None:
                keep.append(max(dot, theirs))  # differ only if a writer reused an id
            elif not _covers(other._context, dot):
                keep.append(dot)
        keep += [
            d
            for k, d in other._dots.items()
            if k not in self._dots and not _covers(self._context, d)
        ]
        return MultiValue(keep, _vv_join(self._context, other._context))

    def to_canonical(self) -> bytes:
        return _dump(
            "multivalue",
            {
                "context": {r: t.encode() for r, t in self._context.items()},
                "siblings": [[d.hlc.encode(), d.region, _b64(d.value)] for d in self.siblings()],
            },
        )

    @classmethod
    def from_canonical(cls, data: bytes) -> MultiValue:
        doc = _load(data, "multivalue", {"context", "siblings"})
        context = {
            r: HlcTimestamp.decode(t)
            for r, t in _object("canonical.context", doc["context"]).items()
        }
        dots = [
            Dot(
                HlcTimestamp.decode(t),
                _region("canonical.siblings", r),
                _unb64("canonical.siblings", v),
            )
            for t, r, v in _triples("canonical.siblings", doc["siblings"])
        ]
        mv = cls(dots, context)
        _canonical_only(mv.to_canonical(), data)
        return mv


def _vv_join(
    a: Mapping[str, HlcTimestamp], b: Mapping[str, HlcTimestamp]
) -> dict[str, HlcTimestamp]:
    return {r: max(t for t in (a.get(r), b.get(r)) if t is not None) for r in a.keys() | b.keys()}


CrdtT = TypeVar("CrdtT", LwwRegister, PNCounter, ORSet, MultiValue)


def merge(a: CrdtT, b: CrdtT) -> CrdtT:
    """``a.merge(b)``: the join of two replicas of the same type. Never mutates either."""
    return a.merge(b)
