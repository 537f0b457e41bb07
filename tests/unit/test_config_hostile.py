"""Pure tests of the configuration loader: hostile input, and properties of any input."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meridian.config import MeridianConfig, parse_config
from meridian.core.errors import ConfigError
from tests.unit.config_harness import (
    NO_LINKS,
    REGIONS,
    assert_violation,
    config_error,
    load_text,
    regions_toml,
)

# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "us\x00east",
        "us-east\x1b[31m",
        "\tus-east",
        "us-east\r",
        "ús-east",
        "東京",
        "us\u2010east",  # a Unicode hyphen
        "\uff55\uff53-east",  # fullwidth letters
        "us-east\u200b",  # zero-width space
        "x" * 10_000,
    ],
)
def test_hostile_region_names_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"region": [{"name": name}], "wan": {"link": []}}, env={})
    assert_violation(info.value, "region[0].name", "2-32 chars")


def test_region_name_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"region": [{"name": "us-east\n"}], "wan": {"link": []}}, env={})
    assert_violation(info.value, "region[0].name", "2-32 chars")


def test_hostile_region_name_from_a_toml_file(tmp_path: Path) -> None:
    err = config_error(tmp_path, NO_LINKS + '[[region]]\nname = "us\\u0000east\\u001b"\n')
    assert_violation(err, "region[0].name", "'us\\x00east\\x1b'")


def test_five_thousand_valid_links(tmp_path: Path) -> None:
    links = "".join(
        f'[[wan.link]]\na = "us-east"\nb = "eu-west"\nlatency_ms = {i % 500}\n\n'
        for i in range(5000)
    )
    config = load_text(tmp_path, regions_toml(*REGIONS) + links)
    assert config.latency("us-east", "eu-west") == 4999 % 500  # the last one wins
    assert len(config.wan.links) == 6


def test_five_thousand_bad_links_are_all_reported() -> None:
    links = [{"a": f"x{i}", "b": "us-east", "latency_ms": -1} for i in range(5000)]
    with pytest.raises(ConfigError) as info:
        parse_config({"wan": {"link": links}}, env={})
    assert len(info.value.violations) == 10_000
    assert info.value.violations[-1].field == "wan.link[4999].latency_ms"


def test_links_that_are_not_tables() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"wan": {"link": ["x"] * 5000 + [None, 3, [1]]}}, env={})
    assert len(info.value.violations) == 5003
    assert_violation(info.value, "wan.link[5002]", "must be a table with a, b and latency_ms")
    with pytest.raises(ConfigError) as info:
        parse_config({"wan": {"link": "us-east->eu-west"}}, env={})
    assert_violation(info.value, "wan.link", "must be an array of [[wan.link]] tables")


def test_unhashable_link_ends_are_reported() -> None:
    raw: dict[str, Any] = {"wan": {"link": [{"a": ["us-east"], "b": {"r": 1}, "latency_ms": 1}]}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    assert [v.field for v in info.value.violations] == ["wan.link[0].a", "wan.link[0].b"]


# -- properties -------------------------------------------------------------------------

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
AGENT_KEYS = st.sampled_from(
    [
        "status_interval_s",
        "peer_timeout_s",
        "quorum_timeout_s",
        "shutdown_grace_s",
        "log_level",
        "freshness_interval_s",
    ]
)


def only_config_errors(raw: dict[str, Any]) -> None:
    try:
        config = parse_config(raw, env={})
    except ConfigError as err:
        assert err.violations
        assert all(v.field and v.rule for v in err.violations)
    else:
        assert isinstance(config, MeridianConfig)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(AGENT_KEYS | st.text(max_size=20), JUNK, max_size=6))
def test_junk_agent_table_gives_a_config_or_a_config_error(agent: dict[str, Any]) -> None:
    only_config_errors({"agent": agent})


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["a", "b", "latency_ms", "jitter_ms", "one_way", "zzz"]),
            JUNK | st.sampled_from(REGIONS),
            max_size=5,
        )
        | JUNK,
        max_size=6,
    )
)
def test_junk_links_give_a_config_or_a_config_error(links: list[Any]) -> None:
    only_config_errors({"wan": {"link": links}})


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["name", "grpc_port", "ports", "nats_urls", "monitor_url", "zzz"]),
            JUNK | st.sampled_from(REGIONS),
            max_size=5,
        )
        | JUNK,
        max_size=4,
    )
)
def test_junk_regions_give_a_config_or_a_config_error(regions: list[Any]) -> None:
    only_config_errors({"region": regions, "wan": {"link": []}})


@given(st.floats(allow_nan=True) | st.integers())
def test_latency_is_accepted_only_between_0_and_60000(ms: float) -> None:
    raw = {"wan": {"link": [{"a": "us-east", "b": "eu-west", "latency_ms": ms}]}}
    if not math.isnan(ms) and 0 <= ms <= 60_000:
        assert parse_config(raw, env={}).latency("eu-west", "us-east") == ms
    else:
        with pytest.raises(ConfigError):
            parse_config(raw, env={})
