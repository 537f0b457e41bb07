"""A rollout as it goes: its stored status, and each move the driver makes.

Pure. A rollout is one JSON document (key ``r/<service>`` of the ``global``
keyspace ``_rollouts``): the plan, the phase, each region's progress, the
analysis under way, the driver's lease, and the events so far. The driver
(:mod:`.controller`) reads it, calls :func:`advance` with the current
region's traffic, and writes the result back by CAS on the revision it read,
so a deposed driver's write fails (fencing). The routing weights follow from
the status alone (:func:`desired_weights`), and the driver reconciles them
on every tick: a driver killed between the two writes leaves nothing the next
one does not put right.

Phases, as Argo Rollouts names them where it can: ``Progressing``,
``Paused`` (an inconclusive analysis, or an operator), ``Healthy`` (every
region runs the new version), ``RolledBack`` (an analysis failed: the plan's
regions went back to the stable version), ``Aborted`` (an operator).

Each region is ``pending``, ``progressing``, ``promoted`` or ``rolled-back``.
A canary region steps through its weights; each step below 100 is analysed
(``count`` measurements, one every ``hold_s / count``), and reaching 100
promotes it. A blue-green region is analysed first at weight 0 (traffic
pinned to the new version, such as synthetic probes: ``Meridian-Version``),
then switched to 100 and analysed again against the stable version's numbers
from before the switch (nothing else runs it then).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meridian.rollouts.analysis import (
    Action,
    Measurement,
    Phase,
    Window,
    action,
    assess,
    measure,
)
from meridian.rollouts.model import (
    Plan,
    RegionStep,
    parse_plan,
    regions_to_roll_back,
    rolled_back,
    weights_at,
)
from meridian.rollouts.traffic import Snapshot, total, window

PROGRESSING, PAUSED, HEALTHY = "Progressing", "Paused", "Healthy"
ROLLED_BACK, ABORTED = "RolledBack", "Aborted"
FINAL = frozenset({HEALTHY, ROLLED_BACK, ABORTED})
PENDING, IN_PROGRESS, PROMOTED, REVERTED = "pending", "progressing", "promoted", "rolled-back"
#: The most events a status keeps (the audit log keeps them all).
MAX_EVENTS = 200
#: Blue-green's first, pre-promotion, step: the new version at weight 0.
PRE = -1


@dataclass
class RegionProgress:
    region: str
    state: str = PENDING
    #: Index into the region's steps (PRE: blue-green's pre-promotion).
    step: int = 0


@dataclass
class Consistency:
    """After a rollback: did every call that reached the new version in the
    rolled-back regions get its answer, and did none reach it afterwards?"""

    state: str = "running"  # running | passed | failed
    detail: str = ""
    #: Per region: the new version's requests + in flight at the switch.
    at_switch: dict[str, int] = field(default_factory=dict)


@dataclass
class Rollout:
    id: str
    plan: dict[str, Any]
    phase: str = PROGRESSING
    message: str = ""
    regions: list[RegionProgress] = field(default_factory=list)
    #: The analysis under way (the current region's current step).
    measurements: list[dict[str, Any]] = field(default_factory=list)
    next_measure_ms: int = 0
    #: The current region's snapshot (agent -> version -> counts) at the
    #: start of the measurement.
    baseline: dict[str, Any] = field(default_factory=dict)
    #: Blue-green: the stable version's last window before the switch.
    reference: dict[str, Any] | None = None
    driver: str = ""
    lease_until_ms: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Events ever recorded (``events`` keeps the last MAX_EVENTS).
    events_total: int = 0
    consistency: Consistency | None = None
    started_ms: int = 0
    updated_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Rollout:
        fields = {f.name for f in dataclasses.fields(cls)}
        doc = {k: v for k, v in raw.items() if k in fields}
        doc["regions"] = [RegionProgress(**r) for r in doc.get("regions", [])]
        c = doc.get("consistency")
        doc["consistency"] = Consistency(**c) if c else None
        return cls(**doc)

    @property
    def final(self) -> bool:
        return self.phase in FINAL

    @property
    def checking(self) -> bool:
        """A rollback's consistency check is still running."""
        return self.consistency is not None and self.consistency.state == "running"

    @property
    def over(self) -> bool:
        """Nothing is left to drive or check."""
        return self.final and not self.checking

    def parsed(self) -> Plan:
        return stored_plan(self.plan)

    def current(self) -> RegionProgress | None:
        return next((r for r in self.regions if r.state == IN_PROGRESS), None)

    def event(self, now_ms: int, kind: str, region: str = "", detail: str = "") -> None:
        self.events.append({"at_ms": now_ms, "kind": kind, "region": region, "detail": detail})
        self.events_total += 1
        del self.events[:-MAX_EVENTS]

    def events_since(self, total: int) -> list[dict[str, Any]]:
        """The events recorded since ``events_total`` was ``total``."""
        n = self.events_total - total
        return self.events[-n:] if n > 0 else []


def stored_plan(doc: Mapping[str, Any]) -> Plan:
    """A plan as stored: it was checked when submitted, but instances come
    and go, so it is not checked against them again."""
    regions = [r.get("region") for r in doc.get("regions", []) if isinstance(r, Mapping)]
    version = doc.get("version")
    return parse_plan(
        doc,
        known_regions=[r for r in regions if isinstance(r, str)],
        healthy_versions={r: (str(version),) for r in regions if isinstance(r, str)},
    )


def start(rollout_id: str, plan_doc: Mapping[str, Any], plan: Plan, now_ms: int) -> Rollout:
    r = Rollout(
        id=rollout_id,
        plan=dict(plan_doc),
        regions=[RegionProgress(s.region) for s in plan.regions],
        started_ms=now_ms,
        updated_ms=now_ms,
    )
    r.event(now_ms, "started", "", f"{plan.service} {plan.stable} -> {plan.version}")
    return r


def desired_weights(r: Rollout, plan: Plan) -> dict[str, dict[str, int]]:
    """Region -> the weights it must have now."""
    out = {}
    for progress, step in zip(r.regions, plan.regions, strict=True):
        if progress.state == PROMOTED:
            out[progress.region] = weights_at(plan, 100)
        elif progress.state == IN_PROGRESS and progress.step != PRE:
            out[progress.region] = weights_at(plan, step.steps[progress.step])
        else:
            out[progress.region] = rolled_back(plan)
    return out


def _step_of(plan: Plan, region: str) -> RegionStep:
    return next(s for s in plan.regions if s.region == region)


def interval_ms(step: RegionStep, plan: Plan) -> int:
    """How often the region's analysis measures."""
    return max(1, int(step.hold_s * 1000 / plan.analysis.count))


def _begin_step(r: Rollout, plan: Plan, region: RegionProgress, now_ms: int) -> None:
    step = _step_of(plan, region.region)
    r.measurements = []
    r.baseline = {}
    r.next_measure_ms = 0  # the first tick with traffic numbers takes the baseline
    weight = 0 if region.step == PRE else step.steps[region.step]
    r.event(now_ms, "step", region.region, f"{plan.version} at {weight}%")


def _next_region(r: Rollout, plan: Plan, now_ms: int) -> None:
    pending = next((p for p in r.regions if p.state == PENDING), None)
    if pending is None:
        r.phase, r.message = HEALTHY, f"every region runs {plan.version}"
        r.event(now_ms, "healthy", "", r.message)
        return
    pending.state = IN_PROGRESS
    step = _step_of(plan, pending.region)
    pending.step = PRE if step.strategy == "blue-green" else 0
    if step.strategy == "canary" and step.steps[0] == 100:
        _promoted(r, plan, pending, now_ms)  # one step, to 100: nothing to compare
        return
    _begin_step(r, plan, pending, now_ms)


def begin(r: Rollout, now_ms: int) -> None:
    """Put the first region in progress (right after :func:`start`)."""
    _next_region(r, r.parsed(), now_ms)


def _promote_step(r: Rollout, plan: Plan, region: RegionProgress, now_ms: int) -> None:
    step = _step_of(plan, region.region)
    if region.step == PRE:
        # Blue-green switch: keep the stable version's numbers to compare with.
        region.step = 0
        _begin_step(r, plan, region, now_ms)
        return
    if step.strategy == "canary" and region.step + 1 < len(step.steps):
        region.step += 1
        if step.steps[region.step] < 100:
            _begin_step(r, plan, region, now_ms)
            return
    _promoted(r, plan, region, now_ms)


def _promoted(r: Rollout, plan: Plan, region: RegionProgress, now_ms: int) -> None:
    region.state = PROMOTED
    r.event(now_ms, "promoted", region.region, f"{plan.version} at 100%")
    r.measurements, r.baseline, r.reference = [], {}, None
    _next_region(r, plan, now_ms)


def _roll_back(r: Rollout, plan: Plan, failed: str, why: str, now_ms: int) -> None:
    reached = [p.region for p in r.regions if p.state in (PROMOTED, IN_PROGRESS)]
    back = set(regions_to_roll_back(plan, failed, reached))
    for p in r.regions:
        if p.region in back:
            p.state = REVERTED
    r.phase = ROLLED_BACK
    r.message = f"analysis failed in {failed}: {why}"
    r.measurements, r.baseline = [], {}
    r.consistency = Consistency()
    r.event(now_ms, "rolled-back", failed, f"{', '.join(sorted(back))} back to {plan.stable}")


def _measure(r: Rollout, plan: Plan, region: RegionProgress, snap: Snapshot) -> None:
    new = window(r.baseline, snap, plan.version)
    stable = window(r.baseline, snap, plan.stable)
    if region.step == PRE:
        if stable.requests:
            r.reference = dataclasses.asdict(stable)
    elif _step_of(plan, region.region).strategy == "blue-green" and r.reference:
        # After the switch nothing runs the stable version here: compare with
        # what it served just before.
        stable = Window(**r.reference)
    m = measure(new, stable, plan.analysis)
    r.measurements.append(
        {
            "phase": m.phase.value,
            "reasons": list(m.reasons),
            "new": [new.requests, new.errors],
            "stable": [stable.requests, stable.errors],
        }
    )


def advance(r: Rollout, now_ms: int, snapshot: Snapshot | None) -> bool:
    """One tick of the driver: take a measurement when one is due (from
    ``snapshot``, the current region's traffic now, None when it could not
    be had) and act on the analysis. True when the status changed."""
    if r.phase != PROGRESSING:
        return False
    plan = r.parsed()
    region = r.current()
    if region is None:
        _next_region(r, plan, now_ms)
        return True
    if snapshot is None:
        return False
    step = _step_of(plan, region.region)
    if r.next_measure_ms == 0:
        r.baseline = _plain(snapshot)
        r.next_measure_ms = now_ms + interval_ms(step, plan)
        return True
    if now_ms < r.next_measure_ms:
        return False
    _measure(r, plan, region, snapshot)
    r.baseline = _plain(snapshot)
    r.next_measure_ms = now_ms + interval_ms(step, plan)
    measurements = [Measurement(Phase(m["phase"]), tuple(m["reasons"])) for m in r.measurements]
    verdict = assess(measurements, plan.analysis)
    what = action(verdict)
    if what is Action.PROMOTE:
        r.event(now_ms, "analysis", region.region, "Successful")
        _promote_step(r, plan, region, now_ms)
    elif what is Action.ROLL_BACK:
        why = "; ".join(r.measurements[-1]["reasons"]) or "failed"
        r.event(now_ms, "analysis", region.region, f"Failed: {why}")
        _roll_back(r, plan, region.region, why, now_ms)
    elif what is Action.PAUSE:
        why = "; ".join(r.measurements[-1]["reasons"]) or "inconclusive"
        r.phase, r.message = PAUSED, f"analysis inconclusive in {region.region}: {why}"
        r.event(now_ms, "analysis", region.region, f"Inconclusive: {why}")
    return True


def _plain(snapshot: Snapshot) -> dict[str, Any]:
    return {a: {v: dict(c) for v, c in versions.items()} for a, versions in snapshot.items()}


def check_consistency(r: Rollout, snapshots: Mapping[str, Snapshot]) -> bool:
    """After a rollback, with each rolled-back region's traffic now: passed
    once nothing is in flight to the new version and no call reached it
    after the switch (beyond those in flight then); failed when one did.
    True when the status changed."""
    c = r.consistency
    if c is None or c.state != "running":
        return False
    version = r.plan.get("version", "")
    back = [p.region for p in r.regions if p.state == REVERTED]
    if not back:
        c.state, c.detail = "passed", f"no region had sent calls to {version}"
        return True
    if any(not snapshots.get(region) for region in back):
        return False  # a region's agents did not answer: judge nothing yet
    if not c.at_switch:
        for region in back:
            counts = total(snapshots.get(region, {}), version)
            c.at_switch[region] = counts.requests + counts.in_flight
        return True
    late, busy, served = [], [], 0
    for region in back:
        counts = total(snapshots.get(region, {}), version)
        served += counts.requests
        if counts.requests > c.at_switch.get(region, 0):
            late.append(f"{region}: {counts.requests - c.at_switch[region]}")
        if counts.in_flight:
            busy.append(region)
    if late:
        c.state = "failed"
        c.detail = f"calls reached {version} after the rollback ({', '.join(late)})"
    elif busy:
        return False
    else:
        c.state = "passed"
        c.detail = (
            f"{served} calls had reached {version} in {', '.join(back)}; all were answered, "
            "none is in flight and none reached it after the rollback"
        )
    return True


def pause(r: Rollout, now_ms: int, why: str) -> None:
    if r.final:
        raise ValueError(f"the rollout is {r.phase}")
    r.phase, r.message = PAUSED, f"paused: {why}" if why else "paused by an operator"
    r.event(now_ms, "paused", "", why)


def promote(r: Rollout, now_ms: int, why: str) -> None:
    """An operator's promotion: the current step counts as successful, and
    a paused rollout goes on."""
    if r.final:
        raise ValueError(f"the rollout is {r.phase}")
    plan = r.parsed()
    r.phase, r.message = PROGRESSING, ""
    r.event(now_ms, "promote", "", why or "by an operator")
    region = r.current()
    if region is None:
        _next_region(r, plan, now_ms)
    else:
        _promote_step(r, plan, region, now_ms)


def abort(r: Rollout, now_ms: int, why: str) -> None:
    """Every region back to the stable version."""
    if r.final:
        raise ValueError(f"the rollout is {r.phase}")
    for p in r.regions:
        if p.state != PENDING:
            p.state = REVERTED
    r.phase, r.message = ABORTED, f"aborted: {why}" if why else "aborted by an operator"
    r.measurements, r.baseline = [], {}
    r.consistency = Consistency()
    r.event(now_ms, "aborted", "", why)
