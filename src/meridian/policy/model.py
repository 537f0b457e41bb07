"""Who may do what: Meridian's authorization vocabulary, as Cedar sees it.

Pure: the Cedar schema, the actions, how a caller's SPIFFE identity becomes a
Cedar principal, what one access is, and which actions a policy set decides
by the key (so the engine knows what a cached decision may ignore).

Principals are the identities of the mTLS issue: ``Service::"orders"``,
``Agent::"us-east"``, ``Gateway::"gateway"``, ``Operator::"alice"``.
Resources are the things the API acts on:

===========================  ================================================
resource                     actions
===========================  ================================================
``Keyspace::"orders"``       ``state:read``, ``state:write``, ``admin:rehome``, and
                             ``events:subscribe`` / ``events:replay`` of its
                             change feed
``Topic::"orders"``          ``events:publish``, ``events:subscribe``,
                             ``events:replay`` (the id is the topic filter as
                             the caller sent it)
``Cache::"<namespace>"``     ``cache:invalidate``
``Scope::"orders"``          ``idempotency:use``
``Service::"inventory"``     ``invoke``, ``registry:register``,
                             ``registry:read``, ``admin:rollouts``
                             (``Service::"*"``: every service)
``Agent::"us-east"``         ``health:read``, ``status:read``
``Flag::"new-checkout"``     ``flags:evaluate``, ``admin:flags`` (``Flag::"*"``:
                             every flag, for bulk evaluation and listing)
``Control::"policies"``      ``admin:policies`` (and, as they land, ``flags``,
                             ``rollouts``, ``contracts``, ``ca``, ``audit``)
===========================  ================================================

Every request's context carries ``region`` (the serving agent's region),
``caller_region`` (an agent's own region; for anyone else the serving region:
services and tools call their local agent), ``target`` (the resource's id as a
string, so a policy can match it with ``like``) and ``key`` (the state key or
prefix, the consumer group, the invoked method path, the idempotency key; ""
when the call has none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from meridian.security.model import Identity, Kind

#: The Cedar schema every policy set is validated against (human-readable form).
SCHEMA = """
// Meridian's Cedar schema. Principals are workload identities (mTLS).
entity Agent;
entity Service;
entity Gateway;
entity Operator;
entity Keyspace;
entity Topic;
entity Cache;
entity Scope;
entity Flag;
entity Control;

type Context = {
  region: String,
  caller_region: String,
  target: String,
  key: String,
};

action "state:read", "state:write"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Keyspace], context: Context };
action "events:publish"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Topic], context: Context };
action "events:subscribe", "events:replay"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Topic, Keyspace], context: Context };
action "cache:invalidate"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Cache], context: Context };
action "idempotency:use"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Scope], context: Context };
action "invoke", "registry:register", "registry:read"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Service], context: Context };
action "health:read", "status:read"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Agent], context: Context };
action "admin:policies"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Control], context: Context };
action "admin:rehome"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Keyspace], context: Context };
action "flags:evaluate", "admin:flags"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Flag], context: Context };
action "admin:rollouts"
  appliesTo { principal: [Agent, Service, Gateway, Operator], resource: [Service], context: Context };
"""

#: Every action, as the schema declares it.
ACTIONS: frozenset[str] = frozenset(
    {
        "state:read",
        "state:write",
        "events:publish",
        "events:subscribe",
        "events:replay",
        "cache:invalidate",
        "idempotency:use",
        "invoke",
        "registry:register",
        "registry:read",
        "health:read",
        "status:read",
        "admin:policies",
        "admin:rehome",
        "flags:evaluate",
        "admin:flags",
        "admin:rollouts",
    }
)

#: The resource types, as the schema declares them.
RESOURCE_TYPES: frozenset[str] = frozenset(
    {"Agent", "Service", "Keyspace", "Topic", "Cache", "Scope", "Flag", "Control"}
)

#: The Cedar type of each kind of identity that may call an agent (NATS servers never do).
PRINCIPAL_TYPES: Mapping[Kind, str] = {
    Kind.AGENT: "Agent",
    Kind.SERVICE: "Service",
    Kind.GATEWAY: "Gateway",
    Kind.OPERATOR: "Operator",
}

#: Every principal type, as the schema declares it.
PRINCIPAL_TYPE_NAMES: frozenset[str] = frozenset(PRINCIPAL_TYPES.values())

#: The largest policy set accepted (its text, UTF-8).
MAX_POLICY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller as Cedar names it: ``Service::"orders"``."""

    type: str
    id: str

    def __str__(self) -> str:
        return f'{self.type}::"{self.id}"'

    @classmethod
    def of(cls, identity: Identity) -> Principal:
        """The principal of a caller's identity. ValueError for a NATS server's
        identity (never a caller of an agent)."""
        kind = PRINCIPAL_TYPES.get(identity.kind)
        if kind is None:
            raise ValueError(f"a {identity.kind.value} identity is not a principal")
        return cls(kind, identity.name or identity.kind.value)

    @property
    def region(self) -> str:
        """An agent's region (its id); "" for every other principal."""
        return self.id if self.type == "Agent" else ""


@dataclass(frozen=True, slots=True)
class Access:
    """One thing a call wants to do: ``action`` on ``resource_type::resource``,
    at ``key`` within it ("" for the whole resource)."""

    action: str
    resource_type: str
    resource: str
    key: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        if self.resource_type not in RESOURCE_TYPES:
            raise ValueError(f"unknown resource type {self.resource_type!r}")

    @property
    def resource_text(self) -> str:
        return f'{self.resource_type}::"{self.resource}"'

    def __str__(self) -> str:
        at = f" at {self.key!r}" if self.key else ""
        return f"{self.action} on {self.resource_text}{at}"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy set says of one access: ``allowed``, the ids of the
    policies that determined it (the permits that allowed it, or the forbids
    that denied it; none for a default deny), and the evaluation errors of
    policies that were skipped because of them."""

    allowed: bool
    determining: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def result(self) -> str:
        return "permit" if self.allowed else "deny"


class AuditTrail(Protocol):
    """Where policy decisions that must be kept go (the audit log). The
    caller of the call being served is the principal."""

    def denied(self, decision_id: str, access: Access) -> None:
        """Record a denial; never waits and never raises."""

    async def admin(self, request_id: str, access: Access, detail: Mapping[str, str]) -> None:
        """Record a permitted admin change before it is made; raises when it
        can't be recorded (the change must then not be made)."""


def _reads_key(node: Any) -> bool:
    """Whether a policy condition (Cedar's JSON form) may read ``context.key``.

    Conservative: ``context.<attr>`` with another attribute does not read it;
    any other use of ``context`` (``context has key``, passing ``context``
    whole) is taken to read it."""
    if isinstance(node, dict):
        dot = node.get(".")
        if isinstance(dot, dict) and dot.get("left") == {"Var": "context"}:
            return dot.get("attr") == "key"
        if node.get("Var") == "context":
            return True
        return any(_reads_key(v) for v in node.values())
    if isinstance(node, list):
        return any(_reads_key(v) for v in node)
    return False


def _scope_actions(scope: Mapping[str, Any]) -> frozenset[str]:
    """The actions a policy's action scope can match."""
    op = scope.get("op")
    if op == "All":
        return ACTIONS
    entities = scope.get("entities") or [scope.get("entity") or {}]
    return frozenset(e.get("id", "") for e in entities if isinstance(e, dict)) & ACTIONS


def reads_key(policy: Mapping[str, Any]) -> bool:
    """Whether a policy (Cedar's JSON form) may read ``context.key``."""
    return _reads_key(policy.get("conditions", []))


def key_dependent_actions(policies: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The actions whose decision may depend on ``context.key``, from the
    policies of a set in Cedar's JSON form."""
    out: set[str] = set()
    for policy in policies:
        if reads_key(policy):
            out |= _scope_actions(policy.get("action", {}))
    return frozenset(out)


def _entity_may_match(scope: Mapping[str, Any], type_: str, id_: str) -> bool:
    """Whether a principal or resource scope can match ``type_::"id_"``.

    The engine gives Cedar no entity hierarchy (no parents), so ``in`` an
    entity of the same type is equality; ``in`` an entity of another type is
    kept, as is anything this function does not know."""
    op = scope.get("op")
    if op == "All":
        return True
    if op == "==":
        entity = scope.get("entity") or {}
        return bool(entity.get("type") == type_ and entity.get("id") == id_)
    if op == "is":
        if scope.get("entity_type") != type_:
            return False
        inner = scope.get("in")
        return inner is None or _entity_may_match({"op": "in", **inner}, type_, id_)
    if op == "in":
        entity = scope.get("entity") or {}
        if entity.get("type") == type_:
            return bool(entity.get("id") == id_)
        return True  # an ancestor of another type: kept
    return True  # anything else (a template slot): kept


def scope_may_match(
    policy: Mapping[str, Any], principal: Principal, action: str, resource: tuple[str, str]
) -> bool:
    """Whether a policy (Cedar's JSON form) can apply to a request for
    ``principal`` doing ``action`` on ``resource`` (type, id). Its scope is a
    conjunct of the policy: a policy whose scope can't match can't decide the
    request, so evaluating without it gives the same decision."""
    if action not in _scope_actions(policy.get("action", {})):
        return False
    if not _entity_may_match(policy.get("principal", {}), principal.type, principal.id):
        return False
    return _entity_may_match(policy.get("resource", {}), *resource)


def policy_names(ids: Iterable[str], annotations: Mapping[str, str]) -> tuple[str, ...]:
    """Cedar's policy ids as the author named them (``@id("...")``), where named."""
    return tuple(sorted(annotations.get(i, i) for i in ids))
