"""Rollouts' pure core: weights and sticky version choice, plans refused
naming the field, and Argo Rollouts' three-way analysis (no traffic is not
success; an Inconclusive analysis never promotes)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.errors import InvalidArgumentError
from meridian.rollouts.analysis import (
    Action,
    Criteria,
    Measurement,
    Phase,
    Window,
    action,
    assess,
    measure,
)
from meridian.rollouts.model import (
    choose_version,
    parse_plan,
    regions_to_roll_back,
    rolled_back,
    weights_at,
    weights_violations,
)

REGIONS = ("us-east", "eu-west", "ap-south")
HEALTHY = {r: {"v1", "v2"} for r in REGIONS}

# -- analysis -------------------------------------------------------------------

STABLE = Window(requests=500, errors=2, p99_ms=40.0)
C = Criteria()


@pytest.mark.parametrize(
    ("new", "phase", "why"),
    [
        (Window(500, 3, 42.0), Phase.SUCCESSFUL, ""),
        (Window(500, 60, 42.0), Phase.FAILED, "error rate 12.00% > 5.00%"),
        (Window(500, 12, 42.0), Phase.FAILED, "> stable 0.40% + 1.00%"),
        (Window(500, 3, 90.0), Phase.FAILED, "p99 90.0 ms > 1.5 x stable"),
        # Fewer than 100 calls: their p99 is their slowest one; not compared.
        (Window(99, 0, 900.0), Phase.SUCCESSFUL, ""),
        (Window(5, 0, 10.0), Phase.INCONCLUSIVE, "served 5 requests"),
        (Window(0, 0), Phase.INCONCLUSIVE, "served 0 requests"),
    ],
)
def test_a_measurement(new: Window, phase: Phase, why: str) -> None:
    m = measure(new, STABLE, C)
    assert m.phase is phase, m
    assert why in " ".join(m.reasons)


def test_without_stable_traffic_there_is_nothing_to_compare() -> None:
    m = measure(Window(500, 0, 10.0), Window(3, 0, 10.0), C)
    assert m.phase is Phase.INCONCLUSIVE and "stable" in m.reasons[0]


def test_custom_metrics() -> None:
    c = Criteria(custom_max={"queue_depth": 100.0})
    assert measure(Window(500, 0, 40.0, {"queue_depth": 150.0}), STABLE, c).phase is Phase.FAILED
    assert measure(Window(500, 0, 40.0, {"queue_depth": 50.0}), STABLE, c).phase is Phase.SUCCESSFUL
    assert measure(Window(500, 0, 40.0), STABLE, c).phase is Phase.INCONCLUSIVE


S, F, INC = (Measurement(p) for p in (Phase.SUCCESSFUL, Phase.FAILED, Phase.INCONCLUSIVE))


@pytest.mark.parametrize(
    ("ms", "phase"),
    [
        ([S, S, S], Phase.SUCCESSFUL),
        ([S, S], Phase.RUNNING),
        ([S, F], Phase.FAILED),
        ([INC, S, S], Phase.SUCCESSFUL),
        ([INC, INC], Phase.INCONCLUSIVE),
        ([], Phase.RUNNING),
    ],
)
def test_an_analysis_with_argo_limits(ms: list[Measurement], phase: Phase) -> None:
    assert assess(ms, C) is phase


def test_actions() -> None:
    assert action(Phase.SUCCESSFUL) is Action.PROMOTE
    assert action(Phase.FAILED) is Action.ROLL_BACK
    assert action(Phase.INCONCLUSIVE) is Action.PAUSE
    assert action(Phase.RUNNING) is Action.WAIT


@given(
    st.lists(st.sampled_from([S, F, INC]), max_size=12),
    st.integers(1, 6),
    st.integers(0, 3),
    st.integers(0, 3),
)
def test_an_analysis_promotes_only_when_every_limit_held(
    ms: list[Measurement], count: int, failure_limit: int, inconclusive_limit: int
) -> None:
    c = Criteria(count=count, failure_limit=failure_limit, inconclusive_limit=inconclusive_limit)
    phase = assess(ms, c)
    if action(phase) is Action.PROMOTE:
        assert len(ms) >= count
        assert sum(m is F for m in ms) <= failure_limit
        assert sum(m is INC for m in ms) <= inconclusive_limit
        assert any(m is S for m in ms)
    if sum(m is INC for m in ms) > inconclusive_limit and sum(m is F for m in ms) <= failure_limit:
        assert action(phase) is Action.PAUSE  # never promote an Inconclusive analysis


def test_no_traffic_at_all_never_promotes() -> None:
    c = Criteria(count=3, inconclusive_limit=5)
    ms = [measure(Window(0, 0), Window(0, 0), c) for _ in range(3)]
    assert all(m.phase is Phase.INCONCLUSIVE for m in ms)
    # Even within a generous inconclusive limit, no success is no promotion.
    assert assess(ms, c) is Phase.INCONCLUSIVE
    assert action(assess(ms, Criteria())) is Action.PAUSE


# -- weights and the version a call reaches -----------------------------------------


def test_weights() -> None:
    assert weights_violations({"v1": 95, "v2": 5}) == []
    assert weights_violations({})[0].field == "weights"
    assert weights_violations({"v1": 0})[0].rule == "at least one weight must be above 0"
    assert weights_violations({"v1": -1})[0].field == "weights.v1"
    assert weights_violations({"v1": 1.5})[0].field == "weights.v1"
    assert weights_violations({"v 1": 1})[0].field == "weights.v 1"
    assert weights_violations({f"v{i}": 1 for i in range(9)})[0].rule.startswith("at most")


def test_versions_are_chosen_by_weight_among_those_available() -> None:
    rand = random.Random(1).random
    seen = Counter(
        choose_version("orders", {"v1": 90, "v2": 10}, {"v1", "v2"}, None, rand)
        for _ in range(5000)
    )
    assert 400 < seen["v2"] < 600, seen
    # A version without a healthy instance here is not chosen.
    assert choose_version("orders", {"v1": 90, "v2": 10}, {"v2"}, None, rand) == "v2"
    # No weighted version available: the caller uses any instance.
    assert choose_version("orders", {"v3": 100}, {"v1"}, None, rand) is None
    assert choose_version("orders", {"v1": 0, "v2": 100}, {"v1"}, None, rand) is None


@given(st.text(min_size=1, max_size=20), st.integers(1, 99), st.integers(1, 99))
def test_a_sticky_key_keeps_its_version_while_the_new_one_grows(
    key: str, low: int, high: int
) -> None:
    low, high = min(low, high), max(low, high)
    # Version order puts the new version first, so growing it only takes users in.
    before = choose_version(
        "svc", {"a-new": low, "b-old": 100 - low}, {"a-new", "b-old"}, key, random.random
    )
    after = choose_version(
        "svc", {"a-new": high, "b-old": 100 - high}, {"a-new", "b-old"}, key, random.random
    )
    if before == "a-new":
        assert after == "a-new"
    again = choose_version(
        "svc", {"a-new": low, "b-old": 100 - low}, {"a-new", "b-old"}, key, random.random
    )
    assert again == before


# -- plans ---------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "service": "orders",
    "version": "v2",
    "stable": "v1",
    "regions": [
        {"region": "ap-south", "steps": [5, 25, 50, 100], "hold_s": 10},
        {"region": "eu-west", "strategy": "blue-green"},
        {"region": "us-east"},
    ],
    "analysis": {"count": 2, "min_requests": 10},
}


def test_a_good_plan() -> None:
    plan = parse_plan(GOOD, known_regions=REGIONS, healthy_versions=HEALTHY)
    assert [r.region for r in plan.regions] == ["ap-south", "eu-west", "us-east"]
    assert plan.regions[1].steps == (100,)
    assert plan.analysis.count == 2 and plan.analysis.min_requests == 10
    assert weights_at(plan, 25) == {"v2": 25, "v1": 75}
    assert rolled_back(plan) == {"v2": 0, "v1": 100}
    assert regions_to_roll_back(plan, "eu-west", ["ap-south", "eu-west"]) == ["eu-west"]


def _bad(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    ("doc", "field", "rule"),
    [
        (
            _bad(regions=[{"region": "us-east", "steps": [5, 25, 50]}]),
            "regions[0].steps",
            "reach 100",
        ),
        (_bad(regions=[{"region": "us-east", "steps": [50, 25, 100]}]), "regions[0].steps", "rise"),
        (_bad(regions=[{"region": "us-east", "steps": [0, 100]}]), "regions[0].steps", "1-100"),
        (_bad(regions=[{"region": "mars"}]), "regions[0].region", "must be one of"),
        (
            _bad(regions=[{"region": "us-east"}, {"region": "us-east"}]),
            "regions[1].region",
            "twice",
        ),
        (_bad(regions=[]), "regions", "canary region first"),
        (_bad(regions=[{"region": "us-east", "strategy": "yolo"}]), "regions[0].strategy", ""),
        (
            _bad(regions=[{"region": "us-east", "strategy": "blue-green", "steps": [50, 100]}]),
            "regions[0].steps",
            "one step",
        ),
        (_bad(regions=[{"region": "us-east", "hold_s": 0}]), "regions[0].hold_s", "1 to 86400"),
        (_bad(version="v1"), "version", "differ"),
        (_bad(version="v 2"), "version", "required"),
        (_bad(service=""), "service", "required"),
        (_bad(on_failure="panic"), "on_failure", ""),
        (_bad(analysis={"count": 0}), "analysis.count", "at least 1"),
        (_bad(analysis={"max_error_rate": 2}), "analysis.max_error_rate", "between 0 and 1"),
        (_bad(analysis={"colour": 1}), "analysis.colour", "not a field"),
        (_bad(analysis={"count": 1.5}), "analysis.count", "whole number"),
        (_bad(analysis={"custom_max": {"q": "x"}}), "analysis.custom_max", "metric -> number"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_field(doc: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        parse_plan(doc, known_regions=REGIONS, healthy_versions=HEALTHY)
    assert any(v.field == field and rule in v.rule for v in err.value.violations), (
        err.value.violations
    )


def test_a_version_with_no_healthy_instance_in_a_region_is_refused() -> None:
    healthy = {**HEALTHY, "eu-west": {"v1"}}
    with pytest.raises(InvalidArgumentError) as err:
        parse_plan(GOOD, known_regions=REGIONS, healthy_versions=healthy)
    assert err.value.violations[0].field == "regions[1].region"
    assert "no healthy instance of 'v2'" in err.value.violations[0].rule


def test_a_plan_that_is_not_an_object() -> None:
    with pytest.raises(InvalidArgumentError):
        parse_plan([], known_regions=REGIONS, healthy_versions=HEALTHY)


def test_rolling_back_every_region() -> None:
    plan = parse_plan(
        {**GOOD, "on_failure": "all"}, known_regions=REGIONS, healthy_versions=HEALTHY
    )
    assert regions_to_roll_back(plan, "eu-west", ["ap-south", "eu-west"]) == ["ap-south", "eu-west"]


def test_the_sticky_key_is_the_meridian_header_else_the_idempotency_key() -> None:
    from meridian.invocation.versions import pinned_version, sticky_key

    assert sticky_key((("Idempotency-Key", "k1"), ("Meridian-Sticky-Key", "s1"))) == "s1"
    assert sticky_key((("idempotency-key", "k1"),)) == "k1"
    assert sticky_key((("Meridian-Sticky-Key", ""), ("x", "y"))) is None
    assert pinned_version((("Meridian-Version", " v2 "),)) == "v2"
    assert pinned_version(()) is None


def test_metric_labels_name_at_most_16_versions_of_a_service() -> None:
    from meridian.invocation.versions import metric_version

    seen: set[str] = set()
    labels = [metric_version(seen, f"v{i}") for i in range(20)]
    assert labels[:16] == [f"v{i}" for i in range(16)]
    assert labels[16:] == ["other"] * 4
    assert metric_version(seen, "v3") == "v3"  # one seen keeps its name
