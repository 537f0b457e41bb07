"""flagd's targeting rules: the operators Meridian evaluates, their checks,
and the fractional bucketing every language must agree on byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.flags.targeting import (
    MAX_DEPTH,
    check_rule,
    compile_rule,
    distribute,
    murmur3_32,
    run,
)

VECTORS = Path(__file__).resolve().parents[2] / "testdata" / "flag_bucketing.json"


def vectors() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(VECTORS.read_text())
    assert len(doc["hash"]) >= 10 and len(doc["fractional"]) >= 100
    return doc


def test_murmur3_matches_the_shared_vectors() -> None:
    for v in vectors()["hash"]:
        assert murmur3_32(v["input"]) == v["murmur3_x86_32"], v["input"]
    # The reference value of MurmurHash3 x86_32("abc", seed 0) is 0xB3DD93FA.
    assert murmur3_32("abc") == 0xB3DD93FA


def test_fractional_matches_the_shared_vectors() -> None:
    doc = vectors()
    for v in doc["fractional"]:
        pairs = [(name, weight) for name, weight in v["weights"]]
        assert distribute(v["bucket_by"], pairs) == v["variant"], v
    # The check can fail: other weights move some users.
    moved = 0
    for v in doc["fractional"]:
        if len(v["weights"]) == 2 and v["weights"][0][1] == 50:
            moved += distribute(v["bucket_by"], [("on", 10), ("off", 90)]) != v["variant"]
    assert moved > 0


def test_fractional_in_a_rule_buckets_by_flag_key_and_targeting_key() -> None:
    rule = {"fractional": [["a", 50], ["b", 50]]}
    data = {"targetingKey": "user-1", "$flagd": {"flagKey": "f"}}
    assert run(rule, data) == distribute("fuser-1", [("a", 50), ("b", 50)])
    # A bucketing value given as the first argument replaces them.
    rule2 = {"fractional": [{"var": "email"}, ["a", 50], ["b", 50]]}
    data2 = {**data, "email": "x@example.com"}
    assert run(rule2, data2) == distribute("x@example.com", [("a", 50), ("b", 50)])
    # No targeting key and no bucketing value: no variant (the default is served).
    assert run(rule, {"$flagd": {"flagKey": "f"}}) is None
    # A weight that is not a whole number: no variant.
    assert run({"fractional": [["a", 0.5], ["b", 1]]}, data) is None
    # Weights all zero: no variant.
    assert run({"fractional": [["a", 0], ["b", 0]]}, data) is None


@given(st.text(max_size=40), st.integers(0, 100), st.integers(0, 100))
def test_growing_a_percentage_never_moves_a_user_out_of_it(key: str, low: int, high: int) -> None:
    low, high = min(low, high), max(low, high)
    before = distribute(key, [("new", low), ("old", 100 - low)])
    after = distribute(key, [("new", high), ("old", 100 - high)])
    if before == "new":
        assert after == "new"


@pytest.mark.parametrize(
    ("rule", "data", "expected"),
    [
        ({"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}, {"v": "1.10.0"}, True),
        ({"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}, {"v": "v1.1.9"}, False),
        ({"sem_ver": [{"var": "v"}, "^", "2.0.0"]}, {"v": "2.9.1"}, True),
        ({"sem_ver": [{"var": "v"}, "~", "2.3.0"]}, {"v": "2.4.0"}, False),
        ({"sem_ver": [{"var": "v"}, "=", "1.0.0"]}, {"v": "not-a-version"}, False),
        ({"sem_ver": [{"var": "v"}, "<", "1"]}, {"v": "0.9"}, True),
        ({"starts_with": [{"var": "email"}, "admin@"]}, {"email": "admin@x.io"}, True),
        ({"ends_with": [{"var": "email"}, "@x.io"]}, {"email": "a@y.io"}, False),
        ({"starts_with": [{"var": "n"}, "1"]}, {"n": 12}, False),
        ({"in": ["eu", {"var": "region"}]}, {"region": "eu-west"}, True),
        ({"in": [{"var": "region"}, ["us-east", "eu-west"]]}, {"region": "ap-south"}, False),
        (
            {"if": [{"==": [{"var": "region"}, "ap-south"]}, "on", "off"]},
            {"region": "ap-south"},
            "on",
        ),
        ({"!": [{"var": "beta"}]}, {"beta": True}, False),
        ({"and": [True, {"!=": [{"var": "x"}, 1]}]}, {"x": 2}, True),
    ],
)
def test_flagd_operators(rule: Any, data: dict[str, Any], expected: Any) -> None:
    assert run(rule, data) == expected


VARIANTS = {"on": True, "off": False}


@pytest.mark.parametrize(
    ("rule", "field", "rule_text"),
    [
        ({"map": [[1], {"var": ""}]}, "t.map", "not an operator"),
        ({"if": [{"log": "x"}, "on"]}, "t.if[0].log", "not an operator"),
        ({"a.b": [1]}, "t.a.b", "not an operator"),
        ({"$ref": "shared"}, "t.$ref", "not defined"),
        ({"fractional": "on"}, "t.fractional", "must be a list"),
        ({"fractional": [["on", 50], ["nope", 50]]}, "t.fractional[1][0]", "'nope'"),
        ({"fractional": [["on", -1]]}, "t.fractional[0][1]", "whole number"),
        ({"fractional": [["on", 1.5]]}, "t.fractional[0][1]", "whole number"),
        ({"fractional": [["on", 2**31], ["off", 1]]}, "t.fractional", "sum"),
        ({"fractional": [{"var": "email"}]}, "t.fractional", "at least one"),
        ({"sem_ver": [{"var": "v"}, "=>", "1.0.0"]}, "t.sem_ver[1]", "must be one of"),
        ({"if": [{"a": 1, "b": 2}, "on"]}, "t.if[0]", "one operation"),
    ],
)
def test_a_bad_rule_is_named_by_its_path(rule: Any, field: str, rule_text: str) -> None:
    violations = check_rule(rule, VARIANTS, "t")
    assert any(v.field == field and rule_text in v.rule for v in violations), violations


def test_a_rule_nested_too_deeply_is_refused_before_it_can_exhaust_the_stack() -> None:
    rule: Any = "on"
    for _ in range(MAX_DEPTH + 5):
        rule = {"!": [rule]}
    violations = check_rule(rule, VARIANTS, "t")
    assert violations and "deeper" in violations[0].rule
    # Very deep: still a clear refusal, not a RecursionError.
    for _ in range(5000):
        rule = {"!": [rule]}
    assert check_rule(rule, VARIANTS, "t")


def test_a_good_rule_passes_the_checks() -> None:
    rule = {
        "if": [
            {
                "and": [
                    {"sem_ver": [{"var": "app"}, ">=", "2.0.0"]},
                    {"in": [{"var": "region"}, ["eu-west"]]},
                ]
            },
            {
                "fractional": [
                    {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]},
                    ["on", 10],
                    ["off", 90],
                ]
            },
            "off",
        ]
    }
    assert check_rule(rule, VARIANTS, "t") == []


_NAMES = st.sampled_from(["region", "tier", "n", "targetingKey", "missing", "$flagd.flagKey"])
_LEAVES = st.one_of(
    st.integers(-3, 3),
    st.sampled_from(["on", "off", "us-east", "gold", "1.2.3", ""]),
    st.booleans(),
    st.none(),
    _NAMES.map(lambda n: {"var": n}),
)
_OPS = st.sampled_from(
    ["if", "==", "===", "!=", "!==", "<", "<=", ">", ">=", "!", "!!", "and", "or", "in",
     "cat", "substr", "missing", "starts_with", "ends_with", "sem_ver", "fractional"]
)  # fmt: skip
_RULES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda op, args: {op: args}, _OPS, st.lists(inner, max_size=4)),
        st.builds(lambda op, arg: {op: arg}, _OPS, inner),
        st.lists(inner, max_size=3),
    ),
    max_leaves=12,
)
_DATA = st.fixed_dictionaries(
    {
        "region": st.sampled_from(["us-east", "eu-west"]),
        "tier": st.sampled_from(["gold", "tin", 1]),
        "n": st.integers(-2, 2),
        "targetingKey": st.text(max_size=5),
        "$flagd": st.just({"flagKey": "f", "timestamp": 0}),
    }
)


def _outcome(fn: Any) -> Any:
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("raised", type(exc).__name__)


_TRICKY = [
    {"and": [True, 0, "x"]},
    {"and": [1, "x"]},
    {"and": []},
    {"or": [0, "", "x", 1]},
    {"or": [0, False]},
    {"or": []},
    {"if": []},
    {"if": [True]},
    {"if": [False, "a"]},
    {"if": [False, "a", "b"]},
    {"if": [0, "a", 1, "b"]},
    {"if": [0, "a", 0, "b", "c"]},
    {"if": [{"var": "n"}, "a", "b"]},
    {"!": {"var": "missing"}},
    {"missing": ["region", "nope"]},
    {"==": [1, "1"]},
    {"===": [1, "1"]},
    {"in": ["east", {"var": "region"}]},
    {"cat": [{"var": "$flagd.flagKey"}, {"var": "n"}]},
    {"substr": [{"var": "region"}, 3]},
    [1, {"var": "tier"}],
    {"a": 1, "b": 2},
]


@pytest.mark.parametrize("rule", _TRICKY)
def test_compiled_special_forms_match_the_interpreter(rule: Any) -> None:
    data = {"region": "us-east", "tier": "gold", "n": 0, "$flagd": {"flagKey": "f"}}
    assert _outcome(lambda: compile_rule(rule)(dict(data))) == _outcome(
        lambda: run(rule, dict(data))
    )


@settings(max_examples=400)
@given(_RULES, _DATA)
def test_a_compiled_rule_gives_what_the_interpreter_gives(rule: Any, data: dict[str, Any]) -> None:
    expected = _outcome(lambda: run(rule, dict(data)))
    try:
        compiled = compile_rule(rule)
    except ReferenceError:
        pytest.fail("every operator of the subset compiles")
    assert _outcome(lambda: compiled(dict(data))) == expected


def test_compiling_refuses_an_operator_outside_the_subset() -> None:
    with pytest.raises(ReferenceError):
        compile_rule({"if": [{"map": [[1], {"var": ""}]}, 1, 2]})
