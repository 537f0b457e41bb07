"""The bounded-staleness checker on hand-written histories: bad ones fail, good ones pass."""

from __future__ import annotations

from typing import Any

from meridian.chaos.checkers.staleness import READ, WRITE, BoundedStalenessChecker
from meridian.chaos.history import History, build

S = 1_000_000_000  # one second in history nanoseconds
MS = 1_000_000


def writes(*acked_at_s: float) -> list[tuple[Any, ...]]:
    """Sequential writes of 1, 2, …: write n invoked 10 ms before its ack at ``acked_at_s[n-1]``."""
    rows: list[tuple[Any, ...]] = []
    for n, at in enumerate(acked_at_s, start=1):
        rows.append(("invoke", 0, WRITE, "k", n, int(at * S) - 10 * MS))
        rows.append(("ok", 0, WRITE, "k", n, int(at * S)))
    return rows


def read(
    at_s: float, value: int | None, bound: float, served: str = "bounded", asked: float = 1.0
) -> list[tuple[Any, ...]]:
    got = {"value": value, "served": served, "bound": bound, "max": asked}
    return [
        ("invoke", 1, READ, "k", {"max": asked}, int(at_s * S)),
        ("ok", 1, READ, "k", got, int(at_s * S) + 2 * MS),
    ]


def check(*rows: list[tuple[Any, ...]]) -> Any:
    h: History = build(*sorted((r for rs in rows for r in rs), key=lambda r: r[5]))
    return BoundedStalenessChecker("k").check(h)


def test_reads_within_their_bounds_are_valid() -> None:
    v = check(
        writes(1.0, 2.0, 3.0),
        read(2.5, 2, 0.6),  # 2 replaced at 3.0: fresh when read
        read(3.3, 2, 0.5),  # replaced 0.3 s before the read, bound 0.5
        read(3.4, 3, 0.0, served="strong"),
    )
    assert v.valid is True, v
    assert v.details["served"] == {"bounded": 2, "strong": 1}


def test_a_value_older_than_the_reported_bound_is_caught() -> None:
    # The failure: 2 s after 3 was acknowledged, a read of 2 claiming 66 ms.
    v = check(writes(1.0, 2.0, 3.0), read(5.0, 2, 0.066))
    assert v.valid is False
    assert "at least 2.000s old" in v.errors[0]["why"]


def test_a_later_larger_write_also_replaces_the_value() -> None:
    # 3 was not acknowledged (info), 4 was: reading 2 long after 4 is stale.
    h = writes(1.0, 2.0)
    h += [("invoke", 0, WRITE, "k", 3, int(2.5 * S)), ("info", 0, WRITE, "k", 3, int(3 * S))]
    h += [("invoke", 2, WRITE, "k", 4, int(3.1 * S)), ("ok", 2, WRITE, "k", 4, int(3.2 * S))]
    assert check(h, read(4.0, 2, 0.5)).valid is False
    # … and reading 3, whose write is indeterminate, right after is fine.
    assert check(h, read(3.3, 3, 0.5)).valid is True


def test_a_strong_answer_must_be_current() -> None:
    assert check(writes(1.0, 2.0), read(2.2, 1, 0.0, served="strong")).valid is False


def test_a_bound_above_the_one_asked_for_is_caught() -> None:
    v = check(writes(1.0), read(1.5, 1, 1.2, asked=1.0))
    assert v.valid is False
    assert "above the one asked for" in v.errors[0]["why"]


def test_a_bounded_request_served_eventual_is_caught() -> None:
    assert check(writes(1.0), read(1.5, 1, 0.1, served="eventual")).valid is False


def test_invented_and_refused_values_are_caught() -> None:
    assert check(writes(1.0), read(1.5, 7, 0.1)).valid is False
    refused = [("invoke", 0, WRITE, "k", 1, 1 * S), ("fail", 0, WRITE, "k", 1, int(1.1 * S))]
    assert check(refused, read(1.5, 1, 0.1)).valid is False


def test_a_value_from_the_future_is_caught() -> None:
    # The read ended before the write of its value began.
    assert check(read(0.5, 1, 0.1), writes(1.0)).valid is False


def test_nothing_to_check_is_unknown_not_valid() -> None:
    assert check(writes(1.0, 2.0)).valid is None
