"""Outlier ejection per instance, after Envoy's outlier detection.

An instance is ejected (taken out of load balancing) after
``consecutive_5xx`` server errors in a row, or ``consecutive_gateway_failures``
gateway errors in a row (502/503/504, connection failures, resets, timeouts).
Gateway errors count towards both; any other outcome resets both counters, as
in Envoy: a 4xx says the target is answering.

**Ejection time** is ``base_ejection_s * n``, where ``n`` counts this
instance's ejections, capped at ``max_ejection_s`` (:func:`ejection_duration`),
so an instance that keeps failing stays out longer each time. As in Envoy the
count decays: each full ``base_ejection_s`` an instance spends admitted takes
one off ``n``, so a long-recovered instance starts again from the base time.
Once its time is up the instance is readmitted (with fresh counters); this
happens on the next look at the detector, which needs no timer.

**Maximum share.** At most ``floor(max_ejected_share * instances)`` are ejected
at once; an ejection that would go over is skipped (and counted in
:attr:`OutlierDetector.skipped`) and tried again on the next failure.
Unlike Envoy, which ejects at least one host whatever the percentage, the share
is a hard limit here: with one instance and a share below 1 nothing is ejected,
and taking traffic away from a sick region is the breaker's and the balancer's
job. If instances leave so that the share is exceeded, the ejected instances
closest to readmission are readmitted early.

``now`` is a monotonic reading in seconds, passed in; the detector does no I/O.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meridian.invocation.resilience.policy import OutlierPolicy


class CallOutcome(enum.StrEnum):
    """What a call's result says about the instance that served it."""

    SUCCESS = "success"
    """Answered: 1xx-4xx, or a gRPC code that is the caller's problem."""
    SERVER_ERROR = "server_error"
    """A 5xx that is not a gateway error (500, 501, ...)."""
    GATEWAY_ERROR = "gateway_error"
    """502/503/504, or no answer at all: refused, reset, timed out."""


_GATEWAY_STATUSES = frozenset({502, 503, 504})
#: gRPC codes read as Envoy reads their HTTP equivalents (UNAVAILABLE→503,
#: DEADLINE_EXCEEDED→504, INTERNAL/UNKNOWN/DATA_LOSS→500).
_GRPC_GATEWAY = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
_GRPC_SERVER = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})


def classify_http(status: int) -> CallOutcome:
    """The outcome an HTTP status means for outlier detection."""
    if status in _GATEWAY_STATUSES:
        return CallOutcome.GATEWAY_ERROR
    if 500 <= status <= 599:
        return CallOutcome.SERVER_ERROR
    return CallOutcome.SUCCESS


def classify_grpc(code: str) -> CallOutcome:
    """The outcome a gRPC status code name (e.g. ``"UNAVAILABLE"``) means."""
    if code in _GRPC_GATEWAY:
        return CallOutcome.GATEWAY_ERROR
    if code in _GRPC_SERVER:
        return CallOutcome.SERVER_ERROR
    return CallOutcome.SUCCESS


def ejection_duration(policy: OutlierPolicy, times_ejected: int) -> float:
    """Seconds an instance ejected for the ``times_ejected``-th time stays out (>= 1)."""
    return min(policy.max_ejection_s, policy.base_ejection_s * max(1, times_ejected))


class EventKind(enum.StrEnum):
    EJECTED = "ejected"
    READMITTED = "readmitted"


@dataclass(frozen=True)
class OutlierEvent:
    """An instance left or rejoined load balancing at ``at``.

    For an ejection, ``until`` is when it will be readmitted and
    ``times_ejected`` the (decayed) count that set its duration.
    """

    instance: str
    kind: EventKind
    at: float
    reason: str
    until: float = 0.0
    times_ejected: int = 0


class _Host:
    __slots__ = ("consecutive_5xx", "consecutive_gateway", "decay_from", "ejected_until", "times")

    def __init__(self, now: float) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.times = 0
        self.ejected_until: float | None = None
        self.decay_from = now


class OutlierDetector:
    """Ejection state for the instances of one service (in one region, or all)."""

    def __init__(
        self,
        policy: OutlierPolicy | None = None,
        *,
        on_event: Callable[[OutlierEvent], None] | None = None,
    ) -> None:
        self.policy = policy or OutlierPolicy()
        self._on_event = on_event
        self._hosts: dict[str, _Host] = {}
        self._latest = float("-inf")
        #: Ejections not made because the maximum share was already ejected.
        self.skipped = 0

    # --- membership ----------------------------------------------------------

    def set_instances(self, instances: Iterable[str], now: float) -> None:
        """Track exactly these instances: new ones start admitted, gone ones are forgotten."""
        self._now(now)
        wanted = set(instances)
        for gone in set(self._hosts) - wanted:
            del self._hosts[gone]
        for new in wanted - set(self._hosts):
            self._hosts[new] = _Host(self._latest)
        self._expire()
        ejected = sorted(
            (h.ejected_until, name)
            for name, h in self._hosts.items()
            if h.ejected_until is not None
        )
        excess = len(ejected) - self._max_ejected()
        for _until, name in ejected[: max(0, excess)]:
            self._readmit(name, "ejected share above the maximum after instances left")

    @property
    def instances(self) -> frozenset[str]:
        return frozenset(self._hosts)

    # --- reading -------------------------------------------------------------

    def is_ejected(self, instance: str, now: float) -> bool:
        """Whether ``instance`` is out of load balancing at ``now`` (unknown: False)."""
        self._now(now)
        self._expire()
        host = self._hosts.get(instance)
        return host is not None and host.ejected_until is not None

    def ejected(self, now: float) -> frozenset[str]:
        """The instances out of load balancing at ``now``."""
        self._now(now)
        self._expire()
        return frozenset(n for n, h in self._hosts.items() if h.ejected_until is not None)

    def times_ejected(self, instance: str) -> int:
        """The instance's ejection count, before decay (0 for unknown instances)."""
        host = self._hosts.get(instance)
        return host.times if host is not None else 0

    # --- outcomes ------------------------------------------------------------

    def record(self, instance: str, outcome: CallOutcome, now: float) -> OutlierEvent | None:
        """Count one call's outcome; return the ejection it caused, if any.

        Outcomes for an instance that is not tracked (it left while the call
        was in flight) are ignored, as are outcomes for an instance already
        ejected (calls that were in flight when it was ejected).
        """
        self._now(now)
        self._expire()
        host = self._hosts.get(instance)
        if host is None or host.ejected_until is not None:
            return None
        if outcome is CallOutcome.SUCCESS:
            host.consecutive_5xx = host.consecutive_gateway = 0
            return None
        host.consecutive_5xx += 1
        if outcome is CallOutcome.GATEWAY_ERROR:
            host.consecutive_gateway += 1
        else:
            host.consecutive_gateway = 0
        policy = self.policy
        if policy.consecutive_gateway_failures and (
            host.consecutive_gateway >= policy.consecutive_gateway_failures
        ):
            return self._eject(instance, host, "consecutive gateway failures")
        if policy.consecutive_5xx and host.consecutive_5xx >= policy.consecutive_5xx:
            return self._eject(instance, host, "consecutive 5xx")
        return None

    # --- internals -----------------------------------------------------------

    def _now(self, now: float) -> None:
        self._latest = max(self._latest, now)

    def _max_ejected(self) -> int:
        return math.floor(self.policy.max_ejected_share * len(self._hosts))

    def _expire(self) -> None:
        for name, host in self._hosts.items():
            if host.ejected_until is not None and host.ejected_until <= self._latest:
                self._readmit(name, "ejection time elapsed", at=host.ejected_until)

    def _eject(self, name: str, host: _Host, reason: str) -> OutlierEvent | None:
        ejected_now = sum(1 for h in self._hosts.values() if h.ejected_until is not None)
        if ejected_now + 1 > self._max_ejected():
            self.skipped += 1
            return None
        decay = math.floor((self._latest - host.decay_from) / self.policy.base_ejection_s)
        host.times = max(0, host.times - max(0, decay)) + 1
        until = self._latest + ejection_duration(self.policy, host.times)
        host.ejected_until = until
        event = OutlierEvent(name, EventKind.EJECTED, self._latest, reason, until, host.times)
        if self._on_event is not None:
            self._on_event(event)
        return event

    def _readmit(self, name: str, reason: str, *, at: float | None = None) -> None:
        host = self._hosts[name]
        host.ejected_until = None
        host.consecutive_5xx = host.consecutive_gateway = 0
        host.decay_from = self._latest if at is None else at
        if self._on_event is not None:
            self._on_event(OutlierEvent(name, EventKind.READMITTED, host.decay_from, reason))
