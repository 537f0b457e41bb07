"""The global gateway's decisions (DESIGN §5, "Gateway"): which regions are in
rotation, and in which order a request tries them. Pure: no I/O, no clock of its
own; the gateway (:mod:`meridian.gateway`) feeds it check results and readings of
a monotonic clock.

**Health, per region.** A small state machine, one instance per region in a
:class:`HealthBoard`:

- a region starts *down* ("not checked yet"): the gateway sends nobody to a
  region it has not heard from;
- one successful check brings it *up* and clears its failure count;
- ``unhealthy_after`` failed checks in a row (a timeout, an answer other than
  200, e.g. the agent's 503 NOT_SERVING) take it *down*;
- a connection error (nothing listens, the host is unreachable) takes it down at
  once: there is no agent to wait for. The gateway also reports one when a
  proxied request could not connect.

A result is ignored if the check or request that produced it *started* before
the region's latest transition: a health check sent just before the region died
must not bring it back up after a proxied request found it gone.

**Round trip.** Each successful check's round trip feeds an exponentially
weighted moving average (:func:`ewma`), the gateway's own view of how far each
region is.

**Order.** :func:`choose_regions` lists the regions that are up, best first:
the hinted region (the client's ``Meridian-Region`` header) if it is up, then
the others nearest to the hinted region by the configured WAN latency; with no
hint, or one naming no configured region, by the gateway's measured round trip.
Ties go to measured round trip, then to configuration order. When no region
is up, :meth:`HealthBoard.choose` offers every region that ever answered
(panic mode) rather than none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from meridian.core.errors import FieldViolation, InvalidArgumentError

#: The longest region hint accepted; anything longer is a bad request.
HINT_MAX_CHARS = 64
_HINT = re.compile(r"[a-z0-9][a-z0-9-]*")

#: Weight of the newest round-trip sample in the moving average.
DEFAULT_RTT_ALPHA = 0.3

#: The ``last_error`` of a region no check has answered yet.
NOT_CHECKED = "not checked yet"

Latency = Callable[[str, str], float]
"""One-way configured WAN latency in ms from the first region to the second."""


def parse_hint(values: Sequence[str], header: str) -> str | None:
    """The region a request asks for, from the values of its hint ``header``.

    Returns None when there is no hint (no header, or an empty one). The value is
    trimmed and lower-cased; whether it names a configured region is not checked
    here (an unknown region is not an error: the request goes to the nearest).

    Raises :class:`InvalidArgumentError` naming ``header`` if the header appears
    more than once, is longer than :data:`HINT_MAX_CHARS`, or is not a region
    name (lower-case letters, digits and ``-``, starting with a letter or digit).
    """
    if len(values) > 1:
        raise InvalidArgumentError(
            FieldViolation(header, f"must appear at most once; it appears {len(values)} times")
        )
    if not values:
        return None
    raw = values[0]
    if len(raw) > HINT_MAX_CHARS:
        raise InvalidArgumentError(
            FieldViolation(
                header, f"is {len(raw)} characters long; a region name has at most {HINT_MAX_CHARS}"
            )
        )
    hint = raw.strip().lower()
    if not hint:
        return None
    if not _HINT.fullmatch(hint):
        raise InvalidArgumentError(
            FieldViolation(
                header,
                "must be a region name: letters, digits and '-', starting with a letter or digit",
            )
        )
    return hint


def ewma(previous: float | None, sample: float, alpha: float = DEFAULT_RTT_ALPHA) -> float:
    """The moving average after ``sample``: the sample itself if there was none yet.

    The result always lies between ``previous`` and ``sample`` (0 < alpha <= 1).
    """
    if previous is None:
        return sample
    return previous + alpha * (sample - previous)


def choose_regions(
    hint: str | None,
    up: Iterable[str],
    *,
    latency_ms: Latency,
    rtt_ms: Mapping[str, float | None],
) -> list[str]:
    """The regions of ``up`` (in configuration order) in the order a request tries them.

    - ``hint`` names one of ``up``: it comes first, then the rest by configured
      round trip to it (``latency_ms`` both ways);
    - ``hint`` names a configured region that is down: the rest by configured
      round trip to it, the failover order;
    - no hint, or one that is not in ``rtt_ms`` (no such region): by measured
      round trip, regions never measured last.

    Ties are broken by measured round trip, then configuration order. Regions that
    are down never appear; an empty list means none is up.
    """
    candidates = list(dict.fromkeys(up))
    position = {name: i for i, name in enumerate(candidates)}

    def measured(name: str) -> float:
        rtt = rtt_ms.get(name)
        return math.inf if rtt is None else rtt

    if hint is None or hint not in rtt_ms:
        return sorted(candidates, key=lambda r: (measured(r), position[r]))
    first = [hint] if hint in position else []
    rest = sorted(
        (r for r in candidates if r != hint),
        key=lambda r: (latency_ms(hint, r) + latency_ms(r, hint), measured(r), position[r]),
    )
    return first + rest


@dataclass(frozen=True)
class RegionHealth:
    """What the gateway believes about one region.

    ``since`` is the (monotonic) time of the latest transition, or of the board's
    creation; ``rtt_ms`` the moving average of successful checks' round trips,
    None before the first.
    """

    region: str
    up: bool = False
    consecutive_failures: int = 0
    last_error: str = NOT_CHECKED
    since: float = 0.0
    rtt_ms: float | None = None


@dataclass(frozen=True)
class Transition:
    """``region`` went up (``up``) or down at ``at``, because of ``reason``."""

    region: str
    up: bool
    at: float
    reason: str


class HealthBoard:
    """The health state of every configured region, and the order requests try them.

    Each ``record_*`` method returns the :class:`Transition` it caused, or None.
    An unknown region raises ``KeyError``.
    """

    def __init__(
        self,
        regions: Sequence[str],
        *,
        unhealthy_after: int,
        now: float,
        rtt_alpha: float = DEFAULT_RTT_ALPHA,
    ) -> None:
        if unhealthy_after < 1:
            raise ValueError("unhealthy_after must be at least 1")
        if not 0 < rtt_alpha <= 1:
            raise ValueError("rtt_alpha must be in (0, 1]")
        self.unhealthy_after = unhealthy_after
        self.rtt_alpha = rtt_alpha
        self._regions: dict[str, RegionHealth] = {
            name: RegionHealth(name, since=now) for name in regions
        }

    @property
    def regions(self) -> tuple[str, ...]:
        """Every configured region, in configuration order."""
        return tuple(self._regions)

    def get(self, region: str) -> RegionHealth:
        return self._regions[region]

    def snapshot(self) -> list[RegionHealth]:
        """Every region's state, in configuration order."""
        return list(self._regions.values())

    def up(self) -> list[str]:
        """The regions in rotation, in configuration order."""
        return [r.region for r in self._regions.values() if r.up]

    def record_success(
        self, region: str, rtt_ms: float, now: float, *, started: float | None = None
    ) -> Transition | None:
        """A check answered 200 after ``rtt_ms``. Up if it was down; failures cleared."""
        h = self._regions[region]
        if started is not None and started < h.since:
            return None
        rtt = ewma(h.rtt_ms, rtt_ms, self.rtt_alpha)
        if h.up:
            self._regions[region] = replace(h, consecutive_failures=0, rtt_ms=rtt)
            return None
        self._regions[region] = replace(h, up=True, consecutive_failures=0, since=now, rtt_ms=rtt)
        return Transition(region, True, now, "health check succeeded")

    def record_failure(
        self, region: str, error: str, now: float, *, started: float | None = None
    ) -> Transition | None:
        """A check failed (timeout, not 200). Down after ``unhealthy_after`` in a row."""
        h = self._regions[region]
        if started is not None and started < h.since:
            return None
        failures = h.consecutive_failures + 1
        if h.up and failures >= self.unhealthy_after:
            self._regions[region] = replace(
                h, up=False, consecutive_failures=failures, last_error=error, since=now
            )
            return Transition(region, False, now, f"{failures} failed checks in a row: {error}")
        self._regions[region] = replace(h, consecutive_failures=failures, last_error=error)
        return None

    def record_unreachable(
        self, region: str, error: str, now: float, *, started: float | None = None
    ) -> Transition | None:
        """Nothing could connect to the region: down at once."""
        h = self._regions[region]
        if started is not None and started < h.since:
            return None
        failures = h.consecutive_failures + 1
        if h.up:
            self._regions[region] = replace(
                h, up=False, consecutive_failures=failures, last_error=error, since=now
            )
            return Transition(region, False, now, f"unreachable: {error}")
        self._regions[region] = replace(h, consecutive_failures=failures, last_error=error)
        return None

    def choose(self, hint: str | None, latency_ms: Latency) -> list[str]:
        """:func:`choose_regions` over this board's regions that are up.

        When none is up, every region that has answered a check at least once
        (Envoy's panic mode): health checks fail in every region at once when
        JetStream elects a new meta leader, and the agents still serve much of
        their API meanwhile; a region that cannot be connected to is skipped by
        the caller as usual."""
        up = self.up()
        if not up:
            up = [r.region for r in self._regions.values() if r.rtt_ms is not None]
        return choose_regions(
            hint,
            up,
            latency_ms=latency_ms,
            rtt_ms={r.region: r.rtt_ms for r in self._regions.values()},
        )
