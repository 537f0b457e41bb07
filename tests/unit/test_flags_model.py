"""Flag definitions in flagd's format: what is accepted, what is refused and
how, and how each evaluation's variant and reason are decided."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meridian.core.errors import InvalidArgumentError
from meridian.flags.model import (
    MAX_DEFINITION_BYTES,
    FlagDefinition,
    StoredFlag,
    context_violations,
    evaluate,
    key_violations,
    parse_definition,
    parse_definition_json,
    parse_flagd_file,
)

BOOL = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"if": [{"==": [{"var": "region"}, "ap-south"]}, "on", None]},
}


def stored(doc: dict[str, Any], killed: str = "") -> StoredFlag:
    return StoredFlag(parse_definition(doc), "spiffe://t/operator/a", 1, killed)


def ev(doc: dict[str, Any] | None, context: dict[str, Any] | None = None, **kw: Any) -> Any:
    flag = stored(doc, kw.pop("killed", "")) if doc is not None else None
    return evaluate("f", flag, context or {}, region=kw.pop("region", "us-east"), now_s=0)


def test_reasons() -> None:
    assert (ev(BOOL, region="ap-south").variant, ev(BOOL, region="ap-south").reason) == (
        "on",
        "TARGETING_MATCH",
    )
    # Targeting that returns null: the default variant.
    e = ev(BOOL)
    assert (e.value, e.variant, e.reason) == (False, "off", "DEFAULT")
    # No targeting: STATIC.
    e = ev({"variants": {"a": 1, "b": 2}, "defaultVariant": "b"})
    assert (e.value, e.reason) == (2, "STATIC")
    # DISABLED: the default variant, reason DISABLED.
    e = ev({**BOOL, "state": "DISABLED"}, region="ap-south")
    assert (e.variant, e.reason) == ("off", "DISABLED")
    # Killed: the off variant whatever the targeting says.
    e = ev(BOOL, region="ap-south", killed="off")
    assert (e.value, e.reason) == (False, "DISABLED")
    # Not defined.
    e = ev(None)
    assert (e.reason, e.error_code, e.value) == ("ERROR", "FLAG_NOT_FOUND", None)


def test_targeting_true_and_false_name_the_variants_true_and_false() -> None:
    doc = {
        "variants": {"true": "yes", "false": "no"},
        "defaultVariant": "false",
        "targeting": {"==": [{"var": "tier"}, "gold"]},
    }
    assert ev(doc, {"tier": "gold"}).value == "yes"
    assert ev(doc, {"tier": "tin"}).value == "no"


def test_targeting_that_names_no_variant_is_an_error_not_some_value() -> None:
    doc = {
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"var": "choice"},
    }
    e = ev(doc, {"choice": "maybe"})
    assert (e.reason, e.error_code, e.value) == ("ERROR", "GENERAL", None)
    assert "'maybe'" in e.error_details
    e = ev(doc, {"choice": 3})
    assert e.error_code == "GENERAL"


def test_the_serving_region_replaces_the_callers() -> None:
    assert ev(BOOL, {"region": "ap-south"}, region="us-east").variant == "off"


@pytest.mark.parametrize(
    ("doc", "field", "rule"),
    [
        ([], "definition", "JSON object"),
        ({"variants": {"on": True}}, "definition.defaultVariant", "required"),
        ({"variants": {"on": True}, "defaultVariant": "x"}, "definition.defaultVariant", "'x'"),
        ({"variants": [], "defaultVariant": "x"}, "definition.variants", "non-empty"),
        (
            {"variants": {"a": 1, "b": "1"}, "defaultVariant": "a"},
            "definition.variants",
            "one type",
        ),
        ({"variants": {"a": None}, "defaultVariant": "a"}, "definition.variants.a", "not null"),
        ({"variants": {"a": 1}, "defaultVariant": "a", "state": "on"}, "definition.state", ""),
        (
            {"variants": {"a": 1}, "defaultVariant": "a", "targeting": "x"},
            "definition.targeting",
            "",
        ),
        (
            {"variants": {"a": 1}, "defaultVariant": "a", "metadata": {"x": {}}},
            "definition.metadata.x",
            "",
        ),
        (
            {"variants": {"a": 1}, "defaultVariant": "a", "extra": 1},
            "definition.extra",
            "not a field",
        ),
        (
            {"variants": {str(i): i for i in range(300)}, "defaultVariant": "0"},
            "definition.variants",
            "at most",
        ),
    ],
)
def test_a_bad_definition_names_the_field_and_the_rule(doc: Any, field: str, rule: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        parse_definition(doc)
    assert any(v.field == field and rule in v.rule for v in err.value.violations), (
        err.value.violations
    )


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("{", "not valid JSON"),
        ('{"variants": {"a": NaN}, "defaultVariant": "a"}', "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "bytes"),
        ("[" * 20_000 + "]" * 20_000, "not valid JSON"),
        (
            json.dumps({"variants": {"a": "x" * MAX_DEFINITION_BYTES}, "defaultVariant": "a"}),
            "bytes",
        ),
    ],
)
def test_hostile_json_is_refused_naming_the_definition(text: str, rule: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        parse_definition_json(text)
    assert err.value.violations[0].field == "definition"
    assert rule in err.value.violations[0].rule


@pytest.mark.parametrize("key", ["", "a/b", "a b", "-x", "x" * 129, "é"])
def test_bad_keys(key: str) -> None:
    assert key_violations(key)


def test_good_keys() -> None:
    for key in ("new-checkout", "a", "A.b_c-9", "x" * 128):
        assert key_violations(key) == []


def test_stored_flags_round_trip_and_refuse_what_they_cannot_evaluate() -> None:
    flag = stored(BOOL, killed="off")
    assert StoredFlag.decode(flag.encode()) == flag
    doc = json.loads(flag.encode())
    doc["killed_variant"] = "gone"
    with pytest.raises(ValueError):
        StoredFlag.decode(json.dumps(doc).encode())
    doc = json.loads(flag.encode())
    doc["flag"]["targeting"] = {"newer_operator": [1]}
    with pytest.raises(InvalidArgumentError):
        StoredFlag.decode(json.dumps(doc).encode())


def test_off_variant() -> None:
    d = parse_definition(BOOL)
    assert d.off_variant() == "off"
    d2 = FlagDefinition("ENABLED", {"enabled": True, "disabled": False}, "enabled")
    assert d2.off_variant() == "disabled"
    d3 = FlagDefinition("ENABLED", {"a": "x", "b": "y"}, "a")
    with pytest.raises(InvalidArgumentError) as err:
        d3.off_variant()
    assert err.value.violations[0].field == "variant"
    with pytest.raises(InvalidArgumentError):
        d3.off_variant("c")
    assert d3.off_variant("b") == "b"


def test_a_flagd_file_with_shared_evaluators() -> None:
    text = json.dumps(
        {
            "$evaluators": {"eu": {"in": [{"var": "region"}, ["eu-west"]]}},
            "flags": {
                "eu-only": {
                    "state": "ENABLED",
                    "variants": {"on": True, "off": False},
                    "defaultVariant": "off",
                    "targeting": {"if": [{"$ref": "eu"}, "on", "off"]},
                },
                "color": {"variants": {"r": "red"}, "defaultVariant": "r"},
            },
        }
    )
    flags = parse_flagd_file(text)
    assert sorted(flags) == ["color", "eu-only"]
    e = evaluate("eu-only", StoredFlag(flags["eu-only"], "", 0), {}, region="eu-west", now_s=0)
    assert e.variant == "on"
    bad = json.dumps({"flags": {"x": {**BOOL, "targeting": {"$ref": "missing"}}, "b/c": BOOL}})
    with pytest.raises(InvalidArgumentError) as err:
        parse_flagd_file(bad)
    fields = {v.field for v in err.value.violations}
    assert "$ref.missing" in fields and "flags.b/c" in fields


def test_contexts() -> None:
    assert context_violations({"a": {"b": [1, {"c": 2}]}}) == []
    assert context_violations([1])[0].rule == "must be a JSON object"
    deep: Any = 1
    for _ in range(20):
        deep = {"x": deep}
    assert "deeper" in context_violations(deep)[0].rule
