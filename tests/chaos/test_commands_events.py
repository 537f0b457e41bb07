"""Smoke: idempotent commands and events together, while ap-south is partitioned and
then eu-west is killed and restarted (one sandbox, one run, shared by both tests).

Each test asserts its workload's verdicts, then feeds the real history with one
injected anomaly at a time back to the same checker and expects a failing verdict.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meridian.chaos.checkers.effects import ExactlyOnceChecker, SameResponseChecker
from meridian.chaos.checkers.events import (
    EventsDeliveredChecker,
    EventsExpectedChecker,
    EventsOnceChecker,
    EventsOrderedChecker,
    view,
)
from meridian.chaos.history import Event, History
from tests.chaos.conftest import run_smoke, verdict

pytestmark = pytest.mark.timeout(900)

SCENARIO = "commands-events-partition-kill"


@dataclasses.dataclass
class Run:
    report: dict[str, Any]
    history: History

    @property
    def run_id(self) -> str:
        return str(self.report["options"]["run_id"])


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out: Path = tmp_path_factory.mktemp(SCENARIO)
    report = run_smoke(SCENARIO, out)
    # Both faults ran and were healed.
    assert [f["kind"] for f in report["faults"]] == ["partition", "kill-region"], report["faults"]
    for fault in report["faults"]:
        assert fault["error"] is None and fault["stopped"] is not None, fault
    return Run(report, History.load(out / "history.json"))


def _with(h: History, events: list[Event]) -> History:
    return History(events, t0_ns=0, wall_t0_ns=h.wall_t0_ns)


def _append(h: History, *rows: tuple[str, int, str, str, str | None, Any]) -> History:
    """``h`` plus events (type, process, region, f, key, value), 1 ms apart after the last."""
    events = list(h.events)
    at = max(e.time for e in events)
    for type_, process, region, f, key, value in rows:
        at += 1_000_000
        events.append(Event(len(events), type_, process, region, f, key, value, at, at))  # type: ignore[arg-type]
    return _with(h, events)


def test_idempotent_commands_take_effect_once_with_one_response(chaos_run: Run) -> None:
    once = verdict(chaos_run.report, "exactly-once")
    same = verdict(chaos_run.report, "same-response")
    assert once["valid"] is True, once
    assert same["valid"] is True, same
    assert once["details"]["acknowledged"] > 0, once
    assert same["details"]["replayed"] > 0, same  # keys really were shared
    history, prefix = chaos_run.history, f"{chaos_run.run_id}-cmd"
    ops = history.ops()
    # Commands were also cut off or lost with their region (not only happy paths).
    assert any(op.f == "command" and op.type == "info" for op in ops)

    # A duplicated effect in the real final read must be caught.
    i = next(j for j, e in enumerate(history.events) if e.f == "effects" and e.type == "ok")
    final = history.events[i]
    key = next(k for k, ids in final.value.items() if ids)
    doubled = {**final.value, key: [*final.value[key], "999999@nowhere"]}
    events = list(history.events)
    events[i] = dataclasses.replace(final, value=doubled)
    assert ExactlyOnceChecker(prefix).check(_with(history, events)).valid is False
    # So must an ok caller of that key who got another response.
    other = _append(
        history,
        ("invoke", 10_000, "us-east", "command", key, {"request": "{}"}),
        ("ok", 10_000, "us-east", "command", key, {"status": 201, "body": "1@elsewhere"}),
    )
    assert SameResponseChecker(prefix).check(other).valid is False


def test_events_delivered_once_in_order_nothing_lost_or_invented(chaos_run: Run) -> None:
    names = ("events-delivered", "events-expected", "events-ordered", "events-once")
    verdicts = {name: verdict(chaos_run.report, name) for name in names}
    for v in verdicts.values():
        assert v["valid"] is True, v
    assert verdicts["events-delivered"]["details"]["acknowledged"] > 0
    history, prefix = chaos_run.history, f"{chaos_run.run_id}-"
    regions = chaos_run.report["regions"]
    ops = history.ops()
    # Producers in the killed region saw failures and retried (duplicates to absorb).
    assert any(op.f == "publish" and op.type != "ok" and op.region == "eu-west" for op in ops)
    delivered = [op for op in ops if op.f == "deliver" and op.type == "ok"]

    # The event the mutations below start from: delivered once to its group, on a
    # subscriber stream that held. (A second copy after an ack on a stream that
    # broke is excused by events-once, so such an event would not show the
    # injected duplicate.)
    held = view(history, prefix).sessions
    pairs = Counter((op.key, op.invoke.value["group"]) for op in delivered)
    plain = [
        op
        for op in delivered
        if held.get(int(op.invoke.value["session"]), False)
        and pairs[(op.key, op.invoke.value["group"])] == 1
    ]
    assert plain, "no event was delivered once on a stream that held"

    # A lost acknowledged event: every delivery of one event to one group removed.
    lost = plain[len(plain) // 2]
    group = lost.invoke.value["group"]
    drop = {
        e.index
        for op in ops
        if op.f == "deliver" and op.key == lost.key and op.invoke.value["group"] == group
        for e in (op.invoke, op.completion)
        if e is not None
    }
    without = _with(history, [e for e in history.events if e.index not in drop])
    assert EventsDeliveredChecker(regions, 60.0, prefix).check(without).valid is False

    # An unexpected event: a delivery nobody published.
    value = {**lost.invoke.value, "session": -1}
    invented = _append(
        history,
        ("invoke", 10_000, group, "deliver", f"{prefix}nobody-1", value),
        ("ok", 10_000, group, "deliver", f"{prefix}nobody-1", value),
    )
    assert EventsExpectedChecker(prefix).check(invented).valid is False

    # A duplicate: the same event delivered to the same group again, as new.
    dup = _append(
        history,
        ("invoke", 10_000, group, "deliver", lost.key, value),
        ("ok", 10_000, group, "deliver", lost.key, value),
    )
    assert EventsOnceChecker(prefix).check(dup).valid is False

    # A reordered producer: two consecutive first deliveries of one producer in one
    # group swapped.
    firsts = [
        op
        for op in delivered
        if op.invoke.value["group"] == group
        and op.invoke.value["origin"] == lost.invoke.value["origin"]
        and op.invoke.value["key"] == lost.invoke.value["key"]
        and op.invoke.value["attempt"] == 1
    ]
    a, b = firsts[0], firsts[1]
    swap = {a.key: b.key, b.key: a.key}
    events = [
        dataclasses.replace(e, key=swap[e.key])
        if e.f == "deliver" and e.key in swap and e.value["group"] == group
        else e
        for e in history.events
    ]
    assert EventsOrderedChecker(prefix).check(_with(history, events)).valid is False
