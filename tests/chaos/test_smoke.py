"""Smoke: each workload under the fault that threatens it most, judged by its checkers.

Each test also feeds the real history, with one injected anomaly, back to the
same checker and expects a failing verdict: the checker is not vacuous on
what the sandbox really produced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from meridian.chaos.checkers.bank import BankChecker
from meridian.chaos.checkers.convergence import ConvergenceChecker
from meridian.chaos.checkers.linearizable import LinearizableChecker
from meridian.chaos.history import Event, History
from tests.chaos.conftest import fault_window, run_smoke, verdict

pytestmark = pytest.mark.timeout(900)


def _append(h: History, *events: tuple[str, int, str, str, str | None, object]) -> History:
    """``h`` plus events (type, process, region, f, key, value), each 1 ms after the last."""
    out = History(list(h.events), t0_ns=0, wall_t0_ns=h.wall_t0_ns)
    at = max(e.time for e in h.events)
    for type_, process, region, f, key, value in events:
        at += 1_000_000
        out.events.append(Event(len(out.events), type_, process, region, f, key, value, at, at))  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One sandbox for the register and the replicated workloads, the region holding
    the register's leader cut off until the end, then healed: (report, run directory)."""
    out = tmp_path_factory.mktemp("register-replicated-partition")
    return run_smoke("register-replicated-partition", out), out


def test_register_linearizable_across_a_partition(
    partitioned: tuple[dict[str, Any], Path],
) -> None:
    report, out = partitioned
    lin = verdict(report, "linearizable")
    history = History.load(out / "history.json")
    assert lin["valid"] is True, lin
    porcupine = lin["details"]["porcupine"]
    assert porcupine["operations"] > 50, porcupine
    assert (out / lin["details"]["visualization"]).stat().st_size > 0
    # The partition had an effect a user would see: the leader's region could not write.
    started, stop = fault_window(report)
    fault = report["faults"][0]
    assert "(leader of" in fault["name"], fault
    cut_off = [
        op
        for op in history.ops()
        if op.region == fault["region"]
        and op.f in ("write", "cas")
        and started <= op.start
        and op.end is not None
        and op.end <= stop
    ]
    assert cut_off and all(op.type != "ok" for op in cut_off[len(cut_off) // 2 :]), cut_off[-5:]
    # A stale read appended to the real history must be caught: after the last
    # acknowledged write of a key, read the value it replaced.
    writes = [op for op in history.ops() if op.f == "write" and op.type == "ok"]
    last = max(writes, key=lambda op: op.end or 0)
    values = [
        op.invoke.value
        for op in writes
        if op.key == last.key and op.invoke.value != last.invoke.value
    ]
    assert values, "need two acknowledged writes of one key"
    stale = _append(
        history,
        ("invoke", 10_000, "us-east", "read", last.key, None),
        ("ok", 10_000, "us-east", "read", last.key, values[0]),
    )
    assert LinearizableChecker().check(stale).valid is False
    # So must a CONFLICT that no committed write caused: after the run, a cas from
    # the key's final value, refused, then a read that still sees that value. The
    # same ops with a failure that claims nothing stay linearizable.
    reads = [
        op for op in history.ops() if op.f == "read" and op.key == last.key and op.type == "ok"
    ]
    final = max(reads, key=lambda op: op.end or 0).value
    cas_read = (
        ("invoke", 10_001, "us-east", "cas", last.key, [final, 999_999]),
        ("fail", 10_001, "us-east", "cas", last.key, [final, 999_999]),
        ("invoke", 10_002, "us-east", "read", last.key, None),
        ("ok", 10_002, "us-east", "read", last.key, final),
    )
    plain = _append(history, *cas_read)
    assert LinearizableChecker().check(plain).valid is True
    i = len(plain.events) - 3
    events = list(plain.events)
    events[i] = dataclasses.replace(events[i], error="ConflictError: CONFLICT: current 8")
    refused = History(events, t0_ns=0, wall_t0_ns=history.wall_t0_ns)
    assert LinearizableChecker().check(refused).valid is False


def test_bank_conserves_money_when_a_region_is_killed(tmp_path: Path) -> None:
    report = run_smoke("bank-kill-region", tmp_path)
    bank = verdict(report, "bank")
    assert bank["valid"] is True, bank
    assert bank["details"]["transfers"]["ok"] > 0, bank
    fault_window(report)
    # Money created out of nothing in a real snapshot must be caught.
    history = History.load(tmp_path / "history.json")
    snap = next(op for op in reversed(history.ops()) if op.f == "balances" and op.type == "ok")
    richer = {k: v + 1 if i == 0 else v for i, (k, v) in enumerate(snap.value.items())}
    bad = _append(
        history,
        ("invoke", 10_000, "us-east", "balances", snap.key, None),
        ("ok", 10_000, "us-east", "balances", snap.key, richer),
    )
    checker = BankChecker(bank["details"]["total"], sorted(richer), key=snap.key)
    assert checker.check(bad).valid is False


def test_replicated_converges_after_a_partition_heals(
    partitioned: tuple[dict[str, Any], Path],
) -> None:
    report, out = partitioned
    converged = verdict(report, "converged")
    assert converged["valid"] is True, converged
    assert converged["details"]["regions"] == ["ap-south", "eu-west", "us-east"]
    hlc = verdict(report, "hlc")
    assert hlc["valid"] is True, hlc
    started, stop = fault_window(report)
    history = History.load(out / "history.json")
    # The cut-off region kept accepting writes.
    cut_off = report["faults"][0]["region"]
    assert any(
        op.region == cut_off and op.f == "rput" and op.type == "ok" and started < op.start < stop
        for op in history.ops()
    )
    # One replica made to diverge in the real final snapshot must be caught.
    events = list(history.events)
    i, final = next((i, e) for i, e in enumerate(events) if e.f == "converge" and e.type == "ok")
    regions = {r: dict(s) for r, s in final.value["regions"].items()}
    key = sorted(regions["ap-south"])[0]
    regions["ap-south"][key] = {**regions["ap-south"][key], "hlc": 1}
    events[i] = dataclasses.replace(final, value={**final.value, "regions": regions})
    diverged = History(events, t0_ns=0, wall_t0_ns=history.wall_t0_ns)
    assert ConvergenceChecker().check(diverged).valid is False
    # DESIGN §3: a cut-off region keeps accepting replicated writes (every rput and
    # incr ends ok, except while the writer's own processes are down).
    writable = verdict(report, "always-writable")
    assert writable["valid"] is True, writable
