"""RolloutService: start and steer rollouts, set routing weights.

Proto in, proto out. Authorization (``admin:rollouts`` on the service) is
the guard's; a change is checked first, then recorded in the audit log,
then stored (one CAS write of the rollout's status), so a refused change is
neither stored nor recorded. The driver (:mod:`.controller`) does the rest
and records each transition it makes.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Collection, Mapping

from meridian._pb.meridian.v1 import rollouts_pb2 as pb
from meridian.core.errors import (
    ConflictError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from meridian.flags.model import decode_json
from meridian.invocation.model import validate_service
from meridian.policy.model import Access, AuditTrail
from meridian.rollouts import progress
from meridian.rollouts.model import parse_plan, weights_violations
from meridian.rollouts.progress import Rollout
from meridian.rollouts.store import RolloutsComponent, encode, rollout_key, weights_key

MAX_PLAN_BYTES = 64 * 1024
MAX_REASON = 500


def rollout_pb(revision: int, r: Rollout) -> pb.Rollout:
    plan = r.plan
    desired = progress.desired_weights(r, r.parsed())
    version = str(plan.get("version", ""))
    c = r.consistency
    return pb.Rollout(
        id=r.id,
        service=str(plan.get("service", "")),
        version=version,
        stable=str(plan.get("stable", "")),
        phase=r.phase,
        message=r.message,
        regions=[
            pb.RegionRollout(
                region=p.region, state=p.state, weight=desired[p.region].get(version, 0)
            )
            for p in r.regions
        ],
        measurements=[
            f"{m['phase']}: {'; '.join(m['reasons'])}" if m["reasons"] else m["phase"]
            for m in r.measurements
        ],
        events=[
            pb.RolloutEvent(
                at_unix_ms=e["at_ms"], kind=e["kind"], region=e["region"], detail=e["detail"]
            )
            for e in r.events
        ],
        driver=r.driver,
        lease_until_unix_ms=r.lease_until_ms,
        consistency=c.state if c else "",
        consistency_detail=c.detail if c else "",
        plan=encode(r.plan).decode(),
        revision=revision,
        started_unix_ms=r.started_ms,
    )


class RolloutApi:
    """The RolloutService RPCs."""

    def __init__(
        self,
        rollouts: RolloutsComponent,
        *,
        regions: Collection[str],
        healthy_versions: Callable[[str], Mapping[str, Collection[str]]],
        trail: AuditTrail | None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.rollouts = rollouts
        self.regions = tuple(regions)
        self.healthy_versions = healthy_versions
        self.trail = trail
        self.clock_ms = clock_ms

    def _ready(self) -> None:
        if not self.rollouts.loaded:
            raise UnavailableError("this agent has not loaded the rollouts yet; try again")

    async def _audit(self, service: str, detail: Mapping[str, str]) -> None:
        if self.trail is not None:
            await self.trail.admin(
                uuid.uuid4().hex, Access("admin:rollouts", "Service", service), detail
            )

    async def _reconcile(self, r: Rollout) -> None:
        # A driver's write of the weights may race this one; it then loses
        # its next status write and the next tick reconciles from this status.
        with contextlib.suppress(ConflictError):
            await self.rollouts.reconcile(r)

    def _held(self, service: str) -> tuple[int, Rollout]:
        validate_service(service)
        self._ready()
        held = self.rollouts.rollout(service)
        if held is None:
            raise NotFoundError(f"service {service!r} has no rollout")
        return held

    # -- rollouts -------------------------------------------------------------

    async def start_rollout(self, request: pb.StartRolloutRequest) -> pb.RolloutResponse:
        doc = decode_json(request.plan, "plan", MAX_PLAN_BYTES)
        if isinstance(doc, dict) and isinstance(doc.get("service"), str):
            validate_service(doc["service"], "service")
        service = doc.get("service", "") if isinstance(doc, dict) else ""
        plan = parse_plan(
            doc,
            known_regions=self.regions,
            healthy_versions=self.healthy_versions(service) if service else {},
        )
        self._ready()
        held = self.rollouts.rollout(plan.service)
        if held is not None and not held[1].over:
            raise ConflictError(
                f"a rollout of {plan.service!r} is {held[1].phase}: abort it or let it end first"
            )
        now = self.clock_ms()
        r = progress.start(uuid.uuid4().hex[:12], doc, plan, now)
        progress.begin(r, now)
        await self._audit(
            plan.service,
            {"change": "start", "rollout": r.id, "version": plan.version, "stable": plan.stable},
        )
        revision = await self.rollouts.write(
            rollout_key(plan.service), r.to_json(), held[0] if held else 0
        )
        # Every region of the plan on its weights before this returns (the
        # driver reconciles them on each tick too).
        await self._reconcile(r)
        return pb.RolloutResponse(rollout=rollout_pb(revision, r))

    async def get_rollout(self, request: pb.GetRolloutRequest) -> pb.RolloutResponse:
        revision, r = self._held(request.service)
        return pb.RolloutResponse(rollout=rollout_pb(revision, r))

    async def _change(
        self,
        request: pb.RolloutActionRequest,
        what: str,
        act: Callable[[Rollout, int, str], None],
    ) -> pb.RolloutResponse:
        if len(request.reason) > MAX_REASON:
            raise InvalidArgumentError(FieldViolation("reason", f"at most {MAX_REASON} characters"))
        revision, r = self._held(request.service)
        try:
            act(r, self.clock_ms(), request.reason)
        except ValueError as exc:
            raise ConflictError(
                f"cannot {what} the rollout of {request.service!r}: {exc}"
            ) from None
        await self._audit(
            request.service, {"change": what, "rollout": r.id, "reason": request.reason}
        )
        revision = await self.rollouts.write(rollout_key(request.service), r.to_json(), revision)
        await self._reconcile(r)
        return pb.RolloutResponse(rollout=rollout_pb(revision, r))

    async def promote_rollout(self, request: pb.RolloutActionRequest) -> pb.RolloutResponse:
        return await self._change(request, "promote", progress.promote)

    async def pause_rollout(self, request: pb.RolloutActionRequest) -> pb.RolloutResponse:
        return await self._change(request, "pause", progress.pause)

    async def abort_rollout(self, request: pb.RolloutActionRequest) -> pb.RolloutResponse:
        return await self._change(request, "abort", progress.abort)

    async def rollout_history(self, request: pb.RolloutHistoryRequest) -> pb.RolloutHistoryResponse:
        validate_service(request.service)
        self._ready()
        return pb.RolloutHistoryResponse(
            rollouts=[rollout_pb(0, r) for r in self.rollouts.history(request.service)]
        )

    # -- weights --------------------------------------------------------------

    async def set_weights(self, request: pb.SetWeightsRequest) -> pb.WeightsResponse:
        validate_service(request.service)
        if request.region not in self.regions:
            raise InvalidArgumentError(
                FieldViolation("region", f"must be one of {', '.join(sorted(self.regions))}")
            )
        weights = dict(request.weights)
        if weights:
            v = weights_violations(weights)
            if v:
                raise InvalidArgumentError(v)
        self._ready()
        held = self.rollouts.rollout(request.service)
        if held is not None and not held[1].final:
            raise ConflictError(
                f"a rollout of {request.service!r} is {held[1].phase} and sets its weights; "
                "abort it first"
            )
        await self._audit(
            request.service,
            {
                "change": "set-weights",
                "region": request.region,
                "weights": ",".join(f"{k}={w}" for k, w in sorted(weights.items())),
            },
        )
        key = weights_key(request.service, request.region)
        if weights:
            await self.rollouts.write(key, {"weights": weights, "rollout": ""}, None)
        elif self.rollouts.weights_entry(request.service, request.region) is not None:
            await self.rollouts.delete(key)
        return self._weights(request.service)

    async def get_weights(self, request: pb.GetWeightsRequest) -> pb.WeightsResponse:
        validate_service(request.service)
        self._ready()
        return self._weights(request.service)

    def _weights(self, service: str) -> pb.WeightsResponse:
        return pb.WeightsResponse(
            regions=[
                pb.RegionWeights(
                    region=region, weights=doc.get("weights", {}), rollout=doc.get("rollout", "")
                )
                for region, doc in sorted(self.rollouts.weight_docs(service).items())
            ]
        )
