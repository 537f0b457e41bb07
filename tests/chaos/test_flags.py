"""Smoke: feature flags while the region holding the `_flags` leader is cut off,
then another region is killed and restarted.

One writer changes a flag by compare-and-set through a rotating region while
two readers per region evaluate it. Every evaluation must serve a value (the
cut-off region keeps serving the flags it has; only the killed region is
excused while it is down), no reader may see an older generation after a
newer one, nothing unwritten may be served, and after the heal every region
must serve the same, newest generation. The checker is then fed the real
history with a violation of each kind injected, and must fail.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from meridian.chaos.checkers.flags import FlagsChecker
from meridian.chaos.history import History
from tests.chaos.conftest import run_smoke, verdict

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def flags_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("flags-leader-partition-kill")
    return run_smoke("flags-leader-partition-kill", out), out


def test_flags_are_served_everywhere_through_faults(
    flags_run: tuple[dict[str, Any], Path],
) -> None:
    report, out = flags_run
    flags = verdict(report, "flags")
    assert flags["valid"] is True, flags
    assert flags["details"]["reads"] > 200, flags
    assert flags["details"]["writes_ok"] > 5, flags
    assert [f["error"] for f in report["faults"]] == [None, None], report["faults"]
    history = History.load(out / "history.json")
    # During the partition every region served evaluations, the cut-off one too.
    marks = [e for e in history.events if e.f == "nemesis" and e.key == "partition"]
    start = next(e.time for e in marks if e.value["phase"] == "start")
    stop = next(e.time for e in marks if e.value["phase"] == "stop")
    serving = {
        op.region
        for op in history.ops()
        if op.f == "feval" and op.type == "ok" and start < op.start < stop
    }
    assert serving == {"us-east", "eu-west", "ap-south"}, serving


def test_the_flags_checker_catches_each_violation_in_the_real_history(
    flags_run: tuple[dict[str, Any], Path],
) -> None:
    _, out = flags_run
    history = History.load(out / "history.json")
    assert FlagsChecker().check(history).valid is True
    events = list(history.events)
    reads = [i for i, e in enumerate(events) if e.f == "feval" and e.type == "ok"]

    # 1. A reader that goes back to generation -1 (older than anything).
    went_back = list(events)
    went_back[reads[-1]] = dataclasses.replace(events[reads[-1]], value=-1)
    assert FlagsChecker().check(History(went_back, t0_ns=0)).valid is False

    # 2. An evaluation that served nothing, outside any excuse: the first one.
    down = list(events)
    down[reads[0]] = dataclasses.replace(events[reads[0]], type="fail", value=None, error="x")
    assert FlagsChecker().check(History(down, t0_ns=0)).valid is False

    # 3. A region that did not converge.
    finals = [i for i, e in enumerate(events) if e.f == "fconverge" and e.type == "ok"]
    diverged = list(events)
    diverged[finals[0]] = dataclasses.replace(events[finals[0]], value=-5)
    assert FlagsChecker().check(History(diverged, t0_ns=0)).valid is False
