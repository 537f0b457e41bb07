"""What each RPC of the public contract asks to do, as policy accesses.

One entry per RPC (``"StateService/Get"``), each a function from the request
message to the accesses it needs; a batch needs one per keyspace or topic it
touches (with its keys). The route table refuses to start an agent with an
RPC that has no entry here (:func:`meridian.transport.routes.build_routes`),
and a unit test enumerates the contract against this table, so a new RPC
cannot ship unauthorized.

``InvocationService/Invoke`` is the one RPC checked inside its service:
``InvocationApi.call`` is where every invocation enters (the RPC, the gRPC
proxy and the HTTP passthrough), so it checks ``invoke`` there, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meridian._pb.meridian.v1 import (
    events_pb2,
    invocation_pb2,
    policy_pb2,
    state_pb2,
)
from meridian.policy.model import Access, Principal


@dataclass(frozen=True)
class RpcContext:
    """What an access rule may need beyond the request: the serving region,
    and the service an instance was registered for ("" if not held here)."""

    region: str
    instance_service: Callable[[str], str]


Rule = Callable[[Any, RpcContext], Iterable[Access]]

#: Marks the RPC whose service checks it (see the module docstring).
CHECKED_IN_SERVICE: Rule = lambda request, ctx: ()  # noqa: E731


def _state(action: str) -> Rule:
    def rule(r: Any, ctx: RpcContext) -> Iterable[Access]:
        return (Access(action, "Keyspace", r.keyspace, r.key),)

    return rule


def _scan(r: Any, ctx: RpcContext) -> Iterable[Access]:
    return (Access("state:read", "Keyspace", r.keyspace, r.prefix),)


def _get_many(r: state_pb2.GetManyRequest, ctx: RpcContext) -> Iterable[Access]:
    return [Access("state:read", "Keyspace", r.keyspace, k) for k in r.keys] or [
        Access("state:read", "Keyspace", r.keyspace)
    ]


def _put_many(r: state_pb2.PutManyRequest, ctx: RpcContext) -> Iterable[Access]:
    return [Access("state:write", "Keyspace", p.keyspace, p.key) for p in r.puts]


def _source(action: str, r: Any) -> Access:
    """A subscription, replay or push: of a topic filter, or of a keyspace's
    change feed; the key is the consumer group."""
    if r.WhichOneof("source") == "keyspace":
        return Access(action, "Keyspace", r.keyspace, r.group)
    return Access(action, "Topic", r.topic_filter, r.group)


def _publish(r: events_pb2.PublishRequest, ctx: RpcContext) -> Iterable[Access]:
    return (Access("events:publish", "Topic", r.topic, r.key),)


def _publish_batch(r: events_pb2.PublishBatchRequest, ctx: RpcContext) -> Iterable[Access]:
    return [Access("events:publish", "Topic", e.topic, e.key) for e in r.events]


def _subscribe(r: events_pb2.SubscribeRequest, ctx: RpcContext) -> Iterable[Access]:
    # Acks and nacks act on deliveries the open already authorized.
    if r.WhichOneof("kind") != "open":
        return ()
    return (_source("events:subscribe", r.open),)


def _invalidate(r: events_pb2.InvalidateRequest, ctx: RpcContext) -> Iterable[Access]:
    return (Access("cache:invalidate", "Cache", r.namespace),)


def _idempotency(r: Any, ctx: RpcContext) -> Iterable[Access]:
    return (Access("idempotency:use", "Scope", r.scope, r.key),)


def _register(r: invocation_pb2.RegisterRequest, ctx: RpcContext) -> Iterable[Access]:
    return (Access("registry:register", "Service", r.instance.service),)


def _lease(r: Any, ctx: RpcContext) -> Iterable[Access]:
    # The lease names its service; one not held here is NOT_FOUND in the service.
    service = ctx.instance_service(r.instance_id)
    return (Access("registry:register", "Service", service),) if service else ()


def _list(r: invocation_pb2.ListInstancesRequest, ctx: RpcContext) -> Iterable[Access]:
    return (Access("registry:read", "Service", r.service or "*"),)


def _agent(action: str) -> Rule:
    def rule(r: Any, ctx: RpcContext) -> Iterable[Access]:
        return (Access(action, "Agent", ctx.region),)

    return rule


def _admin(r: policy_pb2.PutPoliciesRequest, ctx: RpcContext) -> Iterable[Access]:
    return (Access("admin:policies", "Control", "policies"),)


def _rehome(r: state_pb2.RehomeRequest, ctx: RpcContext) -> Iterable[Access]:
    return (Access("admin:rehome", "Keyspace", r.keyspace, r.partition),)


def _flag(action: str) -> Rule:
    def rule(r: Any, ctx: RpcContext) -> Iterable[Access]:
        return (Access(action, "Flag", r.key),)

    return rule


def _all_flags(action: str) -> Rule:
    def rule(r: Any, ctx: RpcContext) -> Iterable[Access]:
        return (Access(action, "Flag", "*"),)

    return rule


#: Plans larger than this are refused by RolloutService; not parsed here.
MAX_PLAN_TEXT = 64 * 1024


def _rollout(r: Any, ctx: RpcContext) -> Iterable[Access]:
    return (Access("admin:rollouts", "Service", r.service),)


def _rollout_plan(r: Any, ctx: RpcContext) -> Iterable[Access]:
    """The plan's service; a plan that is not JSON names no service, and is
    then authorized on every service (and refused by the service after)."""
    service = None
    if len(r.plan) <= MAX_PLAN_TEXT:
        try:
            service = json.loads(r.plan).get("service")
        except (ValueError, AttributeError, RecursionError):
            service = None
    return (Access("admin:rollouts", "Service", service if isinstance(service, str) else "*"),)


#: The RPCs that are admin changes when the principal matches: each is
#: recorded in the audit log, and waited for, before it runs (policy pushes
#: are recorded by PolicyService itself, with the set's digest).
AUDITED: Mapping[str, Callable[[Principal], bool]] = {
    # Moving a consumer group rewrites what its consumers will be given.
    "EventService/Replay": lambda p: True,
    # Moving a regional partition's data to another region.
    "StateService/Rehome": lambda p: True,
    # An operator removing an instance (a service removing its own is routine).
    "RegistryService/Deregister": lambda p: p.type == "Operator",
}

#: Every RPC of the contract and what it asks to do.
RULES: Mapping[str, Rule] = {
    "StatusService/GetStatus": _agent("status:read"),
    "HealthService/Check": _agent("health:read"),
    "StateService/Get": _state("state:read"),
    "StateService/Rehome": _rehome,
    "StateService/GetMany": _get_many,
    "StateService/Scan": _scan,
    "StateService/Watch": _scan,
    "StateService/Put": _state("state:write"),
    "StateService/PutMany": _put_many,
    "StateService/Create": _state("state:write"),
    "StateService/Delete": _state("state:write"),
    "StateService/Increment": _state("state:write"),
    "StateService/SetAdd": _state("state:write"),
    "StateService/SetRemove": _state("state:write"),
    "IdempotencyService/Begin": _idempotency,
    "IdempotencyService/Complete": _idempotency,
    "IdempotencyService/Abort": _idempotency,
    "EventService/Publish": _publish,
    "EventService/PublishStream": _publish,
    "EventService/PublishBatch": _publish_batch,
    "EventService/Subscribe": _subscribe,
    "EventService/Replay": lambda r, ctx: (_source("events:replay", r),),
    "EventService/Invalidate": _invalidate,
    "EventService/RegisterPush": lambda r, ctx: (_source("events:subscribe", r),),
    "EventService/UnregisterPush": lambda r, ctx: (_source("events:subscribe", r),),
    "RegistryService/Register": _register,
    "RegistryService/Heartbeat": _lease,
    "RegistryService/Deregister": _lease,
    "RegistryService/ListInstances": _list,
    "InvocationService/Invoke": CHECKED_IN_SERVICE,
    "PolicyService/PutPolicies": _admin,
    "PolicyService/GetPolicies": _admin,
    "PolicyService/Explain": _admin,
    # Flag changes are recorded by FlagService itself, once checked.
    "FlagService/Evaluate": _flag("flags:evaluate"),
    "FlagService/EvaluateAll": _all_flags("flags:evaluate"),
    "FlagService/SetFlag": _flag("admin:flags"),
    "FlagService/GetFlag": _flag("admin:flags"),
    "FlagService/ListFlags": _all_flags("admin:flags"),
    "FlagService/KillFlag": _flag("admin:flags"),
    "FlagService/DeleteFlag": _flag("admin:flags"),
    # Rollout changes are recorded by RolloutService and the driver themselves.
    "RolloutService/StartRollout": _rollout_plan,
    "RolloutService/GetRollout": _rollout,
    "RolloutService/PromoteRollout": _rollout,
    "RolloutService/PauseRollout": _rollout,
    "RolloutService/AbortRollout": _rollout,
    "RolloutService/RolloutHistory": _rollout,
    "RolloutService/SetWeights": _rollout,
    "RolloutService/GetWeights": _rollout,
}
