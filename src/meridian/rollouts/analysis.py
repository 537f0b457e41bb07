"""Rollout analysis: is the new version as good as the stable one, right now?

Pure. Each *measurement* compares the new version with the stable one over
the same window in the same region (the agents' own request counts, errors
and latency), and ends as Argo Rollouts' measurements do:

- ``Failed`` when a failure condition holds: the new version's error rate is
  over ``max_error_rate``, or over the stable one's by more than
  ``max_error_rate_increase``, or its p99 is over ``max_p99_ratio`` times the
  stable one's, or a custom metric is over its limit (each judged once it
  served ``min_requests``); or its instances were ejected as outliers more
  than ``max_ejections`` times (judged at once: the ejection is what left it
  with few calls);
- ``Successful`` when none holds and both versions served at least
  ``min_requests`` in the window (a comparison needs both sides);
- ``Inconclusive`` otherwise, and in particular when the new version served
  too little: no traffic is not success.

An *analysis* is ``count`` measurements. As in Argo Rollouts it ends
``Failed`` once more than ``failure_limit`` measurements failed,
``Inconclusive`` once more than ``inconclusive_limit`` were inconclusive, and
``Successful`` only when all ``count`` were taken and neither limit was
passed, with at least one successful measurement (a run of only
inconclusive ones within a generous limit is no evidence: Inconclusive).
With the default limits (failure 0, inconclusive 1) one failed measurement
fails it. Its action (:func:`action`): Successful promotes, Failed rolls the
region back at once, Inconclusive pauses for an operator; an Inconclusive
analysis never promotes (the bug Argo Rollouts v1.8.2 fixed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from meridian.core.errors import FieldViolation, InvalidArgumentError

#: The fewest calls on each side for p99s to be compared: the p99 of fewer
#: than 100 calls is their maximum, one slow call.
P99_MIN_SAMPLES = 100


class Phase(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    RUNNING = "Running"


class Action(StrEnum):
    PROMOTE = "promote"
    ROLL_BACK = "roll-back"
    PAUSE = "pause"
    WAIT = "wait"


@dataclass(frozen=True)
class Window:
    """One version's traffic in one region over one window."""

    requests: int
    errors: int
    #: The window's p99 latency in ms (NaN when nothing was served).
    p99_ms: float = math.nan
    #: Custom metrics the plan names, by name.
    custom: Mapping[str, float] = field(default_factory=dict)
    #: Times one of the version's instances was ejected as an outlier.
    ejections: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else math.nan


@dataclass(frozen=True)
class Criteria:
    """What the new version must meet, against the stable one."""

    min_requests: int = 20
    max_error_rate: float = 0.05
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    #: Custom metric name -> the most it may be (the new version's value).
    custom_max: Mapping[str, float] = field(default_factory=dict)
    count: int = 3
    failure_limit: int = 0
    inconclusive_limit: int = 1
    #: The most outlier ejections of the new version's instances a window may see.
    max_ejections: int = 0

    def violations(self, field_name: str = "analysis") -> list[FieldViolation]:
        v = []
        if self.min_requests < 1:
            v.append(FieldViolation(f"{field_name}.min_requests", "must be at least 1"))
        for name in ("max_error_rate", "max_error_rate_increase"):
            x = getattr(self, name)
            if not (0.0 <= x <= 1.0):
                v.append(FieldViolation(f"{field_name}.{name}", "must be between 0 and 1"))
        if not (self.max_p99_ratio >= 1.0 and math.isfinite(self.max_p99_ratio)):
            v.append(FieldViolation(f"{field_name}.max_p99_ratio", "must be a number, at least 1"))
        if self.count < 1:
            v.append(FieldViolation(f"{field_name}.count", "must be at least 1"))
        for name in ("failure_limit", "inconclusive_limit", "max_ejections"):
            if getattr(self, name) < 0:
                v.append(FieldViolation(f"{field_name}.{name}", "must be at least 0"))
        for name, limit in self.custom_max.items():
            if not math.isfinite(limit):
                v.append(FieldViolation(f"{field_name}.custom_max.{name}", "must be a number"))
        return v

    def check(self, field_name: str = "analysis") -> None:
        v = self.violations(field_name)
        if v:
            raise InvalidArgumentError(v)


@dataclass(frozen=True)
class Measurement:
    phase: Phase
    reasons: tuple[str, ...] = ()


def measure(new: Window, stable: Window, c: Criteria) -> Measurement:
    """One measurement of the new version against the stable one."""
    failed: list[str] = []
    if new.requests >= 1:
        rate = new.error_rate
        if rate > c.max_error_rate:
            failed.append(f"error rate {rate:.2%} > {c.max_error_rate:.2%}")
        if (
            stable.requests >= c.min_requests
            and rate > stable.error_rate + c.max_error_rate_increase
        ):
            failed.append(
                f"error rate {rate:.2%} > stable {stable.error_rate:.2%} + "
                f"{c.max_error_rate_increase:.2%}"
            )
        if (
            min(new.requests, stable.requests) >= P99_MIN_SAMPLES
            and math.isfinite(new.p99_ms)
            and math.isfinite(stable.p99_ms)
            and stable.p99_ms > 0
            and new.p99_ms > c.max_p99_ratio * stable.p99_ms
        ):
            failed.append(
                f"p99 {new.p99_ms:.1f} ms > {c.max_p99_ratio:g} x stable {stable.p99_ms:.1f} ms"
            )
        for name, limit in c.custom_max.items():
            value = new.custom.get(name)
            if value is not None and value > limit:
                failed.append(f"{name} {value:g} > {limit:g}")
    if failed and new.requests >= c.min_requests:
        return Measurement(Phase.FAILED, tuple(failed))
    if new.ejections > c.max_ejections:
        # The router took the version's instances out for failing: whatever
        # little traffic is left to count, that is a failure, not a lack of data.
        failed.append(f"{new.ejections} outlier ejection(s) of its instances")
        return Measurement(Phase.FAILED, tuple(failed))
    if new.requests < c.min_requests:
        return Measurement(
            Phase.INCONCLUSIVE,
            (f"the new version served {new.requests} requests; at least {c.min_requests} needed",),
        )
    if stable.requests < c.min_requests:
        return Measurement(
            Phase.INCONCLUSIVE,
            (f"the stable version served {stable.requests} requests; nothing to compare with",),
        )
    missing = [name for name in c.custom_max if name not in new.custom]
    if missing:
        return Measurement(Phase.INCONCLUSIVE, (f"no value for {', '.join(sorted(missing))}",))
    return Measurement(Phase.SUCCESSFUL)


def assess(measurements: Sequence[Measurement], c: Criteria) -> Phase:
    """The analysis so far: Failed or Inconclusive as soon as a limit is
    passed, Successful once all ``count`` measurements are in, else Running."""
    failed = sum(m.phase is Phase.FAILED for m in measurements)
    inconclusive = sum(m.phase is Phase.INCONCLUSIVE for m in measurements)
    if failed > c.failure_limit:
        return Phase.FAILED
    if inconclusive > c.inconclusive_limit:
        return Phase.INCONCLUSIVE
    if len(measurements) >= c.count:
        # Within the limits, but with no successful measurement at all (no
        # traffic, say) there is no evidence for the new version: not success.
        succeeded = any(m.phase is Phase.SUCCESSFUL for m in measurements)
        return Phase.SUCCESSFUL if succeeded else Phase.INCONCLUSIVE
    return Phase.RUNNING


ACTIONS: Mapping[Phase, Action] = {
    Phase.SUCCESSFUL: Action.PROMOTE,
    Phase.FAILED: Action.ROLL_BACK,
    Phase.INCONCLUSIVE: Action.PAUSE,
    Phase.RUNNING: Action.WAIT,
}


def action(phase: Phase) -> Action:
    """What the controller does with an analysis in ``phase``."""
    return ACTIONS[phase]
