"""The chaos history model, the always-writable checker, analysis and the report page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meridian.chaos import analysis, report
from meridian.chaos.checkers.availability import AlwaysWritableChecker
from meridian.chaos.history import History, build
from meridian.chaos.nemesis import FaultRecord

S = 1_000_000_000


def test_history_round_trips_through_json(tmp_path: Path) -> None:
    h = History()
    h.add("invoke", 0, "us-east", "write", "k", 1)
    h.add("info", 0, "us-east", "write", "k", 1, error="DeadlineExceededError: slow")
    h.add("invoke", 1, "eu-west", "read", "k")
    h.save(tmp_path / "h.json")
    back = History.load(tmp_path / "h.json")
    assert back.events == h.events
    ops = back.ops()
    assert [op.type for op in ops] == ["info", "info"]  # the second never completed
    assert (
        ops[0].completion is not None and ops[0].completion.error == "DeadlineExceededError: slow"
    )
    assert json.loads((tmp_path / "h.json").read_text())["schema"] == "meridian.chaos.history/1"


def test_malformed_histories_are_rejected() -> None:
    with pytest.raises(ValueError, match="invoked again"):
        build(("invoke", 0, "read", "k", None, 0), ("invoke", 0, "read", "k", None, 1)).ops()
    with pytest.raises(ValueError, match="without an invoke"):
        build(("ok", 0, "read", "k", None, 0)).ops()


def _nemesis(kind: str, region: str, start: int, stop: int) -> list[tuple[object, ...]]:
    value_start = {"name": f"{kind} {region}", "phase": "start"}
    value_stop = {"name": f"{kind} {region}", "phase": "stop"}
    return [
        ("invoke", -1, "nemesis", kind, value_start, start, region),
        ("ok", -1, "nemesis", kind, value_start, start + 1, region),
        ("invoke", -1, "nemesis", kind, value_stop, stop, region),
        ("ok", -1, "nemesis", kind, value_stop, stop + 1, region),
    ]


def test_a_refused_replicated_write_during_a_partition_is_a_violation() -> None:
    h = build(
        *_nemesis("partition", "ap-south", 1 * S, 5 * S),
        ("invoke", 0, "rput", "lww/k", 1, 2 * S, "ap-south"),
        ("info", 0, "rput", "lww/k", 1, 3 * S, "ap-south"),
        ("invoke", 1, "rput", "lww/k", 2, 2 * S, "us-east"),
        ("ok", 1, "rput", "lww/k", 2, 3 * S, "us-east"),
    )
    v = AlwaysWritableChecker().check(h)
    assert v.valid is False
    assert v.details["refused_by_region"] == {"ap-south": 1}


def test_a_refused_write_while_its_region_is_killed_is_excused() -> None:
    h = build(
        *_nemesis("kill-region", "ap-south", 1 * S, 5 * S),
        ("invoke", 0, "rput", "lww/k", 1, 2 * S, "ap-south"),
        ("fail", 0, "rput", "lww/k", 1, 3 * S, "ap-south"),
        ("invoke", 1, "incr", "c/c", 2, 6 * S, "ap-south"),
        ("ok", 1, "incr", "c/c", 2, 7 * S, "ap-south"),
    )
    v = AlwaysWritableChecker().check(h)
    assert v.valid is True, v
    assert v.details["excused"] == 1
    assert AlwaysWritableChecker().check(History()).valid is None


def test_availability_and_failover_figures() -> None:
    h = build(
        ("invoke", 0, "read", "k", None, 0, "a"),
        ("ok", 0, "read", "k", 1, S // 2, "a"),
        ("invoke", 0, "read", "k", None, S, "a"),
        ("fail", 0, "read", "k", None, 2 * S, "a"),
        ("invoke", 0, "read", "k", None, 4 * S, "a"),
        ("ok", 0, "read", "k", 1, 4 * S + S // 2, "a"),
    )
    avail = analysis.availability(h, ["a"])
    assert avail["regions"]["a"][0] == {"ok": 1, "fail": 0, "info": 0}
    assert avail["regions"]["a"][2] == {"ok": 0, "fail": 1, "info": 0}
    fault = FaultRecord("partition a", "partition", "a", S, S, 3 * S, 3 * S)
    [row] = analysis.failover(h, [fault])
    assert row["regions"]["a"] == {"longest_gap_s": 4.0, "first_ok_after_heal_s": 1.5}


def test_report_page_is_self_contained(tmp_path: Path) -> None:
    h = build(("invoke", 0, "read", "k", None, 0, "a"), ("ok", 0, "read", "k", 1, S, "a"))
    fault = FaultRecord("partition a", "partition", "a", 0, 1, S, S + 1)
    result = {
        "scenario": "x",
        "description": "<script>alert(1)</script>",
        "valid": False,
        "started_at": "now",
        "elapsed_s": 2.0,
        "options": {},
        "regions": ["a"],
        "verdicts": [
            {
                "invariant": "linearizable",
                "valid": False,
                "label": "INVALID",
                "summary": "Illegal",
                "errors": [{"key": "k"}],
                "error_count": 1,
                "details": {"visualization": "linearizability.html"},
            }
        ],
        "faults": [fault.to_json()],
        "availability": analysis.availability(h, ["a"]),
        "failover": analysis.failover(h, [fault]),
        "op_counts": analysis.op_counts(h),
    }
    _, page = report.write(result, tmp_path)
    text = page.read_text()
    assert "<script>" not in text  # escaped
    assert "http://" not in text and "https://" not in text  # nothing fetched
    assert 'href="linearizability.html"' in text and "INVALID" in text
    assert report.overall(result["verdicts"]) is False
    assert report.overall([{"valid": True}, {"valid": None}]) is None
