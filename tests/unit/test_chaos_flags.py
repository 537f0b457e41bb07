"""The flags checker on hand-written histories: each broken promise fails it."""

from __future__ import annotations

from typing import Any

from meridian.chaos.checkers.flags import FlagsChecker
from meridian.chaos.history import build

S = 1_000_000_000


def good() -> list[tuple[Any, ...]]:
    # Setup wrote generation 0 before the history began (the checker's initial).
    return [
        ("invoke", 1, "feval", "f", None, 2 * S, "ap-south"),
        ("ok", 1, "feval", "f", 0, 2 * S + 1, "ap-south"),
        ("invoke", 0, "fset", "f", 1, 3 * S, "eu-west"),
        ("ok", 0, "fset", "f", 1, 4 * S, "eu-west"),
        ("invoke", 1, "feval", "f", None, 5 * S, "ap-south"),
        ("ok", 1, "feval", "f", 1, 5 * S + 1, "ap-south"),
        ("invoke", 9, "fconverge", "f", None, 9 * S, "us-east"),
        ("ok", 9, "fconverge", "f", 1, 9 * S, "us-east"),
        ("invoke", 10, "fconverge", "f", None, 9 * S, "ap-south"),
        ("ok", 10, "fconverge", "f", 1, 9 * S, "ap-south"),
    ]


def test_a_good_history_passes() -> None:
    v = FlagsChecker().check(build(*good()))
    assert v.valid is True, v
    assert v.details["reads"] == 2 and v.details["highest_acknowledged"] == 1


def test_an_evaluation_that_went_back_fails() -> None:
    rows = [
        *good(),
        ("invoke", 1, "feval", "f", None, 6 * S, "ap-south"),
        ("ok", 1, "feval", "f", 0, 6 * S + 1, "ap-south"),
    ]
    v = FlagsChecker().check(build(*rows))
    assert v.valid is False and v.errors[0]["kind"] == "went back", v


def test_a_generation_nobody_wrote_or_a_refused_one_fails() -> None:
    invented = [
        *good(),
        ("invoke", 2, "feval", "f", None, 6 * S, "us-east"),
        ("ok", 2, "feval", "f", 7, 6 * S + 1, "us-east"),
    ]
    assert FlagsChecker().check(build(*invented)).errors[0]["kind"] == "invented"
    refused = [
        *good(),
        ("invoke", 0, "fset", "f", 2, 6 * S, "us-east"),
        ("fail", 0, "fset", "f", 2, 6 * S + 1, "us-east"),
        ("invoke", 2, "feval", "f", None, 7 * S, "us-east"),
        ("ok", 2, "feval", "f", 2, 7 * S + 1, "us-east"),
    ]
    assert FlagsChecker().check(build(*refused)).valid is False


def test_an_unavailable_evaluation_fails_unless_its_region_lost_its_processes() -> None:
    down = [
        *good(),
        ("invoke", 3, "feval", "f", None, 6 * S, "ap-south"),
        ("fail", 3, "feval", "f", None, 6 * S + 1, "ap-south"),
    ]
    assert FlagsChecker().check(build(*down)).errors[0]["kind"] == "unavailable"
    # A partition of ap-south excuses nothing.
    partition = {"name": "p", "phase": "start"}
    cut = [
        *down[:2],
        ("invoke", 8, "nemesis", "partition", partition, 5 * S, "ap-south"),
        *down[2:],
    ]
    assert FlagsChecker().check(build(*cut)).valid is False
    # A kill of ap-south does, while it lasts and for the grace after.
    kill = [
        ("invoke", 8, "nemesis", "kill-region", {"name": "k", "phase": "start"}, 5 * S, "ap-south")
    ]
    assert FlagsChecker().check(build(*(down[:2] + kill + down[2:]))).valid is True


def test_regions_that_do_not_converge_or_lose_a_change_fail() -> None:
    rows = good()
    diverged = [*rows[:-1], ("ok", 10, "fconverge", "f", 0, 9 * S, "ap-south")]
    assert FlagsChecker().check(build(*diverged)).errors[0]["kind"] == "diverged"
    lost = [
        *rows[:-3],
        ("ok", 9, "fconverge", "f", 0, 9 * S, "us-east"),
        ("invoke", 10, "fconverge", "f", None, 9 * S, "ap-south"),
        ("ok", 10, "fconverge", "f", 0, 9 * S, "ap-south"),
    ]
    assert FlagsChecker().check(build(*lost)).errors[0]["kind"] == "lost"


def test_nothing_to_check_is_not_a_pass() -> None:
    assert FlagsChecker().check(build(*good()[:2])).valid is None
    no_change = [r for r in good() if r[2] != "fset" and r[4] != 1]
    assert FlagsChecker().check(build(*no_change)).valid is None


def test_the_initial_generation_is_the_only_one_not_in_the_history() -> None:
    v = FlagsChecker(initial=5).check(build(*good()))
    assert v.valid is False and v.errors[0]["kind"] == "invented", v
