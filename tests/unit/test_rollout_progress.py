"""A rollout as it goes (rollouts.progress) and the traffic it is judged on
(rollouts.traffic): pure, driven tick by tick with made-up traffic."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from meridian.rollouts import progress
from meridian.rollouts.model import parse_plan
from meridian.rollouts.progress import Rollout
from meridian.rollouts.traffic import Traffic, p99_ms, total, window

REGIONS = ("ap-south", "us-east", "eu-west")


class Region:
    """One region's agents' traffic, accumulated like the router does."""

    def __init__(self, agents: int = 1) -> None:
        self.agents = [Traffic() for _ in range(agents)]

    def serve(self, version: str, n: int, errors: int = 0, ms: float = 2.0) -> None:
        for i in range(n):
            t = self.agents[i % len(self.agents)]
            t.started("orders", version)
            t.record("orders", version, i >= errors, ms / 1000)

    def snapshot(self) -> dict[str, Any]:
        return {f"a{i}": t.snapshot("orders") for i, t in enumerate(self.agents)}


def plan_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "service": "orders",
        "version": "v2",
        "stable": "v1",
        "regions": [
            {"region": "ap-south", "steps": [10, 50, 100], "hold_s": 6},
            {"region": "us-east", "steps": [50, 100], "hold_s": 6},
            {"region": "eu-west", "steps": [100], "hold_s": 6},
        ],
        "analysis": {"min_requests": 10, "count": 2},
    }
    doc.update(over)
    return doc


def started(doc: dict[str, Any]) -> Rollout:
    plan = parse_plan(
        doc, known_regions=REGIONS, healthy_versions={r: {"v1", "v2"} for r in REGIONS}
    )
    r = progress.start("r1", doc, plan, 0)
    progress.begin(r, 0)
    # Stored and read back between ticks, as the driver does.
    return Rollout.from_json(json.loads(json.dumps(r.to_json())))


def tick(r: Rollout, now: int, region: Region | None) -> Rollout:
    progress.advance(r, now, region.snapshot() if region else None)
    return Rollout.from_json(json.loads(json.dumps(r.to_json())))


def weights(r: Rollout) -> dict[str, int]:
    return {reg: w["v2"] for reg, w in progress.desired_weights(r, r.parsed()).items()}


def states(r: Rollout) -> dict[str, str]:
    return {p.region: p.state for p in r.regions}


def run_interval(r: Rollout, now: int, region: Region, new: tuple[int, int], old: int) -> Rollout:
    """One analysis interval (3 s with these plans) of traffic, then a tick."""
    region.serve("v2", new[0], errors=new[1])
    region.serve("v1", old)
    return tick(r, now, region)


# -- traffic -----------------------------------------------------------------


def test_a_window_is_the_difference_summed_over_the_regions_agents() -> None:
    region = Region(agents=2)
    region.serve("v2", 10, errors=2, ms=3)
    before = region.snapshot()
    region.serve("v2", 40, errors=4, ms=40)
    w = window(before, region.snapshot(), "v2")
    assert (w.requests, w.errors) == (40, 4)
    assert w.p99_ms == 50  # the 40 ms calls' bucket edge, not the earlier 3 ms ones
    assert total(region.snapshot(), "v2").requests == 50


def test_an_agent_missing_from_either_snapshot_adds_nothing_and_a_restart_counts_anew() -> None:
    a, b = Traffic(), Traffic()
    for t in (a, b):
        t.started("orders", "v2")
        t.record("orders", "v2", True, 0.001)
    before = {"a": a.snapshot("orders")}
    for t in (a, b):
        for _ in range(5):
            t.started("orders", "v2")
            t.record("orders", "v2", True, 0.001)
    after = {"a": a.snapshot("orders"), "b": b.snapshot("orders")}
    assert window(before, after, "v2").requests == 5  # b was not in the baseline
    restarted = Traffic()
    for _ in range(2):
        restarted.started("orders", "v2")
        restarted.record("orders", "v2", False, 0.001)
    w = window(after, {"a": restarted.snapshot("orders")}, "v2")
    assert (w.requests, w.errors) == (2, 2)


def test_in_flight_calls_are_counted_until_they_end() -> None:
    t = Traffic()
    t.started("orders", "v2")
    t.started("orders", "v2")
    t.record("orders", "v2", True, 0.001)
    assert total({"a": t.snapshot("orders")}, "v2").in_flight == 1


def test_p99_from_buckets() -> None:
    assert math.isnan(p99_ms([0] * 24))
    buckets = [0] * 24
    buckets[0] = 99
    buckets[10] = 1
    assert p99_ms(buckets) == 0.5
    buckets[10] = 2
    assert p99_ms(buckets) == 50


# -- the happy path ----------------------------------------------------------


def test_a_good_version_goes_through_every_step_and_region() -> None:
    r = started(plan_doc())
    # Every region is pinned to the stable version at once; the canary starts.
    assert weights(r) == {"ap-south": 10, "us-east": 0, "eu-west": 0}
    ap, us = Region(), Region()
    now = 0

    def step(region: Region) -> Rollout:
        nonlocal now, r
        r = tick(r, now, region)  # the step's baseline
        for _ in range(2):  # count: 2 measurements, one every hold_s / 2
            now += 3000
            r = run_interval(r, now, region, (20, 0), 40)
        now += 1
        return r

    step(ap)
    assert weights(r) == {"ap-south": 50, "us-east": 0, "eu-west": 0}
    step(ap)
    assert weights(r) == {"ap-south": 100, "us-east": 50, "eu-west": 0}
    assert states(r) == {"ap-south": "promoted", "us-east": "progressing", "eu-west": "pending"}
    step(us)
    # eu-west's only step is 100: promoted at once, and the rollout is done.
    assert r.phase == progress.HEALTHY, r.events
    assert weights(r) == {"ap-south": 100, "us-east": 100, "eu-west": 100}
    assert [e["kind"] for e in r.events].count("promoted") == 3
    assert r.over


# -- failure -----------------------------------------------------------------


def test_a_failing_canary_rolls_its_region_back_at_the_first_failed_measurement() -> None:
    r = started(plan_doc())
    ap = Region()
    r = tick(r, 0, ap)
    r = run_interval(r, 3000, ap, (20, 6), 40)  # 30 % errors against 0 %
    assert r.phase == progress.ROLLED_BACK
    assert "error rate 30.00%" in r.message
    assert weights(r) == {"ap-south": 0, "us-east": 0, "eu-west": 0}
    assert states(r)["ap-south"] == "rolled-back"
    assert r.checking and not r.over


def test_the_consistency_check_after_a_rollback() -> None:
    r = started(plan_doc())
    ap = Region()
    r = tick(r, 0, ap)
    ap.agents[0].started("orders", "v2")  # one call still running at the switch
    r = run_interval(r, 3000, ap, (20, 6), 40)
    # A region whose agents did not answer is not judged.
    assert not progress.check_consistency(r, {})
    assert progress.check_consistency(r, {"ap-south": ap.snapshot()})
    assert r.consistency is not None and r.consistency.at_switch == {"ap-south": 21}
    # Still in flight: not judged yet.
    assert not progress.check_consistency(r, {"ap-south": ap.snapshot()})
    ap.agents[0].record("orders", "v2", True, 0.001)
    assert progress.check_consistency(r, {"ap-south": ap.snapshot()})
    assert r.consistency.state == "passed" and r.over
    assert "21 calls had reached v2 in ap-south" in r.consistency.detail


def test_the_consistency_check_fails_when_a_call_reaches_the_version_after_the_rollback() -> None:
    r = started(plan_doc())
    ap = Region()
    r = tick(r, 0, ap)
    r = run_interval(r, 3000, ap, (20, 6), 40)
    progress.check_consistency(r, {"ap-south": ap.snapshot()})
    ap.serve("v2", 1)
    progress.check_consistency(r, {"ap-south": ap.snapshot()})
    assert r.consistency is not None and r.consistency.state == "failed"
    assert "ap-south: 1" in r.consistency.detail


def test_on_failure_all_rolls_back_the_regions_already_promoted() -> None:
    doc = plan_doc(on_failure="all")
    doc["regions"][0]["steps"] = [100]
    r = started(doc)
    assert states(r)["ap-south"] == "promoted"
    us = Region()
    r = tick(r, 0, us)
    r = run_interval(r, 3000, us, (20, 10), 40)
    assert r.phase == progress.ROLLED_BACK
    assert weights(r) == {"ap-south": 0, "us-east": 0, "eu-west": 0}


def test_on_failure_region_keeps_the_promoted_regions_on_the_new_version() -> None:
    doc = plan_doc()
    doc["regions"][0]["steps"] = [100]
    r = started(doc)
    us = Region()
    r = tick(r, 0, us)
    r = run_interval(r, 3000, us, (20, 10), 40)
    assert weights(r) == {"ap-south": 100, "us-east": 0, "eu-west": 0}


# -- inconclusive, and the operator ---------------------------------------------


def test_no_traffic_pauses_and_never_promotes() -> None:
    r = started(plan_doc())
    ap = Region()
    r = tick(r, 0, ap)
    for now in (3000, 6000):
        r = tick(r, now, ap)
    assert r.phase == progress.PAUSED
    assert "inconclusive" in r.message and "served 0 requests" in r.message
    assert weights(r)["ap-south"] == 10  # held where it was, not promoted
    # Paused: ticks do nothing however long.
    assert not progress.advance(r, 10**9, ap.snapshot())
    # The operator promotes: the step counts as successful.
    progress.promote(r, 7000, "checked by hand")
    assert r.phase == progress.PROGRESSING and weights(r)["ap-south"] == 50


def test_a_snapshot_that_could_not_be_had_measures_nothing() -> None:
    r = started(plan_doc())
    ap = Region()
    r = tick(r, 0, ap)
    ap.serve("v2", 20, errors=20)
    assert not progress.advance(r, 3000, None)
    assert r.measurements == []


def test_pause_then_abort_sends_every_region_back() -> None:
    doc = plan_doc()
    doc["regions"][0]["steps"] = [100]
    r = started(doc)
    progress.pause(r, 1, "looking")
    assert r.phase == progress.PAUSED
    progress.abort(r, 2, "enough")
    assert r.phase == progress.ABORTED
    assert weights(r) == {"ap-south": 0, "us-east": 0, "eu-west": 0}
    with pytest.raises(ValueError, match="Aborted"):
        progress.promote(r, 3, "")
    with pytest.raises(ValueError, match="Aborted"):
        progress.abort(r, 3, "")


# -- blue-green ----------------------------------------------------------------


def test_blue_green_is_analysed_before_the_switch_then_against_the_stable_numbers() -> None:
    doc = plan_doc()
    doc["regions"] = [{"region": "ap-south", "strategy": "blue-green", "hold_s": 6}]
    r = started(doc)
    assert weights(r) == {"ap-south": 0}  # before the switch: pinned traffic only
    ap = Region()
    r = tick(r, 0, ap)
    for now in (3000, 6000):
        r = run_interval(r, now, ap, (20, 0), 40)  # probes pinned to v2, users on v1
    assert weights(r) == {"ap-south": 100}, r.events
    r = tick(r, 6001, ap)
    # After the switch only v2 serves; it fails against v1's numbers from before.
    r = run_interval(r, 9001, ap, (40, 8), 0)
    assert r.phase == progress.ROLLED_BACK
    assert weights(r) == {"ap-south": 0}


def test_blue_green_passes_when_the_new_version_holds_up_after_the_switch() -> None:
    doc = plan_doc()
    doc["regions"] = [{"region": "ap-south", "strategy": "blue-green", "hold_s": 6}]
    r = started(doc)
    ap = Region()
    r = tick(r, 0, ap)
    for now in (3000, 6000):
        r = run_interval(r, now, ap, (20, 0), 40)
    r = tick(r, 6001, ap)
    for now in (9001, 12001):
        r = run_interval(r, now, ap, (40, 0), 0)
    assert r.phase == progress.HEALTHY, r.events


def test_an_outlier_ejection_of_the_new_version_fails_it_even_with_few_calls() -> None:
    r = started(plan_doc())
    ap = Region()
    r = tick(r, 0, ap)
    # The router ejected the failing v2 instance after 3 calls: too few to
    # judge an error rate, but the ejection is the evidence.
    ap.serve("v2", 3, errors=3)
    ap.agents[0].ejected("orders", "v2")
    r = run_interval(r, 3000, ap, (0, 0), 40)
    assert r.phase == progress.ROLLED_BACK
    assert "1 outlier ejection(s)" in r.message


def test_an_ejection_of_the_stable_version_is_not_held_against_the_new_one() -> None:
    r = started(plan_doc())
    ap = Region()
    r = tick(r, 0, ap)
    ap.agents[0].ejected("orders", "v1")
    for now in (3000, 6000):
        r = run_interval(r, now, ap, (20, 0), 40)
    assert r.phase == progress.PROGRESSING and weights(r)["ap-south"] == 50


def test_events_since_counts_past_the_kept_window() -> None:
    r = started(plan_doc())
    for i in range(progress.MAX_EVENTS + 5):
        r.event(i, "step", "ap-south", str(i))
    before = r.events_total
    r.event(10**6, "analysis", "ap-south", "Failed")
    r.event(10**6, "rolled-back", "ap-south", "")
    assert len(r.events) == progress.MAX_EVENTS
    assert [e["kind"] for e in r.events_since(before)] == ["analysis", "rolled-back"]
    assert r.events_since(r.events_total) == []


def test_an_instance_ejected_before_the_window_and_still_out_fails_the_new_version() -> None:
    r = started(plan_doc())
    ap = Region()
    ap.serve("v2", 3, errors=3)
    ap.agents[0].ejected("orders", "v2")  # before the baseline: not in the window's delta
    r = tick(r, 0, ap)
    ap.serve("v1", 40)
    snap = {"a0": ap.agents[0].snapshot("orders", {"v2": 1})}  # still out, says the router
    progress.advance(r, 3000, snap)
    assert r.phase == progress.ROLLED_BACK, r.measurements
    assert "outlier ejection" in r.message


def test_an_instance_no_longer_ejected_no_longer_counts() -> None:
    r = started(plan_doc())
    ap = Region()
    ap.agents[0].ejected("orders", "v2")
    r = tick(r, 0, ap)
    for now in (3000, 6000):
        r = run_interval(r, now, ap, (20, 0), 40)  # snapshots say nothing is ejected now
    assert r.phase == progress.PROGRESSING and weights(r)["ap-south"] == 50
