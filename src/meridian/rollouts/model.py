"""Routing weights and rollout plans, checked field by field.

Pure.

**Weights** say which version a call to a service reaches in one region:
``{"v1": 95, "v2": 5}``. A call goes to a version that has a healthy instance
there, chosen in proportion to the weights among those. A call with a sticky
key (``Meridian-Sticky-Key``, else its idempotency key) is bucketed like a
flagd ``fractional``: MurmurHash3 of service + key over the weights in
version order, so the same key keeps reaching the same version while the
weights stay, and moves only when its bucket changes owner.

**A plan** rolls a new version out region by region: the canary region first,
then the waves, each either canary ``steps`` (weights rising to 100, each
held for ``hold_s`` and analysed) or a blue-green switch (0 then 100, with
analysis before and after). What a plan may not be is refused naming the
field: weights that never reach 100 or go down, an unknown region, a region
twice, the new version equal to the stable one, a version with no healthy
instance in a region it would reach.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.flags.targeting import distribute
from meridian.rollouts.analysis import Criteria

VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")
MAX_VERSIONS = 8
STRATEGIES = ("canary", "blue-green")


def weights_violations(weights: Any, field_name: str = "weights") -> list[FieldViolation]:
    """What is wrong with ``weights`` (version -> whole weight ≥ 0, some > 0)."""
    if not isinstance(weights, Mapping) or not weights:
        return [FieldViolation(field_name, "must be an object of version -> weight, not empty")]
    if len(weights) > MAX_VERSIONS:
        return [FieldViolation(field_name, f"at most {MAX_VERSIONS} versions")]
    out = []
    for version, weight in weights.items():
        if not isinstance(version, str) or not VERSION.fullmatch(version):
            out.append(
                FieldViolation(
                    f"{field_name}.{str(version)[:64]}",
                    "a version is 1-64 letters, digits, '_', '.', '+' or '-'",
                )
            )
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 10_000:
            out.append(
                FieldViolation(
                    f"{field_name}.{str(version)[:64]}", "must be a whole number 0-10000"
                )
            )
    if not out and sum(weights.values()) == 0:
        out.append(FieldViolation(field_name, "at least one weight must be above 0"))
    return out


def choose_version(
    service: str,
    weights: Mapping[str, int],
    available: Collection[str],
    sticky_key: str | None,
    rand: Callable[[], float],
) -> str | None:
    """The version a call reaches: among ``available`` versions (with a
    healthy instance here) by ``weights``; None when no weighted version is
    available (the caller then uses any healthy instance)."""
    pairs = sorted((v, w) for v, w in weights.items() if w > 0 and v in available)
    if not pairs:
        return None
    if sticky_key:
        chosen: str | None = distribute(f"{service}{sticky_key}", pairs)
        return chosen
    total = sum(w for _, w in pairs)
    point = min(total - 1, int(rand() * total))
    for version, weight in pairs:
        if point < weight:
            return version
        point -= weight
    return pairs[-1][0]  # unreachable


@dataclass(frozen=True)
class RegionStep:
    """How one region takes the new version."""

    region: str
    strategy: str = "canary"
    #: Canary: the new version's weight at each step, rising to 100.
    steps: tuple[int, ...] = (5, 25, 50, 100)
    hold_s: float = 15.0


@dataclass(frozen=True)
class Plan:
    service: str
    version: str
    stable: str
    #: The canary region first, then the waves, in order.
    regions: tuple[RegionStep, ...]
    analysis: Criteria = field(default_factory=Criteria)
    #: When a region fails: roll back only it, or every region that runs it.
    on_failure: str = "region"


def parse_plan(
    doc: Any,
    *,
    known_regions: Collection[str],
    healthy_versions: Mapping[str, Collection[str]],
) -> Plan:
    """``doc`` (decoded JSON) as a plan; InvalidArgumentError naming each
    field that breaks a rule. ``healthy_versions``: region -> the versions of
    the service with a healthy instance there now."""
    if not isinstance(doc, Mapping):
        raise InvalidArgumentError(FieldViolation("plan", "must be a JSON object"))
    v: list[FieldViolation] = []
    service = doc.get("service")
    if not isinstance(service, str) or not service:
        v.append(FieldViolation("service", "is required"))
    version, stable = doc.get("version"), doc.get("stable")
    for name, value in (("version", version), ("stable", stable)):
        if not isinstance(value, str) or not VERSION.fullmatch(value):
            v.append(
                FieldViolation(name, "is required: 1-64 letters, digits, '_', '.', '+' or '-'")
            )
    if isinstance(version, str) and version == stable:
        v.append(FieldViolation("version", "must differ from stable"))
    on_failure = doc.get("on_failure", "region")
    if on_failure not in ("region", "all"):
        v.append(FieldViolation("on_failure", "must be 'region' or 'all'"))
    raw_regions = doc.get("regions")
    steps: list[RegionStep] = []
    if not isinstance(raw_regions, list) or not raw_regions:
        v.append(FieldViolation("regions", "must list the regions in order, canary region first"))
        raw_regions = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_regions):
        step = _region_step(raw, f"regions[{i}]", known_regions, v)
        if step is None:
            continue
        if step.region in seen:
            v.append(FieldViolation(f"regions[{i}].region", f"{step.region!r} is listed twice"))
        seen.add(step.region)
        if isinstance(version, str) and version not in healthy_versions.get(step.region, ()):
            v.append(
                FieldViolation(
                    f"regions[{i}].region",
                    f"{step.region} has no healthy instance of {version!r} to shift traffic to",
                )
            )
        steps.append(step)
    analysis = Criteria(**_criteria_args(doc.get("analysis", {}), v))
    v.extend(analysis.violations())
    if v:
        raise InvalidArgumentError(v)
    return Plan(str(service), str(version), str(stable), tuple(steps), analysis, str(on_failure))


def _region_step(
    raw: Any, at: str, known: Collection[str], v: list[FieldViolation]
) -> RegionStep | None:
    if not isinstance(raw, Mapping):
        v.append(FieldViolation(at, "must be an object with region, strategy, steps, hold_s"))
        return None
    region = raw.get("region")
    if region not in known:
        v.append(FieldViolation(f"{at}.region", f"must be one of {', '.join(sorted(known))}"))
        return None
    strategy = raw.get("strategy", "canary")
    if strategy not in STRATEGIES:
        v.append(FieldViolation(f"{at}.strategy", "must be 'canary' or 'blue-green'"))
        return None
    default = (5, 25, 50, 100) if strategy == "canary" else (100,)
    steps = raw.get("steps", list(default))
    if strategy == "blue-green" and list(steps) != [100]:
        v.append(FieldViolation(f"{at}.steps", "a blue-green switch has one step: [100]"))
        return None
    if (
        not isinstance(steps, list)
        or not steps
        or any(isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= 100 for s in steps)
    ):
        v.append(FieldViolation(f"{at}.steps", "must be weights 1-100, e.g. [5, 25, 50, 100]"))
        return None
    if any(b <= a for a, b in itertools.pairwise(steps)):
        v.append(FieldViolation(f"{at}.steps", "must rise at every step"))
        return None
    if steps[-1] != 100:
        v.append(FieldViolation(f"{at}.steps", f"must reach 100; they stop at {steps[-1]}"))
        return None
    hold = raw.get("hold_s", 15.0)
    if isinstance(hold, bool) or not isinstance(hold, int | float) or not 1.0 <= hold <= 86_400:
        v.append(FieldViolation(f"{at}.hold_s", "must be seconds, 1 to 86400"))
        return None
    return RegionStep(str(region), str(strategy), tuple(steps), float(hold))


_CRITERIA_FIELDS = {
    "min_requests": int,
    "max_error_rate": float,
    "max_error_rate_increase": float,
    "max_p99_ratio": float,
    "count": int,
    "failure_limit": int,
    "inconclusive_limit": int,
    "max_ejections": int,
}


def _criteria_args(raw: Any, v: list[FieldViolation]) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        v.append(FieldViolation("analysis", "must be an object"))
        return {}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        kind = _CRITERIA_FIELDS.get(name)
        if name == "custom_max":
            numbers = isinstance(value, Mapping) and all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in value.values()
            )
            if numbers:
                out[name] = {str(k): float(x) for k, x in value.items()}
            else:
                v.append(
                    FieldViolation("analysis.custom_max", "must be an object of metric -> number")
                )
        elif kind is None:
            v.append(FieldViolation(f"analysis.{str(name)[:64]}", "is not a field of the analysis"))
        elif isinstance(value, bool) or not isinstance(value, int | float):
            v.append(FieldViolation(f"analysis.{name}", "must be a number"))
        elif kind is int and value != int(value):
            v.append(FieldViolation(f"analysis.{name}", "must be a whole number"))
        else:
            out[name] = kind(value)
    return out


def weights_at(plan: Plan, step_weight: int) -> dict[str, int]:
    """The region's weights while the new version is at ``step_weight``."""
    return {plan.version: step_weight, plan.stable: 100 - step_weight}


def rolled_back(plan: Plan) -> dict[str, int]:
    """A failed region's weights: the new version at 0, in one write."""
    return {plan.version: 0, plan.stable: 100}


def regions_to_roll_back(plan: Plan, failed: str, reached: Sequence[str]) -> list[str]:
    """Which regions go back to the stable version when ``failed`` fails, of
    those that already run the new version (``reached``), as the plan says."""
    if plan.on_failure == "all":
        return [r for r in reached if r != failed] + [failed]
    return [failed]
