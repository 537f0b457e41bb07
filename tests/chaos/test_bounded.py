"""Smoke: BOUNDED reads under a partition of a follower region, then of the region
holding the leader (one sandbox, one run).

It asserts the workload's verdict, that both faults hit what they were meant
to, then feeds the real history with one stale answer injected back to the
same checker and expects a failing verdict.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meridian.chaos.checkers.staleness import READ, BoundedStalenessChecker
from meridian.chaos.history import Event, History
from tests.chaos.conftest import run_smoke, verdict

pytestmark = pytest.mark.timeout(900)


def test_bounded_answers_are_never_older_than_their_bound(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out: Path = tmp_path_factory.mktemp("bounded-partitions")
    report = run_smoke("bounded-partitions", out)
    follower, leader = report["faults"]
    for fault in (follower, leader):
        assert fault["error"] is None and fault["stopped"] is not None, fault
    assert "(follower of" in follower["name"] and "(leader of" in leader["name"]
    assert follower["region"] != leader["region"], report["faults"]

    bounded = verdict(report, "bounded-staleness")
    assert bounded["valid"] is True, bounded
    served = bounded["details"]["served"]
    assert served.get("bounded", 0) > 100, bounded  # reads really were served locally

    history = History.load(out / "history.json")
    ops = history.ops()
    # Every region answered BOUNDED reads at some point.
    regions = {op.region for op in ops if op.f == READ and op.type == "ok"}
    assert regions == set(report["regions"]), regions
    # The cut-off leader region could not serve its readers locally for the whole
    # partition: some of its reads failed or went STRONG.
    started, stop = leader["started"], leader["stop"]
    during = [
        op
        for op in ops
        if op.f == READ and op.region == leader["region"] and started + 8e9 <= op.start <= stop
    ]
    assert during and any(op.type != "ok" for op in during), during[-5:]

    # A stale answer appended to the real history must be caught: the first
    # acknowledged value of the global key, read after the last write, with a
    # bound of 10 ms.
    writes = [
        op for op in ops if op.f == "write" and op.type == "ok" and "rep" not in (op.key or "")
    ]
    first, last = min(writes, key=lambda op: op.start), max(writes, key=lambda op: op.start)
    at = max(e.time for e in history.events) + 1_000_000
    got = {"value": first.invoke.value, "served": "bounded", "bound": 0.01, "max": 1.0}
    stale = History(
        [
            *history.events,
            Event(
                len(history.events),
                "invoke",
                10_000,
                "ap-south",
                READ,
                last.key,
                {"max": 1.0},
                at,
                at,
            ),
            Event(
                len(history.events) + 1,
                "ok",
                10_000,
                "ap-south",
                READ,
                last.key,
                got,
                at + 1,
                at + 1,
            ),
        ],
        t0_ns=0,
        wall_t0_ns=history.wall_t0_ns,
    )
    prefix = str(report["options"]["run_id"])
    assert BoundedStalenessChecker(prefix).check(stale).valid is False
