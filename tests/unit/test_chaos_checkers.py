"""Checkers on hand-written histories: known-bad ones must fail, good ones pass."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from meridian.chaos.checkers.bank import BankChecker
from meridian.chaos.checkers.clocks import HlcChecker
from meridian.chaos.checkers.convergence import ConvergenceChecker
from meridian.chaos.checkers.effects import ExactlyOnceChecker
from meridian.chaos.checkers.linearizable import LinearizableChecker
from meridian.chaos.checkers.refusals import RefusedWritesInvisibleChecker, failed_as_indeterminate
from meridian.chaos.history import History, build

needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="the Porcupine command needs Go")

# -- linearizability (Porcupine) ------------------------------------------------


@needs_go
def test_sequential_register_is_linearizable(tmp_path: Path) -> None:
    h = build(
        ("invoke", 0, "write", "k", 1, 0),
        ("ok", 0, "write", "k", 1, 10),
        ("invoke", 1, "cas", "k", [1, 2], 20),
        ("ok", 1, "cas", "k", [1, 2], 30),
        ("invoke", 0, "read", "k", None, 40),
        ("ok", 0, "read", "k", 2, 50),
    )
    v = LinearizableChecker(tmp_path).check(h)
    assert v.valid is True, v
    assert (tmp_path / "linearizability.html").stat().st_size > 1000


@needs_go
def test_stale_read_is_not_linearizable() -> None:
    h = build(
        ("invoke", 0, "write", "k", 1, 0),
        ("ok", 0, "write", "k", 1, 10),
        ("invoke", 1, "write", "k", 2, 20),
        ("ok", 1, "write", "k", 2, 30),
        ("invoke", 2, "read", "k", None, 40),
        ("ok", 2, "read", "k", 1, 50),
    )
    v = LinearizableChecker().check(h)
    assert v.valid is False, v
    assert v.errors == [{"key": "k", "result": "Illegal"}]


def _conflict(h: History, index: int) -> History:
    """``h`` with event ``index`` (a failed cas) answered CONFLICT by the agent."""
    events = list(h.events)
    events[index] = dataclasses.replace(
        events[index], error="ConflictError: CONFLICT: k: expected revision 1, current 3"
    )
    return History(events, t0_ns=0, wall_t0_ns=0)


@needs_go
def test_a_conflict_that_no_write_caused_is_not_linearizable() -> None:
    # The register held 1 before, during and after the cas from 1: CONFLICT lied.
    h = build(
        ("invoke", 0, "write", "k", 1, 0),
        ("ok", 0, "write", "k", 1, 10),
        ("invoke", 1, "cas", "k", [1, 2], 20),
        ("fail", 1, "cas", "k", [1, 2], 30),
        ("invoke", 2, "read", "k", None, 40),
        ("ok", 2, "read", "k", 1, 50),
    )
    assert LinearizableChecker().check(h).valid is True  # a plain failure says nothing
    v = LinearizableChecker().check(_conflict(h, 3))
    assert v.valid is False, v


@needs_go
def test_a_conflict_with_a_concurrent_write_is_linearizable() -> None:
    h = build(
        ("invoke", 0, "write", "k", 1, 0),
        ("ok", 0, "write", "k", 1, 10),
        ("invoke", 1, "cas", "k", [1, 2], 20),
        ("invoke", 2, "write", "k", 3, 21),
        ("ok", 2, "write", "k", 3, 25),
        ("fail", 1, "cas", "k", [1, 2], 30),
        ("invoke", 3, "read", "k", None, 40),
        ("ok", 3, "read", "k", 3, 50),
    )
    v = LinearizableChecker().check(_conflict(h, 5))
    assert v.valid is True, v


@needs_go
def test_lost_write_is_not_linearizable() -> None:
    # An acknowledged write that no later read sees: the key reads as absent.
    h = build(
        ("invoke", 0, "write", "k", 7, 0),
        ("ok", 0, "write", "k", 7, 10),
        ("invoke", 1, "read", "k", None, 20),
        ("ok", 1, "read", "k", None, 30),
    )
    assert LinearizableChecker().check(h).valid is False


@needs_go
def test_acknowledged_cas_needs_its_expected_value() -> None:
    h = build(
        ("invoke", 0, "write", "k", 1, 0),
        ("ok", 0, "write", "k", 1, 10),
        ("invoke", 1, "cas", "k", [5, 6], 20),
        ("ok", 1, "cas", "k", [5, 6], 30),
    )
    assert LinearizableChecker().check(h).valid is False


@needs_go
def test_indeterminate_write_may_or_may_not_happen() -> None:
    seen = build(
        ("invoke", 0, "write", "k", 1, 0),
        ("ok", 0, "write", "k", 1, 10),
        ("invoke", 1, "write", "k", 2, 20),
        ("info", 1, "write", "k", 2, 30),
        ("invoke", 2, "read", "k", None, 100),
        ("ok", 2, "read", "k", 2, 110),
        ("invoke", 3, "read", "k", None, 120),
        ("ok", 3, "read", "k", 2, 130),
    )
    v = LinearizableChecker().check(seen)
    assert v.valid is True, v
    assert v.details["porcupine"]["indeterminate"] == 1
    not_seen = build(
        ("invoke", 0, "write", "k", 1, 0),
        ("ok", 0, "write", "k", 1, 10),
        ("invoke", 1, "cas", "k", [1, 2], 20),
        ("info", 1, "cas", "k", [1, 2], 30),
        ("invoke", 2, "read", "k", None, 100),
        ("ok", 2, "read", "k", 1, 110),
    )
    assert LinearizableChecker().check(not_seen).valid is True
    # An invoke the run never completed is indeterminate too.
    open_ = build(
        ("invoke", 1, "write", "k", 3, 0),
        ("invoke", 2, "read", "k", None, 100),
        ("ok", 2, "read", "k", 3, 110),
    )
    assert LinearizableChecker().check(open_).valid is True


@needs_go
def test_indeterminate_write_cannot_be_seen_before_it_was_invoked() -> None:
    h = build(
        ("invoke", 2, "read", "k", None, 0),
        ("ok", 2, "read", "k", 9, 10),
        ("invoke", 1, "write", "k", 9, 20),
        ("info", 1, "write", "k", 9, 30),
    )
    assert LinearizableChecker().check(h).valid is False


@needs_go
def test_failed_ops_did_not_happen() -> None:
    h = build(
        ("invoke", 0, "write", "k", 1, 0),
        ("ok", 0, "write", "k", 1, 10),
        ("invoke", 1, "cas", "k", [1, 2], 20),
        ("fail", 1, "cas", "k", [1, 2], 30),
        ("invoke", 2, "read", "k", None, 40),
        ("ok", 2, "read", "k", 2, 50),
    )
    assert LinearizableChecker().check(h).valid is False


@needs_go
def test_keys_are_independent_registers() -> None:
    h = build(
        ("invoke", 0, "write", "a", 1, 0),
        ("ok", 0, "write", "a", 1, 10),
        ("invoke", 1, "read", "b", None, 20),
        ("ok", 1, "read", "b", None, 30),
    )
    v = LinearizableChecker().check(h)
    assert v.valid is True
    assert set(v.details["porcupine"]["keys"]) == {"a", "b"}


def test_no_register_ops_is_unknown_not_valid() -> None:
    assert LinearizableChecker().check(History()).valid is None


# -- bank ------------------------------------------------------------------------

ACCOUNTS = ["a", "b"]


def _bank(*snapshots: dict[str, int]) -> History:
    rows: list[tuple[object, ...]] = [
        ("invoke", 0, "transfer", "bank", {"from": "a", "to": "b", "amount": 5}, 0),
        ("ok", 0, "transfer", "bank", None, 5),
    ]
    for i, snap in enumerate(snapshots):
        rows += [
            ("invoke", 1, "balances", "bank", None, 10 + i),
            ("ok", 1, "balances", "bank", snap, 11 + i),
        ]
    return build(*rows)


def test_bank_conserved_is_valid() -> None:
    v = BankChecker(20, ACCOUNTS).check(_bank({"a": 10, "b": 10}, {"a": 5, "b": 15}))
    assert v.valid is True, v


def test_bank_lost_money_is_invalid() -> None:
    v = BankChecker(20, ACCOUNTS).check(_bank({"a": 10, "b": 10}, {"a": 5, "b": 10}))
    assert v.valid is False
    assert "total 15" in v.errors[0]["problem"]


def test_bank_negative_balance_is_invalid() -> None:
    assert BankChecker(20, ACCOUNTS).check(_bank({"a": -5, "b": 25})).valid is False


def test_bank_missing_account_is_invalid() -> None:
    assert BankChecker(20, ACCOUNTS).check(_bank({"a": 20})).valid is False


def test_bank_without_reads_is_unknown() -> None:
    assert BankChecker(20, ACCOUNTS).check(_bank()).valid is None


# -- exactly once ----------------------------------------------------------------


def _commands(effects: dict[str, int], *, second: str = "ok") -> History:
    return build(
        ("invoke", 0, "command", "order-1", None, 0),
        ("ok", 0, "command", "order-1", None, 5),
        ("invoke", 1, "command", "order-2", None, 6),
        (second, 1, "command", "order-2", None, 7),
        ("invoke", 2, "effects", None, None, 10),
        ("ok", 2, "effects", None, effects, 11),
    )


def test_one_effect_per_key_is_valid() -> None:
    assert ExactlyOnceChecker().check(_commands({"order-1": 1, "order-2": 1})).valid is True
    # An indeterminate command may have had no effect.
    assert ExactlyOnceChecker().check(_commands({"order-1": 1}, second="info")).valid is True


def test_duplicated_effect_is_invalid() -> None:
    v = ExactlyOnceChecker().check(_commands({"order-1": 2, "order-2": 1}))
    assert v.valid is False
    assert v.errors[0]["problem"] == "duplicated effect (2)"


def test_acknowledged_command_without_effect_is_invalid() -> None:
    assert ExactlyOnceChecker().check(_commands({"order-1": 1})).valid is False


def test_effect_for_unknown_key_is_invalid() -> None:
    effects = {"order-1": 1, "order-2": 1, "order-9": 1}
    assert ExactlyOnceChecker().check(_commands(effects)).valid is False


# -- replicated convergence ------------------------------------------------------


def _hex(n: int) -> str:
    return str(n).encode().hex()


def _entry(n: int, region: str, hlc: int = 1 << 16) -> dict[str, object]:
    return {"value": _hex(n), "hlc": hlc, "region": region, "counter": 0}


def _replicated(regions: dict[str, dict[str, dict[str, object]]], took_ns: int = 10) -> History:
    return build(
        ("invoke", 0, "rput", "lww/k", 1, 0, "us-east"),
        ("ok", 0, "rput", "lww/k", 1, 5, "us-east"),
        ("invoke", 1, "rput", "lww/k", 2, 0, "eu-west"),
        ("ok", 1, "rput", "lww/k", 2, 5, "eu-west"),
        ("invoke", 2, "incr", "count/c", 3, 6, "eu-west"),
        ("ok", 2, "incr", "count/c", 3, 7, "eu-west"),
        ("invoke", 9, "converge", None, None, 100),
        ("ok", 9, "converge", None, {"regions": regions}, 100 + took_ns),
    )


def _counter(n: int) -> dict[str, object]:
    return {"value": "", "hlc": 5, "region": "eu-west", "counter": n}


def test_converged_regions_are_valid() -> None:
    snap = {"lww/k": _entry(2, "eu-west"), "count/c": _counter(3)}
    v = ConvergenceChecker().check(_replicated({"us-east": snap, "eu-west": dict(snap)}))
    assert v.valid is True, v


def test_non_converged_replica_is_invalid() -> None:
    a = {"lww/k": _entry(2, "eu-west"), "count/c": _counter(3)}
    b = {"lww/k": _entry(1, "us-east"), "count/c": _counter(3)}
    v = ConvergenceChecker().check(_replicated({"us-east": a, "eu-west": b}))
    assert v.valid is False
    assert "differ" in v.errors[0]["problem"]


def test_missing_key_wrong_winner_and_bad_counter_are_invalid() -> None:
    missing = {"count/c": _counter(3)}
    assert ConvergenceChecker().check(_replicated({"a": missing, "b": missing})).valid is False
    misattributed = {"lww/k": _entry(2, "us-east"), "count/c": _counter(3)}
    assert ConvergenceChecker().check(_replicated({"a": misattributed})).valid is False
    invented = {"lww/k": _entry(77, "eu-west"), "count/c": _counter(3)}
    assert ConvergenceChecker().check(_replicated({"a": invented})).valid is False
    counted_twice = {"lww/k": _entry(2, "eu-west"), "count/c": _counter(6)}
    assert ConvergenceChecker().check(_replicated({"a": counted_twice})).valid is False


def test_convergence_too_slow_is_invalid() -> None:
    snap = {"lww/k": _entry(2, "eu-west"), "count/c": _counter(3)}
    v = ConvergenceChecker(within_s=1).check(_replicated({"a": snap}, took_ns=2_000_000_000))
    assert v.valid is False


def test_no_convergence_read_is_unknown() -> None:
    assert ConvergenceChecker().check(History()).valid is None


# -- HLC -------------------------------------------------------------------------

MS = 1_000_000


def _hlc(ms: int, logical: int = 0) -> int:
    return (ms << 16) | logical


def _hlc_history(first_ms: int, second_ms: int) -> History:
    """Two sequential writes from us-east at wall 1000..1010 ms and 2000..2010 ms."""
    return build(
        ("invoke", 0, "rput", "lww/k", 1, 0, "us-east", 1000 * MS),
        ("ok", 0, "rput", "lww/k", 1, 10, "us-east", 1010 * MS),
        ("invoke", 0, "rput", "lww/k", 2, 20, "us-east", 2000 * MS),
        ("ok", 0, "rput", "lww/k", 2, 30, "us-east", 2010 * MS),
        ("invoke", 1, "rget", "lww/k", None, 40, "us-east", 2020 * MS),
        (
            "ok",
            1,
            "rget",
            "lww/k",
            {"value": _hex(1), "hlc": _hlc(first_ms), "region": "us-east"},
            41,
            "us-east",
            2021 * MS,
        ),
        ("invoke", 1, "rget", "lww/k", None, 50, "us-east", 2030 * MS),
        (
            "ok",
            1,
            "rget",
            "lww/k",
            {"value": _hex(2), "hlc": _hlc(second_ms), "region": "us-east"},
            51,
            "us-east",
            2031 * MS,
        ),
    )


def test_hlc_monotonic_and_close_is_valid() -> None:
    v = HlcChecker(250).check(_hlc_history(1005, 2005))
    assert v.valid is True, v
    assert v.details["writes_observed"] == 2


def test_hlc_going_backwards_is_invalid() -> None:
    # Both within the offset bound of their own write, but the second is lower.
    h = _hlc_history(1005, 1004)
    v = HlcChecker(2000).check(h)
    assert v.valid is False
    assert "not above" in v.errors[0]["problem"]


def test_hlc_beyond_max_offset_is_invalid() -> None:
    v = HlcChecker(250).check(_hlc_history(1005, 2600))
    assert v.valid is False
    assert "outside" in v.errors[0]["problem"]


def test_no_hlc_observation_is_unknown() -> None:
    assert HlcChecker().check(History()).valid is None


# -- refused writes ----------------------------------------------------------------


def _refused(read_value: int) -> History:
    return build(
        ("invoke", 0, "write", "k", 1, 0),
        ("ok", 0, "write", "k", 1, 10),
        ("invoke", 1, "cas", "k", [1, 2], 20),
        ("fail", 1, "cas", "k", [1, 2], 30),
        ("invoke", 2, "read", "k", None, 40),
        ("ok", 2, "read", "k", read_value, 50),
    )


def test_a_refused_cas_that_was_applied_is_caught() -> None:
    v = RefusedWritesInvisibleChecker().check(_refused(2))
    assert v.valid is False
    assert v.errors[0]["value"] == 2
    assert RefusedWritesInvisibleChecker().check(_refused(1)).valid is True


@needs_go
def test_refusals_as_indeterminate_leave_the_rest_to_porcupine() -> None:
    h = _refused(2)
    assert LinearizableChecker().check(h).valid is False
    assert LinearizableChecker().check(failed_as_indeterminate(h)).valid is True
