"""Instance choice (least outstanding, healthy, not ejected) and region failover order."""

from __future__ import annotations

import random

from hypothesis import example, given
from hypothesis import strategies as st

from meridian.invocation.resilience.balancer import (
    Candidate,
    RegionView,
    local_first,
    pick_instance,
    region_order,
)
from meridian.invocation.resilience.policy import BalancerPolicy


def _first() -> float:
    return 0.0


def test_picks_the_fewest_outstanding_healthy_instance() -> None:
    candidates = [
        Candidate("a", outstanding=0, healthy=False),
        Candidate("b", outstanding=3),
        Candidate("c", outstanding=1),
        Candidate("d", outstanding=0),
    ]
    chosen = pick_instance(candidates, ejected={"d"}, rand=_first)
    assert chosen is not None and chosen.instance == "c"


def test_none_when_nothing_is_usable() -> None:
    assert pick_instance([], rand=_first) is None
    candidates = [Candidate("a", healthy=False), Candidate("b")]
    assert pick_instance(candidates, ejected={"b"}, rand=_first) is None


def test_ties_are_broken_by_the_random_source() -> None:
    candidates = [Candidate(name) for name in "abcd"]
    picks = {pick_instance(candidates, rand=lambda r=r: r) for r in (0.0, 0.3, 0.6, 0.99)}
    assert {p.instance for p in picks if p is not None} == set("abcd")
    rng = random.Random(7)
    counts = {name: 0 for name in "abcd"}
    for _ in range(4000):
        chosen = pick_instance(candidates, rand=rng.random)
        assert chosen is not None
        counts[chosen.instance] += 1
    assert min(counts.values()) > 800  # spread, not always the first


candidates_strategy = st.lists(
    st.builds(
        Candidate,
        instance=st.sampled_from([f"i{n}" for n in range(8)]),
        healthy=st.booleans(),
        outstanding=st.integers(0, 5),
    ),
    max_size=8,
    unique_by=lambda c: c.instance,
)


@given(
    candidates_strategy,
    st.sets(st.sampled_from([f"i{n}" for n in range(8)])),
    st.floats(0, 1, exclude_max=True),
)
def test_never_picks_an_ejected_or_unhealthy_instance(
    candidates: list[Candidate], ejected: set[str], r: float
) -> None:
    chosen = pick_instance(candidates, ejected=ejected, rand=lambda: r)
    usable = [c for c in candidates if c.healthy and c.instance not in ejected]
    if not usable:
        assert chosen is None
        return
    assert chosen is not None
    assert chosen.healthy and chosen.instance not in ejected
    assert chosen.outstanding == min(c.outstanding for c in usable)


POLICY = BalancerPolicy()


def test_local_first_then_by_measured_rtt() -> None:
    regions = [
        RegionView("us-east", usable=2, total=3, rtt_s=0.0),
        RegionView("ap-south", usable=1, total=1, rtt_s=0.2),
        RegionView("eu-west", usable=1, total=1, rtt_s=0.07),
        RegionView("sa-east", usable=1, total=1, rtt_s=None),
    ]
    assert region_order("us-east", regions, POLICY) == ["us-east", "eu-west", "ap-south", "sa-east"]


def test_fails_over_when_no_local_instance_is_usable() -> None:
    regions = [
        RegionView("us-east", usable=0, total=3),
        RegionView("eu-west", usable=1, total=1, rtt_s=0.07),
        RegionView("ap-south", usable=0, total=2, rtt_s=0.01),
    ]
    assert region_order("us-east", regions, POLICY) == ["eu-west"]


def test_local_below_the_healthy_share_becomes_the_last_resort() -> None:
    policy = BalancerPolicy(min_local_healthy_share=0.5)
    regions = [
        RegionView("us-east", usable=1, total=4),
        RegionView("eu-west", usable=2, total=2, rtt_s=0.07),
    ]
    assert region_order("us-east", regions, policy) == ["eu-west", "us-east"]


def test_configured_priority_beats_rtt() -> None:
    policy = BalancerPolicy(region_priority=("ap-south",))
    regions = [
        RegionView("us-east", usable=1, total=1),
        RegionView("eu-west", usable=1, total=1, rtt_s=0.07),
        RegionView("ap-south", usable=1, total=1, rtt_s=0.2),
    ]
    assert region_order("us-east", regions, policy) == ["us-east", "ap-south", "eu-west"]


@given(
    st.lists(
        st.builds(
            RegionView,
            region=st.sampled_from(["r0", "r1", "r2", "r3", "r4"]),
            usable=st.integers(0, 3),
            total=st.integers(0, 3),
            rtt_s=st.one_of(st.none(), st.floats(0, 1, allow_nan=False)),
        ),
        unique_by=lambda r: r.region,
    ),
    st.floats(0, 1),
)
# Found by CI: the local region alone, below the share, is the last resort and so first.
@example([RegionView("r0", usable=1, total=2)], 1.0)
@example([RegionView("r0", usable=1, total=2), RegionView("r1", usable=1, total=1)], 1.0)
def test_region_order_lists_each_usable_region_once(
    regions: list[RegionView], share: float
) -> None:
    order = region_order("r0", regions, BalancerPolicy(min_local_healthy_share=share))
    assert sorted(order) == sorted(r.region for r in regions if r.usable > 0)
    remote = [r for r in regions if r.region != "r0" and r.usable > 0 and r.rtt_s is not None]
    measured = [name for name in order if name in {r.region for r in remote}]
    rtt = {r.region: r.rtt_s for r in remote}
    assert [rtt[n] for n in measured] == sorted(rtt[n] for n in measured)
    # The router's shortcut: when local_first says so, the local region leads;
    # otherwise a local region with usable instances is the last resort (which is
    # also first when no other region is usable).
    here = next((r for r in regions if r.region == "r0"), None)
    leads = here is not None and local_first(here, BalancerPolicy(min_local_healthy_share=share))
    if leads:
        assert order[0] == "r0"
    elif "r0" in order:
        assert order[-1] == "r0"
