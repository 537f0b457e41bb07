"""Choosing where a call goes: which region, then which instance.

**Region order** (:func:`region_order`). The local region comes first while
it has a healthy, non-ejected instance and at least
``min_local_healthy_share`` of its instances are so. The other regions follow
by measured round-trip time, fastest first (regions with no measurement after
those with one, by name), or in the configured ``region_priority``. A region
with no usable instance is left out. A local region that still has usable
instances but fell below the share is kept as the last resort, which is
Envoy's panic-threshold idea turned around: rather than fail, use what is
left. The caller walks the order and asks each region's circuit breaker
(:mod:`.breaker`) for a permit; the first region that grants one gets the
call. This module never touches a breaker, so computing an order has no side
effects.

**Instance choice** (:func:`pick_instance`). Among the instances that are
healthy and not ejected (:mod:`.outlier`), the one with the fewest
outstanding requests, ties broken by the injected random source. That is
Envoy's ``LEAST_REQUEST`` with a full scan instead of "power of two choices":
a region's instance list is short, and a full scan never picks the busier of
two when an idle one exists.

Both functions are pure: the caller supplies health, ejection, load and RTT.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from meridian.invocation.resilience.policy import BalancerPolicy
from meridian.invocation.resilience.retry import RandomSource


@dataclass(frozen=True)
class Candidate:
    """One instance as the balancer sees it right now."""

    instance: str
    healthy: bool = True
    outstanding: int = 0


@dataclass(frozen=True)
class RegionView:
    """One region as the router sees it right now.

    ``usable`` counts instances that are healthy and not ejected, ``total``
    all registered ones. For a remote region, what the replicated registry
    says (its agent health-checks them). ``rtt_s`` is the measured round trip
    to that region's agent, None if not measured yet.
    """

    region: str
    usable: int
    total: int
    rtt_s: float | None = None


def pick_instance(
    candidates: Sequence[Candidate],
    *,
    ejected: Collection[str] = frozenset(),
    rand: RandomSource,
) -> Candidate | None:
    """The healthy, non-ejected candidate with the fewest outstanding requests.

    Ties are broken by ``rand`` (uniform in [0, 1)). None if no candidate
    qualifies: the caller then fails over to another region.
    """
    best: list[Candidate] = []
    least = math.inf
    for c in candidates:
        if not c.healthy or c.instance in ejected:
            continue
        if c.outstanding < least:
            least = c.outstanding
            best = [c]
        elif c.outstanding == least:
            best.append(c)
    if not best:
        return None
    if len(best) == 1:
        return best[0]
    index = math.floor(min(max(rand(), 0.0), 1.0) * len(best))
    return best[min(index, len(best) - 1)]


def local_first(here: RegionView, policy: BalancerPolicy) -> bool:
    """Whether the local region ``here`` leads the order: it has a usable
    instance and at least ``min_local_healthy_share`` of its instances are
    usable. The router's common case, decided without looking at other regions."""
    if here.usable <= 0:
        return False
    share = here.usable / here.total if here.total > 0 else 1.0
    return share >= policy.min_local_healthy_share


def region_order(local: str, regions: Iterable[RegionView], policy: BalancerPolicy) -> list[str]:
    """The regions to try, best first; see the module docstring for the rules."""
    views = {r.region: r for r in regions}
    order: list[str] = []
    last_resort: list[str] = []
    here = views.get(local)
    if here is not None and here.usable > 0:
        (order if local_first(here, policy) else last_resort).append(local)
    remote = [r for r in views.values() if r.region != local and r.usable > 0]
    rank = {name: i for i, name in enumerate(policy.region_priority)}

    def key(r: RegionView) -> tuple[int, float, str]:
        if r.region in rank:
            return (0, float(rank[r.region]), r.region)
        if r.rtt_s is not None and math.isfinite(r.rtt_s):
            return (1, r.rtt_s, r.region)
        return (2, 0.0, r.region)

    order.extend(r.region for r in sorted(remote, key=key))
    return order + last_resort
