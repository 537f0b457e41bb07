"""The policy decision point: a validated Cedar policy set, evaluated in process.

:func:`compile_policies` parses and validates a policy set against
:data:`~meridian.policy.model.SCHEMA` (with ``cedarpy``, the bindings to
Cedar's Rust engine); a set that does not validate is refused with every
validation error, so an agent never installs one. :class:`PolicyEngine`
holds the installed set and decides each access locally: no network hop
per call.

Cedar's evaluation is linear in the number of policies (about 50 µs for
the demo's set, 700 µs for 1,000 policies on this kind of machine), so the
engine asks it as little as it can, without changing any answer:

- **Slices.** For each (principal, action, resource) it meets, it keeps the
  policies whose scope can match that triple
  (:func:`~meridian.policy.model.scope_may_match`) as a small policy set of
  their own. A policy's scope is a conjunct of the policy, so the others
  cannot decide the request. A triple no policy can match is a default deny.
- **Decisions.** Each decision is cached, by the triple alone when no
  policy of its slice reads ``context.key``, else by the triple and the key.

Both are dropped with the set they were made from.

Decision logs, in the style of OPA's: one JSON log line on the
``meridian.policy.decisions`` logger per decision logged, with a decision
id, the principal, action, resource, key, result, the determining policies
and the policy set's revision. Every denial is logged; permits are sampled
(``policy.decision_log_sample``).
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import cedarpy

from meridian.core.errors import FieldViolation, InvalidArgumentError, PermissionDeniedError
from meridian.policy.model import (
    MAX_POLICY_BYTES,
    SCHEMA,
    Access,
    AuditTrail,
    Decision,
    Principal,
    key_dependent_actions,
    policy_names,
    reads_key,
    scope_may_match,
)

log = logging.getLogger(__name__)
decisions_log = logging.getLogger("meridian.policy.decisions")

#: Decisions remembered per installed policy set; the oldest go first.
CACHE_ENTRIES = 65_536
#: Slices kept per installed policy set; the oldest go first.
SLICE_ENTRIES = 8_192

_SCHEMA = cedarpy.Schema.from_str(SCHEMA)
_NO_ENTITIES = cedarpy.Entities.from_json_str("[]")


@dataclass(frozen=True)
class CompiledPolicies:
    """A policy set that validated: its text, each policy in Cedar's JSON form
    (what slices are made of) and the ids its authors gave (``@id``)."""

    text: str
    revision: int
    #: Each static policy in Cedar's JSON form, by Cedar's id.
    est: dict[str, Any]
    annotations: dict[str, str]

    @property
    def count(self) -> int:
        return len(self.est)

    @property
    def by_key(self) -> frozenset[str]:
        """The actions some policy decides by ``context.key``."""
        return key_dependent_actions(self.est.values())


@dataclass(frozen=True)
class _Slice:
    """The policies that can apply to one (principal, action, resource)."""

    parsed: cedarpy.PolicySet | None
    by_key: bool


def compile_policies(text: str, revision: int = 0, *, field: str = "text") -> CompiledPolicies:
    """Parse and validate ``text`` against Meridian's schema. Raises
    InvalidArgumentError naming ``field`` with each parse or validation error
    (policy ids as Cedar numbers them, ``policy0`` first); nothing is installed."""
    size = len(text.encode())
    if size > MAX_POLICY_BYTES:
        raise InvalidArgumentError(
            FieldViolation(field, f"is {size} bytes; a policy set is at most {MAX_POLICY_BYTES}")
        )
    result = cedarpy.validate_policies(text, _SCHEMA)
    if not result.validation_passed:
        errors = [str(e) for e in result.errors] or ["does not validate"]
        raise InvalidArgumentError([FieldViolation(field, e[:500]) for e in errors[:20]])
    try:
        doc = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise InvalidArgumentError(FieldViolation(field, f"does not parse: {exc}")) from exc
    if doc.get("templates"):
        raise InvalidArgumentError(
            FieldViolation(field, "templates are not supported; write static policies")
        )
    est: dict[str, Any] = doc.get("staticPolicies", {})
    annotations = {
        pid: str(p["annotations"]["id"])
        for pid, p in est.items()
        if "id" in (p.get("annotations") or {})
    }
    return CompiledPolicies(text=text, revision=revision, est=est, annotations=annotations)


K = TypeVar("K")
V = TypeVar("V")


def _remember(cache: dict[K, V], key: K, value: V, limit: int) -> V:
    """Put ``value`` in ``cache``, dropping the oldest entry when it is full."""
    if len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


class PolicyEngine:
    """Decides accesses with the installed policy set; see the module docstring.

    ``install`` swaps the set (and drops the cache) atomically for the event
    loop: a decision is made wholly with one set."""

    def __init__(
        self,
        policies: CompiledPolicies,
        *,
        region: str,
        sample_permits: float = 0.0,
        rng: Callable[[], float] = random.random,
        trail: AuditTrail | None = None,
    ) -> None:
        self.region = region
        #: Where denials are recorded beside the decision log (the audit log).
        self.trail = trail
        self.sample_permits = sample_permits
        self._rng = rng
        self._policies = policies
        self._cache: dict[tuple[str, str, str, str, str, str], Decision] = {}
        self._slices: dict[tuple[str, str, str, str, str], _Slice] = {}

    @property
    def policies(self) -> CompiledPolicies:
        return self._policies

    def install(self, policies: CompiledPolicies) -> None:
        """Serve ``policies`` from now on."""
        self._policies = policies
        self._cache = {}
        self._slices = {}
        log.info(
            "policy set installed",
            extra={"revision": policies.revision, "policies": policies.count},
        )

    def decide(self, principal: Principal, access: Access) -> Decision:
        """The decision for ``principal`` doing ``access`` here (cached)."""
        triple = (
            principal.type,
            principal.id,
            access.action,
            access.resource_type,
            access.resource,
        )
        piece = self._slices.get(triple)
        if piece is None:
            piece = _remember(self._slices, triple, self._slice(principal, access), SLICE_ENTRIES)
        ck = (*triple, access.key if piece.by_key else "")
        found = self._cache.get(ck)
        if found is None:
            found = _remember(
                self._cache, ck, self._evaluate(piece, principal, access), CACHE_ENTRIES
            )
        return found

    def _slice(self, principal: Principal, access: Access) -> _Slice:
        policies = self._policies
        resource = (access.resource_type, access.resource)
        chosen = {
            pid: p
            for pid, p in policies.est.items()
            if scope_may_match(p, principal, access.action, resource)
        }
        if not chosen:
            return _Slice(None, False)
        doc = {"staticPolicies": chosen, "templates": {}, "templateLinks": []}
        return _Slice(
            cedarpy.PolicySet.from_json_str(json.dumps(doc)),
            any(reads_key(p) for p in chosen.values()),
        )

    def _evaluate(self, piece: _Slice, principal: Principal, access: Access) -> Decision:
        if piece.parsed is None:
            return Decision(allowed=False)  # no policy can apply: default deny
        request = {
            "principal": {"type": principal.type, "id": principal.id},
            "action": {"type": "Action", "id": access.action},
            "resource": {"type": access.resource_type, "id": access.resource},
            "context": {
                "region": self.region,
                "caller_region": principal.region or self.region,
                "target": access.resource,
                "key": access.key,
            },
        }
        result = cedarpy.is_authorized(request, piece.parsed, _NO_ENTITIES)
        diag = result.diagnostics
        return Decision(
            allowed=result.allowed,
            determining=policy_names(diag.reasons, self._policies.annotations),
            errors=tuple(str(e) for e in diag.errors),
        )

    def check(self, principal: Principal, access: Access) -> Decision:
        """:meth:`decide`, logged as the decision log says; raises
        PermissionDeniedError naming the action and resource (never a policy)
        when denied."""
        decision = self.decide(principal, access)
        if not decision.allowed:
            decision_id = self._log(principal, access, decision)
            if self.trail is not None:
                self.trail.denied(decision_id, access)
            raise PermissionDeniedError(f"{principal} may not {access}")
        if self.sample_permits and self._rng() < self.sample_permits:
            self._log(principal, access, decision)
        return decision

    def _log(self, principal: Principal, access: Access, decision: Decision) -> str:
        """Write the decision log line; its decision id."""
        decision_id = uuid.uuid4().hex
        decisions_log.info(
            "policy decision",
            extra={
                "decision_id": decision_id,
                "principal": str(principal),
                "action": access.action,
                "resource": access.resource_text,
                "key": access.key,
                "result": decision.result,
                "policies": list(decision.determining),
                "revision": self._policies.revision,
                "region": self.region,
            },
        )
        return decision_id
