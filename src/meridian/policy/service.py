"""PolicyService: push, read and explain the policy set (proto in, proto out).

Authorization of these RPCs themselves (``admin:policies``) is the guard's,
like every other RPC's.
"""

from __future__ import annotations

import hashlib
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from meridian._pb.meridian.v1 import policy_pb2 as pb
from meridian.core.calls import CALLER
from meridian.core.errors import FieldViolation, InvalidArgumentError, MeridianError
from meridian.policy.engine import PolicyEngine, compile_policies
from meridian.policy.model import ACTIONS, RESOURCE_TYPES, Access, AuditTrail, Principal
from meridian.policy.store import PolicyComponent
from meridian.security.model import Identity

#: What a policy push is, as an access.
POLICIES = Access("admin:policies", "Control", "policies")

#: Longest resource id or key Explain takes.
MAX_EXPLAIN_FIELD = 1024


class PolicyApi:
    """The PolicyService RPCs over the agent's engine and policy store."""

    def __init__(
        self,
        engine: PolicyEngine,
        component: PolicyComponent,
        *,
        trust_domain: str,
        trail: AuditTrail,
    ) -> None:
        self.engine = engine
        self.component = component
        self.trust_domain = trust_domain
        self.trail = trail

    async def put_policies(self, request: pb.PutPoliciesRequest) -> pb.PutPoliciesResponse:
        """Validate, record in the audit log, then store; INVALID_ARGUMENT with
        Cedar's errors, CONFLICT on a stale ``if_revision``, nothing stored on
        either; nothing stored either when the audit log can't record it."""
        if_revision = request.if_revision if request.HasField("if_revision") else None
        compiled = compile_policies(request.text)
        detail = {
            "sha256": hashlib.sha256(request.text.encode()).hexdigest(),
            "policies": str(compiled.count),
            "if_revision": "" if if_revision is None else str(if_revision),
        }
        await self.trail.admin(uuid.uuid4().hex, POLICIES, detail)
        compiled = await self.component.put(compiled, CALLER.get().identity, if_revision)
        return pb.PutPoliciesResponse(revision=compiled.revision, policies=compiled.count)

    async def get_policies(self, request: pb.GetPoliciesRequest) -> pb.GetPoliciesResponse:
        policies = self.engine.policies
        stored = self.component.installed
        updated = Timestamp()
        if stored.updated_ms:
            updated.FromMilliseconds(stored.updated_ms)
        return pb.GetPoliciesResponse(
            policy_set=pb.PolicySet(
                text=policies.text,
                revision=policies.revision,
                author=stored.author,
                updated_at=updated if stored.updated_ms else None,
                policies=policies.count,
            )
        )

    async def explain(self, request: pb.ExplainRequest) -> pb.ExplainResponse:
        """The decision for the request described, and the policies behind it."""
        violations = []
        principal: Principal | None = None
        try:
            text = request.principal
            identity = (
                Identity.parse(text, field="principal")
                if text.startswith("spiffe://")
                else Identity.from_spec(self.trust_domain, text)
            )
            principal = Principal.of(identity)
        except (ValueError, MeridianError) as exc:
            violations.append(FieldViolation("principal", str(exc)[:300]))
        if request.action not in ACTIONS:
            violations.append(
                FieldViolation("action", f"must be one of {', '.join(sorted(ACTIONS))}")
            )
        if request.resource_type not in RESOURCE_TYPES:
            violations.append(
                FieldViolation(
                    "resource_type", f"must be one of {', '.join(sorted(RESOURCE_TYPES))}"
                )
            )
        for name in ("resource_id", "key"):
            if len(getattr(request, name)) > MAX_EXPLAIN_FIELD:
                violations.append(FieldViolation(name, f"at most {MAX_EXPLAIN_FIELD} characters"))
        if violations or principal is None:
            raise InvalidArgumentError(violations)
        access = Access(request.action, request.resource_type, request.resource_id, request.key)
        decision = self.engine.decide(principal, access)
        return pb.ExplainResponse(
            decision=decision.result,
            determining=list(decision.determining),
            errors=list(decision.errors),
            revision=self.engine.policies.revision,
        )
