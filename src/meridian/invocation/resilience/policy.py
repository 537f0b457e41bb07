"""Resilience configuration: one frozen dataclass per mechanism, with defaults.

:class:`ResiliencePolicy` bundles the settings of every mechanism in this
package; :mod:`.overrides` resolves which one applies to a call (per service,
per route) and builds them from a configuration table.

Every value is checked when the object is built. A bad value raises
:class:`~meridian.core.errors.InvalidArgumentError` with one
:class:`~meridian.core.errors.FieldViolation` per broken rule, naming the field
and the rule, so nothing half-valid can reach a state machine. Integers must
be real ``int`` (not ``bool``), numbers finite.

Units: every duration is in seconds (``*_s``, a float), as elsewhere in the
Meridian configuration; shares and ratios are fractions, not percentages.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from meridian.core.errors import FieldViolation, InvalidArgumentError

#: gRPC codes it can make sense to retry. DEADLINE_EXCEEDED is not among them:
#: the deadline is the caller's, and it has passed.
RETRYABLE_GRPC_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL"})


class WindowKind(enum.StrEnum):
    """How the circuit breaker's sliding window is measured (as in resilience4j)."""

    COUNT = "count"
    """The last ``window_size`` calls."""
    TIME = "time"
    """The calls of the last ``window_s`` seconds, in ``window_buckets`` slices."""


class _Rules:
    """Collects violations of one object's fields, then raises them together."""

    def __init__(self, obj: object) -> None:
        self.obj = obj
        self.violations: list[FieldViolation] = []

    def check(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            self.violations.append(FieldViolation(name, rule))

    def integer(self, name: str, low: int, high: int, note: str = "") -> bool:
        value = getattr(self.obj, name)
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        self.check(ok, name, f"must be an integer in {low}..{high}{note}")
        return ok

    def number(self, name: str, low: float, high: float, *, open_low: bool, unit: str) -> bool:
        value = getattr(self.obj, name)
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (low < value if open_low else low <= value)
            and value <= high
        )
        self.check(ok, name, f"must be in {'(' if open_low else '['}{low:g}, {high:g}]{unit}")
        return ok

    def seconds(self, name: str, high: float) -> bool:
        return self.number(name, 0, high, open_low=True, unit=" seconds")

    def done(self) -> None:
        if self.violations:
            raise InvalidArgumentError(self.violations)


@dataclass(frozen=True)
class BreakerPolicy:
    """Circuit breaker per (service, region); see :mod:`.breaker`.

    The breaker opens when, in CLOSED, either ``consecutive_failures`` calls in
    a row failed (0 disables this trigger), or the window holds at least
    ``minimum_calls`` calls and their failure rate is ``>= failure_rate``.
    It stays open ``open_cooldown_s``, then lets ``half_open_probes`` probes
    through; it closes once all of them have succeeded.
    """

    window: WindowKind = WindowKind.COUNT
    window_size: int = 20
    window_s: float = 10.0
    window_buckets: int = 10
    minimum_calls: int = 10
    failure_rate: float = 0.5
    consecutive_failures: int = 5
    open_cooldown_s: float = 5.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        r = _Rules(self)
        r.check(isinstance(self.window, WindowKind), "window", "must be 'count' or 'time'")
        size_ok = r.integer("window_size", 1, 10_000, " calls")
        r.seconds("window_s", 3600)
        r.integer("window_buckets", 1, 1000)
        calls_ok = r.integer("minimum_calls", 1, 10_000)
        if size_ok and calls_ok and self.window is WindowKind.COUNT:
            r.check(
                self.minimum_calls <= self.window_size,
                "minimum_calls",
                "must be <= window_size, or the failure rate could never be judged",
            )
        r.number("failure_rate", 0, 1, open_low=True, unit=" (a fraction)")
        r.integer("consecutive_failures", 0, 10_000, " (0 disables the trigger)")
        r.seconds("open_cooldown_s", 3600)
        r.integer("half_open_probes", 1, 1000)
        r.done()


@dataclass(frozen=True)
class RetryBudgetPolicy:
    """Retry budget per target service (Finagle's ``RetryBudget``); see :mod:`.budget`.

    Over ``window_s``, retries may be at most ``ratio`` x requests, plus a
    reserve of ``min_retries_per_s`` x ``window_s`` so that a quiet service
    can still retry at all.
    """

    ratio: float = 0.2
    min_retries_per_s: float = 1.0
    window_s: float = 10.0
    window_buckets: int = 10

    def __post_init__(self) -> None:
        r = _Rules(self)
        r.number("ratio", 0, 10, open_low=False, unit=" (0.2 lets retries add 20% load)")
        r.number("min_retries_per_s", 0, 10_000, open_low=False, unit=" retries per second")
        r.seconds("window_s", 3600)
        r.integer("window_buckets", 1, 1000)
        r.done()


@dataclass(frozen=True)
class OutlierPolicy:
    """Outlier ejection per instance (Envoy's outlier detection); see :mod:`.outlier`.

    Envoy's defaults, except ``max_ejected_share``: Envoy's 10% would never
    eject anything in a region with fewer than ten instances.
    """

    consecutive_5xx: int = 5
    consecutive_gateway_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_share: float = 0.5

    def __post_init__(self) -> None:
        r = _Rules(self)
        r.integer("consecutive_5xx", 0, 10_000, " (0 disables the trigger)")
        r.integer("consecutive_gateway_failures", 0, 10_000, " (0 disables the trigger)")
        base_ok = r.seconds("base_ejection_s", 86_400)
        max_ok = r.seconds("max_ejection_s", 86_400)
        if base_ok and max_ok:
            r.check(
                self.max_ejection_s >= self.base_ejection_s,
                "max_ejection_s",
                "must be >= base_ejection_s",
            )
        r.number("max_ejected_share", 0, 1, open_low=False, unit=" (a fraction)")
        r.done()


@dataclass(frozen=True)
class BulkheadPolicy:
    """Concurrency limit per target; see :mod:`.bulkhead`."""

    max_concurrent: int = 100

    def __post_init__(self) -> None:
        r = _Rules(self)
        r.integer("max_concurrent", 1, 1_000_000, " concurrent calls")
        r.done()


@dataclass(frozen=True)
class RetryPolicy:
    """Which failed calls are tried again, and when; see :mod:`.retry`.

    ``max_attempts`` counts the first try (1 disables retries). The pause
    before retry ``n`` (n = 1, 2, ...) is uniform in ``[0, min(max_backoff_s,
    base_backoff_s * 2**(n-1))]`` (full jitter). Defaults follow Envoy: 25 ms
    base, ten times that as the cap, retry on 502/503/504 and gRPC UNAVAILABLE.
    ``per_try_timeout_s`` (unset: none) bounds each attempt within the deadline.
    """

    max_attempts: int = 3
    base_backoff_s: float = 0.025
    max_backoff_s: float = 0.25
    per_try_timeout_s: float | None = None
    retry_on_http_status: tuple[int, ...] = (502, 503, 504)
    retry_on_grpc_code: tuple[str, ...] = ("UNAVAILABLE",)

    def __post_init__(self) -> None:
        r = _Rules(self)
        r.integer("max_attempts", 1, 10, " (1: no retries)")
        base_ok = r.seconds("base_backoff_s", 60)
        max_ok = r.seconds("max_backoff_s", 600)
        if base_ok and max_ok:
            r.check(
                self.max_backoff_s >= self.base_backoff_s,
                "max_backoff_s",
                "must be >= base_backoff_s",
            )
        if self.per_try_timeout_s is not None:
            r.seconds("per_try_timeout_s", 3600)
        r.check(
            all(
                isinstance(s, int) and (500 <= s <= 599 or s == 429)
                for s in self.retry_on_http_status
            ),
            "retry_on_http_status",
            "may only list 429 and 5xx statuses",
        )
        r.check(
            all(c in RETRYABLE_GRPC_CODES for c in self.retry_on_grpc_code),
            "retry_on_grpc_code",
            f"may only list {', '.join(sorted(RETRYABLE_GRPC_CODES))}",
        )
        r.done()


@dataclass(frozen=True)
class TimeoutPolicy:
    """Deadlines; see :mod:`.deadline`.

    ``default_s`` applies when the caller sent no deadline; ``max_s`` caps any
    deadline a caller asks for, so that a hostile ``99999999H`` can't pin
    resources for ever.
    """

    default_s: float = 30.0
    max_s: float = 300.0

    def __post_init__(self) -> None:
        r = _Rules(self)
        default_ok = r.seconds("default_s", 86_400)
        max_ok = r.seconds("max_s", 86_400)
        if default_ok and max_ok:
            r.check(self.default_s <= self.max_s, "default_s", "must be <= max_s")
        r.done()


@dataclass(frozen=True)
class BalancerPolicy:
    """Instance and region choice; see :mod:`.balancer`.

    The local region is preferred while it has a healthy, non-ejected instance
    and at least ``min_local_healthy_share`` of its instances are so (0: until
    none is left, the issue's rule). ``region_priority``, when set, replaces
    the measured-RTT order of the other regions.
    """

    min_local_healthy_share: float = 0.0
    region_priority: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        r = _Rules(self)
        r.number("min_local_healthy_share", 0, 1, open_low=False, unit=" (a fraction)")
        r.check(
            len(set(self.region_priority)) == len(self.region_priority),
            "region_priority",
            "must not list a region twice",
        )
        r.done()


@dataclass(frozen=True)
class FallbackPolicy:
    """An optional configured response, sent when every attempt failed.

    ``enabled`` false (the default) means failures reach the caller as they are.
    """

    enabled: bool = False
    http_status: int = 503
    grpc_code: str = "UNAVAILABLE"
    body: str = ""
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        r = _Rules(self)
        r.integer("http_status", 100, 599, " (an HTTP status)")
        r.check(
            self.grpc_code.isascii()
            and self.grpc_code.isupper()
            and self.grpc_code.replace("_", "").isalpha(),
            "grpc_code",
            "must be a gRPC code name such as UNAVAILABLE",
        )
        r.check(len(self.body.encode()) <= 64 * 1024, "body", "must be at most 64 KiB")
        r.done()


@dataclass(frozen=True)
class ResiliencePolicy:
    """Everything the invocation path needs to know for one call."""

    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    budget: RetryBudgetPolicy = field(default_factory=RetryBudgetPolicy)
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)
    bulkhead: BulkheadPolicy = field(default_factory=BulkheadPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: TimeoutPolicy = field(default_factory=TimeoutPolicy)
    balancer: BalancerPolicy = field(default_factory=BalancerPolicy)
    fallback: FallbackPolicy = field(default_factory=FallbackPolicy)
