"""What each version of a service served in this region: the numbers a
rollout's analysis compares.

Pure. The router records every call it makes to one of this region's
instances (:meth:`Traffic.record`: the version, success or not, the
latency); a snapshot is cumulative, so whoever drives a rollout takes one
at the start of a measurement and one at its end, and the difference
(:func:`window`) is what each version served in between. Cumulative counts
survive a change of driver: the new one starts from its own first snapshot.
An agent that restarted starts again from zero; a difference that would go
below zero counts the later snapshot alone.

Latency goes into fixed buckets (a p99 from buckets is as precise as the
bucket edges, which is what Prometheus' ``histogram_quantile`` gives too).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meridian.rollouts.analysis import Window

#: Bucket upper edges in ms; the last bucket is everything above.
EDGES_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2500, 5000, 10000,
)  # fmt: skip
#: The most versions tracked per service (older ones are dropped first).
MAX_VERSIONS = 16
#: The most services tracked.
MAX_SERVICES = 4096


@dataclass
class Counts:
    """One version's cumulative traffic."""

    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    #: Times an instance of this version was ejected as an outlier.
    ejections: int = 0
    #: Instances of this version ejected right now (set in snapshots only).
    ejected_now: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(EDGES_MS) + 1))

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "ejections": self.ejections,
            "ejected_now": self.ejected_now,
            "buckets": list(self.buckets),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Counts:
        buckets = [int(b) for b in raw.get("buckets", [])]
        if len(buckets) != len(EDGES_MS) + 1:
            buckets = [0] * (len(EDGES_MS) + 1)
        return cls(
            int(raw.get("requests", 0)),
            int(raw.get("errors", 0)),
            int(raw.get("in_flight", 0)),
            int(raw.get("ejections", 0)),
            int(raw.get("ejected_now", 0)),
            buckets,
        )


class Traffic:
    """This agent's per (service, version) counts; see the module docstring."""

    def __init__(self) -> None:
        self._by_service: dict[str, dict[str, Counts]] = {}

    def _counts(self, service: str, version: str) -> Counts:
        versions = self._by_service.get(service)
        if versions is None:
            if len(self._by_service) >= MAX_SERVICES:
                self._by_service.pop(next(iter(self._by_service)))
            versions = self._by_service[service] = {}
        counts = versions.get(version)
        if counts is None:
            if len(versions) >= MAX_VERSIONS:
                versions.pop(next(iter(versions)))
            counts = versions[version] = Counts()
        return counts

    def started(self, service: str, version: str) -> None:
        self._counts(service, version).in_flight += 1

    def record(self, service: str, version: str, ok: bool, seconds: float) -> None:
        """One call to ``version`` ended (it was counted as started)."""
        c = self._counts(service, version)
        c.in_flight = max(0, c.in_flight - 1)
        c.requests += 1
        c.errors += not ok
        c.buckets[bisect.bisect_left(EDGES_MS, seconds * 1000.0)] += 1

    def ejected(self, service: str, version: str) -> None:
        """An instance of ``version`` was ejected as an outlier here: the
        analysis counts it against the version even when the ejection left
        it too few calls to judge by error rate."""
        self._counts(service, version).ejections += 1

    def snapshot(
        self, service: str, ejected_now: Mapping[str, int] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Version -> its counts so far, as JSON; ``ejected_now``: version ->
        its instances ejected right now (the router's outlier ejection)."""
        out = {v: c.to_json() for v, c in self._by_service.get(service, {}).items()}
        for version, n in (ejected_now or {}).items():
            out.setdefault(version, Counts().to_json())["ejected_now"] = n
        return out


#: One region's traffic: agent -> version -> counts (as JSON).
Snapshot = Mapping[str, Mapping[str, Mapping[str, Any]]]


def total(snapshot: Snapshot, version: str) -> Counts:
    """One version's counts summed over the region's agents."""
    out = Counts()
    for versions in snapshot.values():
        raw = versions.get(version)
        if raw is not None:
            c = Counts.from_json(raw)
            out.requests += c.requests
            out.errors += c.errors
            out.in_flight += c.in_flight
    return out


def p99_ms(buckets: list[int]) -> float:
    """The 99th percentile from bucket counts: the upper edge of the bucket
    that holds it (NaN when empty; the last edge doubled when above all)."""
    total = sum(buckets)
    if total == 0:
        return math.nan
    rank = math.ceil(0.99 * total)
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return EDGES_MS[i] if i < len(EDGES_MS) else EDGES_MS[-1] * 2
    return EDGES_MS[-1] * 2  # unreachable


def window(before: Snapshot, after: Snapshot, version: str) -> Window:
    """What ``version`` served between two snapshots of a region, summed
    over its agents. An agent missing from either snapshot (its answer was
    late) adds nothing this time; one whose counts went down restarted in
    between, and adds what it counted since."""
    requests = errors = ejections = ejected_now = 0
    buckets = [0] * (len(EDGES_MS) + 1)
    for agent, versions in after.items():
        if agent not in before or version not in versions:
            continue
        a = Counts.from_json(versions[version])
        ejected_now += a.ejected_now
        raw = before[agent].get(version)
        b = Counts.from_json(raw) if raw is not None else Counts()
        if a.requests < b.requests:
            b = Counts()
        requests += a.requests - b.requests
        errors += max(0, a.errors - b.errors)
        ejections += max(0, a.ejections - b.ejections)
        buckets = [n + max(0, x - y) for n, x, y in zip(buckets, a.buckets, b.buckets, strict=True)]
    # An instance ejected before the window began and still out counts too:
    # it is why the version has few calls to judge by.
    return Window(requests, errors, p99_ms(buckets), ejections=max(ejections, ejected_now))
