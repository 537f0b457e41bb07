"""Conflict policies of ``replicated`` keyspaces: lattice laws, convergence, the wire form."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.core.errors import InvalidArgumentError
from meridian.core.hlc import HlcTimestamp
from meridian.state.model.crdt import (
    MAX_COUNT,
    Dot,
    LwwRegister,
    MultiValue,
    ORSet,
    PNCounter,
    Tag,
    merge,
)

REGIONS = ("ap-south", "eu-west", "us-east")
regions = st.sampled_from(REGIONS)
# A small HLC space, so ties and equal ids happen often.
small_hlcs = st.builds(HlcTimestamp, st.integers(0, 12), st.integers(0, 2))
values = st.binary(max_size=4)
elements = st.text(max_size=3)  # any Unicode, no lone surrogates

lww_states = st.builds(LwwRegister, st.none() | values, small_hlcs, regions)
counts = st.dictionaries(regions, st.integers(0, 40))
pn_states = st.builds(PNCounter, counts, counts)
tags = st.builds(Tag, regions, st.sampled_from(["1", "2", "3", "4"]))
entries = st.lists(st.tuples(elements, tags), max_size=6)
orset_states = st.builds(ORSet, entries, entries)


@st.composite
def multivalue_states(draw: st.DrawFn) -> MultiValue:
    written = draw(
        st.lists(st.tuples(regions, small_hlcs, values), max_size=5, unique_by=lambda w: w[:2])
    )
    context: dict[str, HlcTimestamp] = draw(st.dictionaries(regions, small_hlcs))
    for region, hlc, _ in written:
        context[region] = max(context.get(region, hlc), hlc)
    return MultiValue([Dot(hlc, region, value) for region, hlc, value in written], context)


STATES: dict[str, st.SearchStrategy[Any]] = {
    "lww": lww_states,
    "pncounter": pn_states,
    "orset": orset_states,
    "multivalue": multivalue_states(),
}
KINDS = pytest.mark.parametrize("kind", list(STATES))


# --- lattice laws, for every type -------------------------------------------------


@KINDS
@given(data=st.data())
def test_merge_is_commutative(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(STATES[kind]), data.draw(STATES[kind])
    assert merge(a, b).to_canonical() == merge(b, a).to_canonical()


@KINDS
@given(data=st.data())
def test_merge_is_associative(kind: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(STATES[kind]) for _ in range(3))
    assert merge(merge(a, b), c).to_canonical() == merge(a, merge(b, c)).to_canonical()


@KINDS
@given(data=st.data())
def test_merge_is_idempotent_and_never_mutates(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(STATES[kind]), data.draw(STATES[kind])
    before = (a.to_canonical(), b.to_canonical())
    merged = merge(a, b)
    assert merge(a, a) == a
    assert merge(merged, b) == merged  # re-delivering a state changes nothing
    assert (a.to_canonical(), b.to_canonical()) == before


@KINDS
@given(data=st.data())
def test_canonical_round_trip(kind: str, data: st.DataObject) -> None:
    value = data.draw(STATES[kind])
    encoded = value.to_canonical()
    decoded = type(value).from_canonical(encoded)
    assert decoded == value
    assert decoded.to_canonical() == encoded
    json.loads(encoded)  # plain JSON that any SDK can read


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (PNCounter(), ORSet()),
        (LwwRegister(None, HlcTimestamp(1), "us-east"), MultiValue()),
    ],
)
def test_merging_different_policies_is_refused(a: Any, b: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="can only merge"):
        merge(a, b)


# --- convergence: replicas exchange states in any order, with duplicates ----------


@dataclass
class Run:
    """Three regional replicas, and every state any of them ever held."""

    replicas: list[Any]
    snapshots: list[Any] = field(default_factory=list)

    def set(self, i: int, state: Any) -> None:
        self.replicas[i] = state
        self.snapshots.append(state)

    def sync(self, src: int, dst: int) -> None:
        self.set(dst, merge(self.replicas[dst], self.replicas[src]))


def _deliver(data: st.DataObject, run: Run, start: Any) -> bytes:
    """Fold every snapshot, some twice, in an order hypothesis picks, into ``start``."""
    dups = data.draw(st.lists(st.sampled_from(run.snapshots), max_size=len(run.snapshots)))
    order = data.draw(st.permutations(run.snapshots + dups))
    return functools.reduce(merge, order, start).to_canonical()


steps = st.lists(
    st.tuples(st.sampled_from(["op", "op", "sync"]), st.integers(0, 2), st.integers(0, 2)),
    max_size=30,
)


def _converges(data: st.DataObject, run: Run, empty: Any) -> Any:
    for i in range(3):
        for j in range(3):
            run.sync(i, j)
    everything = functools.reduce(merge, run.snapshots, empty)
    # After a full exchange every replica holds the same bytes ...
    assert {r.to_canonical() for r in run.replicas} == {everything.to_canonical()}
    # ... and so does any replica fed every state ever held, in any order, repeatedly.
    assert {_deliver(data, run, empty) for _ in range(3)} == {everything.to_canonical()}
    return everything


@settings(max_examples=150)
@given(data=st.data(), history=steps)
def test_pn_counter_converges_and_loses_no_increment(
    data: st.DataObject, history: list[tuple[str, int, int]]
) -> None:
    run = Run([PNCounter()] * 3)
    total = 0
    for action, i, j in history:
        if action == "sync":
            run.sync(i, j)
            continue
        delta = data.draw(st.integers(-5, 5))
        total += delta
        run.set(i, run.replicas[i].increment(REGIONS[i], delta))
    assert _converges(data, run, PNCounter()).value == total


@settings(max_examples=150)
@given(data=st.data(), history=steps)
def test_or_set_converges_and_loses_no_add_that_was_not_observed_removed(
    data: st.DataObject, history: list[tuple[str, int, int]]
) -> None:
    run = Run([ORSet()] * 3)
    adds: dict[tuple[str, Tag], bool] = {}  # add -> removed by someone who saw it
    sequence = [0, 0, 0]
    for action, i, j in history:
        if action == "sync":
            run.sync(i, j)
            continue
        element = data.draw(st.sampled_from(["a", "b", "é"]))
        if data.draw(st.booleans()):
            sequence[i] += 1
            tag = Tag(REGIONS[i], str(sequence[i]))
            adds[(element, tag)] = False
            run.set(i, run.replicas[i].add(element, tag))
        else:
            for tag in run.replicas[i].tags(element):
                adds[(element, tag)] = True
            run.set(i, run.replicas[i].remove(element))
    expected = {element for (element, _), removed in adds.items() if not removed}
    assert _converges(data, run, ORSet()).elements == expected


@settings(max_examples=150)
@given(data=st.data(), history=steps)
def test_multi_value_converges_keeping_exactly_the_unresolved_writes(
    data: st.DataObject, history: list[tuple[str, int, int]]
) -> None:
    run = Run([MultiValue()] * 3)
    writes: list[Dot] = []
    resolved_by: list[dict[str, HlcTimestamp]] = []
    clock = 0
    for action, i, j in history:
        if action == "sync":
            run.sync(i, j)
            continue
        # The client read replica j (possibly elsewhere), or writes blind.
        read = data.draw(st.sampled_from([run.replicas[j].context, {}]))
        resolved_by.append(dict(read))
        if data.draw(st.integers(0, 4)) == 0:
            run.set(i, run.replicas[i].delete(read))
            continue
        clock += 1
        dot = Dot(HlcTimestamp(clock), REGIONS[i], data.draw(values))
        writes.append(dot)
        run.set(i, run.replicas[i].write(dot.value, dot.hlc, dot.region, read))
    survivors = [
        w for w in writes if not any(w.region in vv and w.hlc <= vv[w.region] for vv in resolved_by)
    ]
    assert _converges(data, run, MultiValue()).siblings() == sorted(survivors)


@given(
    st.lists(
        st.tuples(small_hlcs, regions, st.none() | values), min_size=1, unique_by=lambda w: w[:2]
    ),
    st.data(),
)
def test_lww_converges_on_the_max_hlc_then_region(
    writes: list[tuple[HlcTimestamp, str, bytes | None]], data: st.DataObject
) -> None:
    registers = [LwwRegister(value, hlc, region) for hlc, region, value in writes]
    winner = max(registers, key=lambda r: (r.hlc, r.region))
    for _ in range(3):
        order = data.draw(st.permutations(registers + registers[:2]))
        assert functools.reduce(merge, order) == winner


# --- behaviour of each policy -------------------------------------------------------


def test_lww_region_breaks_hlc_ties_and_tombstones_win_when_newer() -> None:
    t = HlcTimestamp(100, 1)
    us = LwwRegister(b"us", t, "us-east")
    eu = LwwRegister(b"eu", t, "eu-west")
    assert merge(eu, us) is us and merge(us, eu) is us
    deleted = LwwRegister(None, HlcTimestamp(100, 2), "ap-south")
    assert merge(us, deleted).is_tombstone
    broken = LwwRegister(b"other", t, "us-east")  # a writer reused (hlc, region)
    assert merge(us, broken) == merge(broken, us) == us  # b"us" > b"other"


def test_pn_counter_arithmetic_and_limits() -> None:
    c = PNCounter().increment("us-east", 5).increment("us-east", -2).increment("eu-west", -4)
    assert c.value == -1
    assert dict(c.p) == {"us-east": 5} and dict(c.n) == {"eu-west": 4, "us-east": 2}
    assert c.increment("ap-south", 0) == c
    with pytest.raises(InvalidArgumentError) as err:
        c.increment("us-east", MAX_COUNT)
    assert err.value.field == "delta"
    for region, delta in [("US", 1), ("us-east", True), ("us-east", 1.5)]:
        with pytest.raises(InvalidArgumentError):
            c.increment(region, delta)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        PNCounter({"us-east": -1})
    assert PNCounter({"us-east": 0}) == PNCounter()


def test_or_set_add_wins_over_a_concurrent_remove() -> None:
    base = ORSet().add("x", Tag("us-east", "1"))
    removed_in_eu = base.remove("x")
    re_added_in_us = base.add("x", Tag("us-east", "2"))
    assert "x" not in removed_in_eu
    assert merge(removed_in_eu, re_added_in_us).elements == {"x"}
    # A remove that has seen every add wins.
    assert merge(removed_in_eu, base).elements == frozenset()


def test_or_set_tags_are_single_use() -> None:
    s = ORSet().add("x", Tag("us-east", "1"))
    assert s.add("x", Tag("us-east", "1")) is s  # a re-delivered add
    gone = s.remove("x")
    assert gone.add("x", Tag("us-east", "1")) == gone  # still removed
    with pytest.raises(InvalidArgumentError, match="already used"):
        s.add("y", Tag("us-east", "1"))
    assert Tag.from_hlc("eu-west", HlcTimestamp(5, 1)) == Tag("eu-west", "0000000000050001")
    with pytest.raises(InvalidArgumentError):
        Tag("eu-west", "has space")


def test_multi_value_keeps_concurrent_writes_and_resolves_what_was_read() -> None:
    a = MultiValue().write(b"1", HlcTimestamp(10), "us-east")
    b = MultiValue().write(b"2", HlcTimestamp(11), "eu-west")
    both = merge(a, b)
    assert [d.value for d in both.siblings()] == [b"1", b"2"]
    resolved = both.write(b"3", HlcTimestamp(12), "us-east", supersedes=both.context)
    assert [d.value for d in resolved.siblings()] == [b"3"]
    assert merge(resolved, a) == resolved  # late delivery does not resurrect
    blind = both.write(b"4", HlcTimestamp(13), "ap-south")
    assert len(blind.siblings()) == 3
    assert both.delete(both.context).siblings() == []
    with pytest.raises(InvalidArgumentError) as err:
        resolved.write(b"5", HlcTimestamp(12), "us-east")
    assert err.value.field == "hlc"
    with pytest.raises(InvalidArgumentError, match="must cover"):
        MultiValue([Dot(HlcTimestamp(5), "us-east", b"")], {"us-east": HlcTimestamp(4)})


# --- the wire form ---------------------------------------------------------------------


def test_canonical_bytes_are_pinned() -> None:
    t = HlcTimestamp(1, 2)
    assert LwwRegister(b"hi", t, "us-east").to_canonical() == (
        b'{"hlc":"0000000000010002","region":"us-east","type":"lww","v":1,"value":"aGk="}'
    )
    assert LwwRegister(None, t, "us-east").to_canonical().endswith(b'"v":1,"value":null}')
    assert PNCounter({"us-east": 3, "eu-west": 1}, {"eu-west": 2}).to_canonical() == (
        b'{"n":{"eu-west":2},"p":{"eu-west":1,"us-east":3},"type":"pncounter","v":1}'
    )
    s = ORSet().add("\u00e9\x1f", Tag("us-east", "2")).add("a", Tag("us-east", "1"))
    assert (
        s.remove("a").to_canonical()
        == (
            '{"live":[["\u00e9\\u001f","us-east","2"]],"tombstones":[["a","us-east","1"]],'
            '"type":"orset","v":1}'
        ).encode()
    )
    mv = MultiValue().write(b"\x00", t, "eu-west")
    assert mv.to_canonical() == (
        b'{"context":{"eu-west":"0000000000010002"},'
        b'"siblings":[["0000000000010002","eu-west","AA=="]],"type":"multivalue","v":1}'
    )


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "lww": LwwRegister.from_canonical,
    "pncounter": PNCounter.from_canonical,
    "orset": ORSet.from_canonical,
    "multivalue": MultiValue.from_canonical,
}
LWW = '{"hlc":"0000000000010002","region":"us-east","type":"lww","v":1,"value":"aGk="}'


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("lww", ""),
        ("lww", "not json"),
        ("lww", "[]"),
        ("lww", LWW.replace('"v":1', '"v":2')),
        ("lww", LWW.replace('"v":1', '"v":true')),
        ("lww", LWW.replace('"v":1', '"v":1.0')),
        ("lww", LWW.replace('"type":"lww"', '"type":"orset"')),
        ("lww", LWW.replace('"v":1,', '"v":1,"extra":0,')),
        ("lww", LWW.replace('"region":"us-east",', "")),
        ("lww", LWW.replace('"region":"us-east"', '"region":"US"')),
        ("lww", LWW.replace('"region":"us-east"', '"region":["us-east"]')),
        ("lww", LWW.replace("aGk=", "aGk")),  # unpadded base64
        ("lww", LWW.replace("aGk=", "aGl=")),  # non-canonical padding bits
        ("lww", LWW.replace("aGk=", "!!!!")),
        ("lww", LWW.replace("0000000000010002", "00000000000A0002")),
        ("lww", LWW.replace(",", ", ")),  # valid JSON, not canonical
        ("lww", LWW.replace('"v":1', '"v":1,"v":1')),  # duplicate key
        ("lww", LWW.replace('"v":1', '"v":NaN')),
        ("lww", "[" * 100_000 + "]" * 100_000),
        ("pncounter", '{"n":{},"p":{"us-east":' + "9" * 5000 + '},"type":"pncounter","v":1}'),
        ("pncounter", '{"n":{},"p":{"us-east":9007199254740992},"type":"pncounter","v":1}'),
        ("pncounter", '{"n":{},"p":{"us-east":0},"type":"pncounter","v":1}'),
        ("pncounter", '{"n":{},"p":{"us-east":-1},"type":"pncounter","v":1}'),
        ("pncounter", '{"n":{},"p":{"us-east":true},"type":"pncounter","v":1}'),
        ("pncounter", '{"n":[],"p":{},"type":"pncounter","v":1}'),
        ("pncounter", '{"n":{},"p":{"us-east":1,"eu-west":1},"type":"pncounter","v":1}'),
        ("orset", '{"live":[["a","us-east"]],"tombstones":[],"type":"orset","v":1}'),
        ("orset", '{"live":[["a","us-east",1]],"tombstones":[],"type":"orset","v":1}'),
        ("orset", '{"live":[["\\ud800","us-east","1"]],"tombstones":[],"type":"orset","v":1}'),
        (
            "orset",
            '{"live":[["b","us-east","1"],["a","us-east","2"]],"tombstones":[],'
            '"type":"orset","v":1}',
        ),
        (
            "orset",
            '{"live":[["a","us-east","1"]],"tombstones":[["a","us-east","1"]],'
            '"type":"orset","v":1}',
        ),
        (
            "multivalue",
            '{"context":{},"siblings":[["0000000000010002","us-east","AA=="]],'
            '"type":"multivalue","v":1}',
        ),
        (
            "multivalue",
            '{"context":{"us-east":"00000000000100"},"siblings":[],"type":"multivalue","v":1}',
        ),
        ("multivalue", '{"context":{"us-east":7},"siblings":[],"type":"multivalue","v":1}'),
    ],
)
def test_malformed_canonical_input_is_a_clear_invalid_argument(kind: str, text: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        DECODERS[kind](text.encode("utf-8", "surrogatepass"))
    assert err.value.violations[0].rule


@pytest.mark.parametrize("bad", ["a str", bytearray(b"{}"), None])
def test_canonical_input_must_be_bytes(bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="must be bytes"):
        PNCounter.from_canonical(bad)


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="not valid UTF-8 JSON"):
        ORSet.from_canonical(
            b'{"live":[["\xff","us-east","1"]],"tombstones":[],"type":"orset","v":1}'
        )


@KINDS
@given(data=st.data())
def test_corrupted_canonical_bytes_fail_cleanly_or_decode_canonically(
    kind: str, data: st.DataObject
) -> None:
    encoded = bytearray(data.draw(STATES[kind]).to_canonical())
    at = data.draw(st.integers(0, len(encoded) - 1))
    action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
    byte = data.draw(st.integers(0, 255))
    if action == "flip":
        encoded[at] = byte
    elif action == "drop":
        del encoded[at]
    else:
        encoded.insert(at, byte)
    try:
        decoded = DECODERS[kind](bytes(encoded))
    except InvalidArgumentError:
        return
    assert decoded.to_canonical() == bytes(encoded)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@KINDS
@given(
    body=st.dictionaries(
        st.sampled_from(
            ["hlc", "region", "value", "n", "p", "live", "tombstones", "context", "siblings"]
        ),
        json_values,
    )
)
def test_hostile_documents_of_the_right_type_fail_cleanly(kind: str, body: dict[str, Any]) -> None:
    doc = json.dumps({"type": kind, "v": 1, **body}, sort_keys=True, separators=(",", ":"))
    try:
        decoded = DECODERS[kind](doc.encode("utf-8", "surrogatepass"))
    except InvalidArgumentError:
        return
    assert decoded.to_canonical() == doc.encode()
