"""Whole-number settings take integers only: a fraction, a string or a boolean is
refused with the field and the rule, never truncated or coerced."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from meridian.config import MeridianConfig, parse_config
from meridian.core.errors import ConfigError
from tests.unit.test_config_reference import (
    DOC,
    PROBE,
    Probes,
    locate,
    model_value,
    parse_reference,
    violations,
)

# (TOML table, key, the field path in errors, lowest, highest)
WHOLE_NUMBERS = [
    ("gateway", "unhealthy_after", "gateway.unhealthy_after", 1, 100),
    ("invocation", "max_body_bytes", "invocation.max_body_bytes", 1024, 64 << 20),
    ("[keyspace]", "key_max_bytes", "keyspace[0].key_max_bytes", 1, 4096),
    ("[keyspace]", "value_max_bytes", "keyspace[0].value_max_bytes", 0, 8 << 20),
    ("agent", "regional_replicas", "agent.regional_replicas", 1, 5),
]
IDS = [field for _, _, field, _, _ in WHOLE_NUMBERS]


def toml(table: str, key: str, value: str) -> str:
    if table == "[keyspace]":
        return f'[[keyspace]]\nname = "ks"\n{key} = {value}\n'
    return f"[{table}]\n{key} = {value}\n"


def load(text: str) -> MeridianConfig:
    return parse_config(tomllib.loads(text), env={}, base_dir=Path("/numbers"))


def rules(text: str) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as info:
        load(text)
    found: dict[str, list[str]] = {}
    for v in info.value.violations:
        found.setdefault(v.field, []).append(v.rule)
    return found


def setting(config: MeridianConfig, table: str, key: str) -> Any:
    owner = config.keyspaces[0] if table == "[keyspace]" else getattr(config, table)
    return getattr(owner, key)


@pytest.mark.parametrize(("table", "key", "field", "low", "high"), WHOLE_NUMBERS, ids=IDS)
@pytest.mark.parametrize(
    ("value", "shown"),
    [("2.5", "2.5"), ("3.0", "3.0"), ('"2"', "'2'"), ("true", "True"), ("nan", "nan")],
)
def test_a_whole_number_setting_refuses_anything_but_an_integer(
    table: str, key: str, field: str, low: int, high: int, value: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(toml(table, key, value))
    rule = f"must be an integer, got {shown}"
    assert [(v.field, v.rule) for v in info.value.violations] == [(field, rule)]
    # What the user reads names the field and the rule.
    assert f"\n  - {field}: {rule}" in str(info.value)


@pytest.mark.parametrize(("table", "key", "field", "low", "high"), WHOLE_NUMBERS, ids=IDS)
def test_a_whole_number_setting_outside_its_range_names_the_range(
    table: str, key: str, field: str, low: int, high: int
) -> None:
    for value in (low - 1, high + 1):
        found = rules(toml(table, key, str(value)))
        assert found == {field: [f"must be an integer between {low} and {high}, got {value}"]}


@pytest.mark.parametrize(("table", "key", "field", "low", "high"), WHOLE_NUMBERS, ids=IDS)
def test_a_whole_number_setting_takes_both_ends_of_its_range(
    table: str, key: str, field: str, low: int, high: int
) -> None:
    ends = (1, 5) if key == "regional_replicas" else (low, high)
    for value in ends:
        loaded = setting(load(toml(table, key, str(value))), table, key)
        assert (type(loaded), loaded) == (int, value)


def test_regional_replicas_must_be_a_raft_group_size() -> None:
    for value in (2, 4):
        found = rules(toml("agent", "regional_replicas", str(value)))
        assert found == {
            "agent.regional_replicas": [f"must be 1, 3 or 5 (a Raft group size), got {value}"]
        }
    assert load(toml("agent", "regional_replicas", "3")).agent.regional_replicas == 3


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "[gateway]\nunhealthy_after = 2.5\n"
        "[invocation]\nmax_body_bytes = 1e6\n"
        "[agent]\nregional_replicas = 3.0\n"
        '[[keyspace]]\nname = "ks"\nkey_max_bytes = 64.0\nvalue_max_bytes = "1"\n'
    )
    assert set(rules(text)) == {field for _, _, field, _, _ in WHOLE_NUMBERS}


def documented_whole_numbers() -> list[tuple[str, str]]:
    """Every documented setting whose default is a whole number (ports included)."""
    stock = Probes.load().stock
    tables = parse_reference(DOC.read_text(encoding="utf-8")).tables
    found = []
    for table, rows in tables.items():
        for key in rows:
            try:
                value = model_value(stock, table, key, 0)
            except AttributeError:
                continue  # test_config_reference reports it
            if isinstance(value, int) and not isinstance(value, bool):
                found.append((table, key))
    return found


def test_the_whole_numbers_are_found() -> None:
    found = documented_whole_numbers()
    for table, key, _, _, _ in WHOLE_NUMBERS:
        assert (table.strip("[]"), key) in found
    assert ("resilience.retry", "max_attempts") in found
    assert ("region.ports", "client") in found


WHOLE = documented_whole_numbers()


@pytest.mark.parametrize(("table", "key"), WHOLE, ids=[f"{t}.{k}" for t, k in WHOLE])
@pytest.mark.parametrize("value", [2.5, 1000.0, "2", True])
def test_every_whole_number_setting_refuses_a_non_integer(table: str, key: str, value: Any) -> None:
    # Every setting the model keeps as an int, ports and [resilience] included, and
    # any added later: a new one read with Reader.number fails here.
    raw = copy.deepcopy(PROBE)
    node, path = locate(raw, table)
    node[key] = value
    found = violations(raw).get(f"{path}.{key}", [])
    assert any("integer" in rule for rule in found), found
