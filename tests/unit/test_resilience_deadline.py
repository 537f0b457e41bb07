"""Deadline propagation: ``grpc-timeout`` and ``Meridian-Timeout-Ms`` in and out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.errors import DeadlineExceededError, InvalidArgumentError
from meridian.invocation.resilience.deadline import (
    GRPC_TIMEOUT_HEADER,
    GRPC_UNITS_NS,
    HTTP_TIMEOUT_HEADER,
    format_grpc_timeout,
    format_timeout_ms,
    outgoing_headers,
    parse_grpc_timeout,
    parse_timeout_ms,
    resolve_deadline,
)
from meridian.invocation.resilience.policy import TimeoutPolicy

UNIT_NS = dict(GRPC_UNITS_NS)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("100m", 100_000_000),
        ("5S", 5_000_000_000),
        ("1H", 3_600_000_000_000),
        ("2M", 120_000_000_000),
        ("7u", 7_000),
        ("99999999n", 99_999_999),
        ("0n", 0),
        ("00000001S", 1_000_000_000),
    ],
)
def test_parse_grpc_timeout(text: str, ns: int) -> None:
    assert parse_grpc_timeout(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "m",
        "100",
        "100ms",
        "100x",
        "100 m",
        " 100m",
        "-1S",
        "+1S",
        "1.5S",
        "1_0S",
        "123456789S",  # 9 digits
        "\u0661\u0662m",  # Arabic-Indic digits
        "1s",  # lower-case s is not a unit
        "1\x00S",
        "9" * 10_000 + "S",
    ],
)
def test_malformed_grpc_timeouts_are_rejected_naming_the_header(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_grpc_timeout(text)
    assert info.value.field == GRPC_TIMEOUT_HEADER
    assert "H, M, S, m, u, n" in str(info.value)
    assert len(str(info.value)) < 200  # hostile input is not echoed whole


def test_format_grpc_timeout_uses_the_finest_unit_that_fits() -> None:
    assert format_grpc_timeout(0) == "0n"
    assert format_grpc_timeout(99_999_999) == "99999999n"
    assert format_grpc_timeout(100_000_000) == "100000u"
    assert format_grpc_timeout(5_000_000_000) == "5000000u"
    assert format_grpc_timeout(3_600_000_000_000) == "3600000m"
    assert format_grpc_timeout(10**40) == "99999999H"
    with pytest.raises(ValueError):
        format_grpc_timeout(-1)


@given(st.integers(0, 99_999_999 * UNIT_NS["H"]))
def test_grpc_timeout_round_trip_never_lengthens_and_loses_under_one_unit(ns: int) -> None:
    text = format_grpc_timeout(ns)
    assert 2 <= len(text) <= 9
    back = parse_grpc_timeout(text)
    unit = UNIT_NS[text[-1]]
    assert back <= ns < back + unit
    assert ns == 0 or (ns - back) / ns < 1e-5


@given(st.integers(0, 99_999_999), st.sampled_from([u for u, _ in GRPC_UNITS_NS]))
def test_every_valid_grpc_timeout_survives_parse_format_parse(value: int, unit: str) -> None:
    ns = parse_grpc_timeout(f"{value}{unit}")
    assert parse_grpc_timeout(format_grpc_timeout(ns)) == ns


@given(st.text(max_size=12))
def test_any_text_either_parses_by_the_grammar_or_is_rejected(text: str) -> None:
    ok = 2 <= len(text) <= 9 and text[-1] in "HMSmun" and all(c in "0123456789" for c in text[:-1])
    if ok:
        assert parse_grpc_timeout(text) == int(text[:-1]) * UNIT_NS[text[-1]]
    else:
        with pytest.raises(InvalidArgumentError):
            parse_grpc_timeout(text)


def test_parse_timeout_ms() -> None:
    assert parse_timeout_ms("250") == 250
    assert parse_timeout_ms(" 250\t") == 250
    assert parse_timeout_ms("0") == 0
    assert parse_timeout_ms("99999999") == 99_999_999


@pytest.mark.parametrize(
    "text", ["", " ", "-1", "+5", "1.5", "1e3", "250ms", "1_000", "123456789", "\u0663", "0x10"]
)
def test_malformed_timeout_ms_is_rejected_naming_the_header(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_timeout_ms(text)
    assert info.value.field == HTTP_TIMEOUT_HEADER


@given(st.integers(0, 99_999_999))
def test_timeout_ms_round_trip(ms: int) -> None:
    assert parse_timeout_ms(format_timeout_ms(ms / 1000)) in (ms, ms - 1)  # float ms rounds down


def test_format_timeout_ms_rounds_down_and_caps() -> None:
    assert format_timeout_ms(0.2509) == "250"
    assert format_timeout_ms(0.0004) == "0"
    assert format_timeout_ms(1e12) == "99999999"


POLICY = TimeoutPolicy(default_s=30, max_s=60)


def test_resolve_deadline() -> None:
    assert resolve_deadline(100.0, POLICY) == 130.0
    assert resolve_deadline(100.0, POLICY, grpc_timeout="2S") == 102.0
    assert resolve_deadline(100.0, POLICY, timeout_ms="500") == 100.5
    # both present: the earlier wins
    assert resolve_deadline(100.0, POLICY, grpc_timeout="2S", timeout_ms="500") == 100.5
    # a hostile huge timeout is capped
    assert resolve_deadline(100.0, POLICY, grpc_timeout="99999999H") == 160.0


def test_resolve_deadline_reports_every_bad_header() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        resolve_deadline(0.0, POLICY, grpc_timeout="soon", timeout_ms="later")
    assert [v.field for v in info.value.violations] == [GRPC_TIMEOUT_HEADER, HTTP_TIMEOUT_HEADER]


def test_outgoing_headers_carry_the_remaining_time() -> None:
    assert outgoing_headers(10.25, 10.0, grpc=True) == {GRPC_TIMEOUT_HEADER: "250000u"}
    assert outgoing_headers(10.25, 10.0, grpc=False) == {HTTP_TIMEOUT_HEADER: "250"}
    with pytest.raises(DeadlineExceededError):
        outgoing_headers(10.0, 10.0, grpc=True)


@given(st.floats(0, 1000, allow_nan=False), st.floats(1e-6, 86_400, allow_nan=False))
def test_a_forwarded_deadline_is_never_later_than_ours(now: float, left: float) -> None:
    deadline = now + left
    if deadline <= now:
        return  # float rounding ate the remainder
    grpc = outgoing_headers(deadline, now, grpc=True)[GRPC_TIMEOUT_HEADER]
    http = outgoing_headers(deadline, now, grpc=False)[HTTP_TIMEOUT_HEADER]
    assert parse_grpc_timeout(grpc) / 1e9 <= deadline - now
    assert parse_timeout_ms(http) / 1e3 <= deadline - now
