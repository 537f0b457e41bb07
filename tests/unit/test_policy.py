"""The policy decision point: the schema, validation, decisions and their
cache, the built-in sets, and the rule every RPC of the contract must have."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import pytest

from meridian._pb.meridian.v1 import events_pb2, invocation_pb2, state_pb2
from meridian.core.calls import CALLER, Caller
from meridian.core.errors import InvalidArgumentError, PermissionDeniedError
from meridian.policy import Access, Guard, Principal
from meridian.policy.engine import PolicyEngine, compile_policies
from meridian.policy.model import ACTIONS, MAX_POLICY_BYTES, key_dependent_actions
from meridian.policy.rpcs import CHECKED_IN_SERVICE, RULES, RpcContext
from meridian.security.model import Identity
from meridian.transport.routes import RouteError, build_routes, contract_services

ORDERS = Principal("Service", "orders")
INVENTORY = Principal("Service", "inventory")


def builtin(name: str) -> str:
    return resources.files("meridian.policy").joinpath(f"builtin/{name}.cedar").read_text()


def engine(text: str, **kwargs: Any) -> PolicyEngine:
    return PolicyEngine(compile_policies(text, 7), region="us-east", **kwargs)


# -- validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('permit (principal, action == Action::"state:wrote", resource);', "unrecognized action"),
        ("permit (principal, action, resource", "unexpected end of input"),
        ('permit (principal == User::"x", action, resource);', "User"),
        (
            'permit (principal, action == Action::"invoke", resource == Keyspace::"orders");',
            "unable to find an applicable action",
        ),
        ("permit (principal, action, resource) when { context.nope };", "nope"),
        ("permit (principal == ?principal, action, resource);", "templates are not supported"),
    ],
)
def test_a_set_that_does_not_validate_is_refused_with_cedars_errors(text: str, says: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        compile_policies(text, field="text")
    assert err.value.field == "text"
    assert says in err.value.message


def test_an_oversized_set_is_refused_before_cedar_sees_it() -> None:
    text = "// " + "x" * MAX_POLICY_BYTES + "\n"
    with pytest.raises(InvalidArgumentError) as err:
        compile_policies(text)
    assert f"a policy set is at most {MAX_POLICY_BYTES}" in err.value.message


def test_the_builtin_sets_validate() -> None:
    for name in ("sandbox", "locked"):
        assert compile_policies(builtin(name)).count >= 2


# -- decisions ------------------------------------------------------------------


def test_default_deny_and_forbid_overrides_permit() -> None:
    e = engine(
        '@id("all") permit (principal, action, resource);\n'
        '@id("no-ap") forbid (principal, action == Action::"state:write", resource)'
        ' when { context.region == "us-east" };'
    )
    write = e.decide(ORDERS, Access("state:write", "Keyspace", "orders", "k"))
    assert not write.allowed and write.determining == ("no-ap",)
    read = e.decide(ORDERS, Access("state:read", "Keyspace", "orders", "k"))
    assert read.allowed and read.determining == ("all",)
    nothing = engine('@id("x") permit (principal is Operator, action, resource);')
    denied = nothing.decide(ORDERS, Access("state:read", "Keyspace", "orders"))
    assert not denied.allowed and denied.determining == ()


def test_a_key_prefix_policy_is_decided_per_key_despite_the_cache() -> None:
    e = engine(
        '@id("p") permit (principal == Service::"orders", action == Action::"state:read", '
        'resource == Keyspace::"orders") when { context.key like "public/*" };'
    )
    assert e.policies.by_key == {"state:read"}
    for _ in range(3):  # the second and third come from the cache
        assert e.decide(ORDERS, Access("state:read", "Keyspace", "orders", "public/1")).allowed
        assert not e.decide(ORDERS, Access("state:read", "Keyspace", "orders", "secret")).allowed


def test_installing_a_set_drops_the_decisions_of_the_old_one() -> None:
    e = engine('@id("a") permit (principal, action, resource);')
    access = Access("state:write", "Keyspace", "orders", "k")
    assert e.decide(ORDERS, access).allowed
    e.install(compile_policies('@id("o") permit (principal is Operator, action, resource);', 8))
    assert not e.decide(ORDERS, access).allowed
    assert e.policies.revision == 8


@pytest.mark.parametrize(
    ("condition", "reads"),
    [
        ('context.key like "a*"', True),
        ('context["key"] == "a"', True),
        ("context has key", True),
        ('context.region == "us-east"', False),
        ('context.target like "ord*" && context.caller_region == "x"', False),
    ],
)
def test_which_conditions_read_the_key(condition: str, reads: bool) -> None:
    text = f'permit (principal, action == Action::"invoke", resource) when {{ {condition} }};'
    found = key_dependent_actions(compile_policies(text).est.values())
    assert found == ({"invoke"} if reads else set())
    any_action = f"permit (principal, action, resource) when {{ {condition} }};"
    assert key_dependent_actions(compile_policies(any_action).est.values()) == (
        ACTIONS if reads else set()
    )


# -- the sandbox's set ----------------------------------------------------------


@pytest.mark.parametrize(
    ("principal", "access", "allowed"),
    [
        (ORDERS, Access("state:write", "Keyspace", "orders", "o-1"), True),
        (ORDERS, Access("events:publish", "Topic", "orders", "o-1"), True),
        (ORDERS, Access("events:replay", "Topic", "orders", "orders-readmodel-us-east"), True),
        (ORDERS, Access("idempotency:use", "Scope", "orders", "k"), True),
        (ORDERS, Access("invoke", "Service", "inventory", "reservations"), True),
        (ORDERS, Access("registry:register", "Service", "orders"), True),
        (INVENTORY, Access("state:write", "Keyspace", "inventory", "sku-1"), True),
        (INVENTORY, Access("events:subscribe", "Topic", "orders", "inventory-us-east"), True),
        (Principal("Gateway", "gateway"), Access("invoke", "Service", "orders", "/orders"), True),
        (Principal("Operator", "meridian"), Access("admin:policies", "Control", "policies"), True),
        (Principal("Service", "anyone"), Access("health:read", "Agent", "us-east"), True),
        # What the demo's services must not do.
        (INVENTORY, Access("state:write", "Keyspace", "orders", "o-1"), False),
        (INVENTORY, Access("state:read", "Keyspace", "orders", "o-1"), False),
        (ORDERS, Access("events:replay", "Topic", "orders", "inventory-us-east"), False),
        (ORDERS, Access("events:subscribe", "Topic", "orders", "inventory-us-east"), False),
        (INVENTORY, Access("events:publish", "Topic", "orders", "o-1"), False),
        (INVENTORY, Access("invoke", "Service", "orders", "/orders"), False),
        (ORDERS, Access("registry:register", "Service", "inventory"), False),
        (ORDERS, Access("admin:policies", "Control", "policies"), False),
        (Principal("Service", "stranger"), Access("state:read", "Keyspace", "orders"), False),
        (Principal("Agent", "eu-west"), Access("state:write", "Keyspace", "orders"), False),
    ],
)
def test_the_sandbox_set_grants_the_demo_exactly_what_it_needs(
    principal: Principal, access: Access, allowed: bool
) -> None:
    assert engine(builtin("sandbox")).decide(principal, access).allowed is allowed


def test_the_locked_set_lets_only_operators_act() -> None:
    e = engine(builtin("locked"))
    assert e.decide(Principal("Operator", "alice"), Access("state:write", "Keyspace", "a")).allowed
    assert not e.decide(ORDERS, Access("state:read", "Keyspace", "orders")).allowed
    assert e.decide(ORDERS, Access("status:read", "Agent", "us-east")).allowed


# -- the decision log -----------------------------------------------------------


def test_every_denial_is_logged_and_permits_are_sampled(caplog: pytest.LogCaptureFixture) -> None:
    draws = iter([0.5, 0.001])
    e = engine(builtin("sandbox"), sample_permits=0.01, rng=lambda: next(draws))
    caplog.set_level(logging.INFO, logger="meridian.policy.decisions")
    with pytest.raises(PermissionDeniedError) as err:
        e.check(INVENTORY, Access("state:write", "Keyspace", "orders", "o-1"))
    # The action and the resource, never the policy text.
    assert err.value.message == (
        'Service::"inventory" may not state:write on Keyspace::"orders" at \'o-1\''
    )
    e.check(ORDERS, Access("state:read", "Keyspace", "orders"))  # 0.5: not sampled
    e.check(ORDERS, Access("state:read", "Keyspace", "orders"))  # 0.001: sampled
    records = [r for r in caplog.records if r.name == "meridian.policy.decisions"]
    assert [r.__dict__["result"] for r in records] == ["deny", "permit"]
    denial = records[0].__dict__
    assert denial["principal"] == 'Service::"inventory"'
    assert denial["resource"] == 'Keyspace::"orders"'
    assert denial["revision"] == 7 and len(denial["decision_id"]) == 32
    assert records[1].__dict__["policies"] == ["orders-state"]


# -- every RPC is authorized ------------------------------------------------------


def test_every_rpc_of_the_contract_has_a_rule_and_no_rule_is_stale() -> None:
    rpcs = {f"{s.name}/{m.name}" for s in contract_services() for m in s.methods}
    assert rpcs == set(RULES)
    # Invocation is checked where every invocation enters; nothing else skips the guard.
    assert [k for k, v in RULES.items() if v is CHECKED_IN_SERVICE] == ["InvocationService/Invoke"]


def test_each_rule_names_what_its_request_acts_on() -> None:
    ctx = RpcContext("us-east", lambda iid: {"orders-1": "orders"}.get(iid, ""))
    cases: dict[str, tuple[Any, list[Access]]] = {
        "StateService/Put": (
            state_pb2.PutRequest(keyspace="orders", key="o-1"),
            [Access("state:write", "Keyspace", "orders", "o-1")],
        ),
        "StateService/PutMany": (
            state_pb2.PutManyRequest(
                puts=[
                    state_pb2.PutRequest(keyspace="orders", key="a"),
                    state_pb2.PutRequest(keyspace="carts", key="b"),
                ]
            ),
            [
                Access("state:write", "Keyspace", "orders", "a"),
                Access("state:write", "Keyspace", "carts", "b"),
            ],
        ),
        "StateService/Watch": (
            state_pb2.WatchRequest(keyspace="orders", prefix="o-"),
            [Access("state:read", "Keyspace", "orders", "o-")],
        ),
        "EventService/Subscribe": (
            events_pb2.SubscribeRequest(
                open=events_pb2.SubscribeOpen(keyspace="orders", group="g")
            ),
            [Access("events:subscribe", "Keyspace", "orders", "g")],
        ),
        "EventService/Replay": (
            events_pb2.ReplayRequest(group="g", topic_filter="orders.>"),
            [Access("events:replay", "Topic", "orders.>", "g")],
        ),
        "RegistryService/Heartbeat": (
            invocation_pb2.HeartbeatRequest(instance_id="orders-1"),
            [Access("registry:register", "Service", "orders")],
        ),
        "RegistryService/ListInstances": (
            invocation_pb2.ListInstancesRequest(),
            [Access("registry:read", "Service", "*")],
        ),
        "HealthService/Check": (None, [Access("health:read", "Agent", "us-east")]),
    }
    for rpc, (request, want) in cases.items():
        assert list(RULES[rpc](request, ctx)) == want, rpc
    # An ack names no resource: the open it follows was authorized.
    ack = events_pb2.SubscribeRequest(ack=events_pb2.Ack(delivery_id=1))
    assert list(RULES["EventService/Subscribe"](ack, ctx)) == []


def test_an_rpc_without_a_rule_stops_the_agent_at_start() -> None:
    from meridian.transport.routes import contract_services as services

    class Impl:
        async def get_status(self, r: Any) -> Any: ...

    (status,) = [s for s in services() if s.name == "StatusService"]

    class NoRules(Guard):
        def wrap(self, rpc: str, handler: Any, *, client_streaming: bool) -> Any:
            raise KeyError(rpc)

    guard = NoRules(engine(builtin("locked")), region="us-east")
    with pytest.raises(RouteError, match="GetStatus: no authorization rule"):
        build_routes({"StatusService": (Impl(),)}, [status], guard=guard)


# -- the guard -------------------------------------------------------------------


def caller(spec: str) -> Caller:
    return Caller(identity=Identity.from_spec("meridian.local", spec).uri)


async def test_the_guard_authorizes_unary_calls_as_their_caller() -> None:
    guard = Guard(engine(builtin("sandbox")), region="us-east")
    calls: list[Any] = []

    async def put(request: Any) -> str:
        calls.append(request)
        return "stored"

    wrapped = guard.wrap("StateService/Put", put, client_streaming=False)
    request = state_pb2.PutRequest(keyspace="orders", key="o-1")
    token = CALLER.set(caller("service/inventory"))
    try:
        with pytest.raises(PermissionDeniedError, match='state:write on Keyspace::"orders"'):
            await wrapped(request)
    finally:
        CALLER.reset(token)
    assert calls == []  # nothing reached the handler
    token = CALLER.set(caller("service/orders"))
    try:
        assert await wrapped(request) == "stored"
    finally:
        CALLER.reset(token)


async def test_the_guard_checks_each_message_of_a_client_stream() -> None:
    guard = Guard(engine(builtin("sandbox")), region="us-east")
    published: list[str] = []

    async def publish_stream(requests: AsyncIterator[Any]) -> None:
        async for r in requests:
            published.append(r.topic)

    async def requests() -> AsyncIterator[Any]:
        yield events_pb2.PublishRequest(topic="orders", key="a")
        yield events_pb2.PublishRequest(topic="payments", key="b")
        yield events_pb2.PublishRequest(topic="orders", key="c")

    wrapped = guard.wrap("EventService/PublishStream", publish_stream, client_streaming=True)
    token = CALLER.set(caller("service/orders"))
    try:
        with pytest.raises(PermissionDeniedError, match='Topic::"payments"'):
            await wrapped(requests())
    finally:
        CALLER.reset(token)
    assert published == ["orders"]  # nothing after the refused message


async def test_a_caller_no_policy_can_name_is_refused() -> None:
    guard = Guard(engine("permit (principal, action, resource);"), region="us-east")
    for identity in ("", "spiffe://meridian.local/nats/us-east", "spiffe://other/x"):
        token = CALLER.set(Caller(identity=identity))
        try:
            with pytest.raises(PermissionDeniedError, match="no identity a policy can name"):
                guard.check([Access("state:read", "Keyspace", "orders")])
        finally:
            CALLER.reset(token)


async def test_insecure_mode_has_no_identities_to_authorize() -> None:
    guard = Guard(None, region="us-east")

    async def handler(request: Any) -> str:
        return "ok"

    assert guard.wrap("StateService/Put", handler, client_streaming=False) is handler
    guard.check([Access("state:write", "Keyspace", "orders")])  # nothing raised


# -- slices decide as the whole set does -------------------------------------------

MIXED = builtin("sandbox") + "\n".join(
    [
        '@id("svc-in") permit (principal in Service::"orders", action, resource is Keyspace);',
        '@id("ks-in") permit (principal, action == Action::"state:read", resource in Keyspace::"a");',
        '@id("is-in") permit (principal is Service, action == Action::"state:write", '
        'resource is Keyspace in Keyspace::"b") when { context.key like "w/*" };',
        '@id("no-ap") forbid (principal, action, resource) when { context.region == "ap-south" };',
        '@id("ctx-all") forbid (principal == Service::"x", action, resource) '
        "unless { context has key };",
        '@id("target") permit (principal == Service::"y", action == Action::"events:publish", '
        'resource) when { context.target like "y.*" };',
    ]
)


@pytest.mark.parametrize("region", ["us-east", "ap-south"])
def test_slices_decide_exactly_as_the_whole_set(region: str) -> None:
    import itertools

    import cedarpy

    compiled = compile_policies(MIXED, 3)
    whole_set = cedarpy.PolicySet.from_str(MIXED)
    e = PolicyEngine(compiled, region=region)
    principals = [ORDERS, INVENTORY, Principal("Service", "x"), Principal("Service", "y")]
    principals += [Principal("Gateway", "gateway"), Principal("Operator", "o")]
    principals += [Principal("Agent", "eu-west")]
    accesses = [
        Access(action, rtype, rid, key)
        for (action, rtype), rid, key in itertools.product(
            [
                ("state:read", "Keyspace"),
                ("state:write", "Keyspace"),
                ("events:publish", "Topic"),
                ("invoke", "Service"),
                ("registry:register", "Service"),
            ],
            ["orders", "a", "b", "y.1", "inventory"],
            ["", "w/1", "x"],
        )
    ]
    for p, a in itertools.product(principals, accesses):
        whole = cedarpy.is_authorized(
            {
                "principal": {"type": p.type, "id": p.id},
                "action": {"type": "Action", "id": a.action},
                "resource": {"type": a.resource_type, "id": a.resource},
                "context": {
                    "region": region,
                    "caller_region": p.region or region,
                    "target": a.resource,
                    "key": a.key,
                },
            },
            whole_set,
            cedarpy.Entities.from_json_str("[]"),
        )
        for _ in range(2):  # the second answer comes from the cache
            assert e.decide(p, a).allowed is whole.allowed, (p, a)


# -- admin changes are recorded before they run ------------------------------------


class RecordedTrail:
    """An AuditTrail that keeps what it is given (and can be made to fail)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.admin_changes: list[tuple[str, Access, dict[str, str]]] = []
        self.denials: list[Access] = []

    def denied(self, decision_id: str, access: Access) -> None:
        self.denials.append(access)

    async def admin(self, request_id: str, access: Access, detail: Any) -> None:
        if self.fail:
            raise PermissionDeniedError("the audit log can't record it")  # any MeridianError
        self.admin_changes.append((CALLER.get().identity, access, dict(detail)))


async def test_a_replay_is_recorded_before_it_runs_and_not_run_if_it_cant_be() -> None:
    ran: list[Any] = []

    async def replay(request: Any) -> str:
        ran.append(request)
        return "moved"

    request = events_pb2.ReplayRequest(group="orders-readmodel-us-east", topic_filter="orders")
    trail = RecordedTrail()
    guard = Guard(engine(builtin("sandbox")), region="us-east", trail=trail)
    wrapped = guard.wrap("EventService/Replay", replay, client_streaming=False)
    token = CALLER.set(caller("service/orders"))
    try:
        assert await wrapped(request) == "moved"
        ((who, access, detail),) = trail.admin_changes
        assert who == "spiffe://meridian.local/service/orders"
        assert access == Access("events:replay", "Topic", "orders", "orders-readmodel-us-east")
        # The entry says exactly what was asked.
        assert detail == {
            "rpc": "EventService/Replay",
            "request": '{"group":"orders-readmodel-us-east","topic_filter":"orders"}',
        }

        failing = Guard(
            engine(builtin("sandbox")), region="us-east", trail=RecordedTrail(fail=True)
        )
        refused = failing.wrap("EventService/Replay", replay, client_streaming=False)
        with pytest.raises(PermissionDeniedError, match="can't record"):
            await refused(request)
        assert len(ran) == 1  # the replay that could not be recorded did not run
    finally:
        CALLER.reset(token)


async def test_only_an_operators_deregistration_is_an_admin_change() -> None:
    async def deregister(request: Any) -> str:
        return "gone"

    trail = RecordedTrail()
    guard = Guard(
        engine(builtin("sandbox")),
        region="us-east",
        instance_service=lambda iid: "orders",
        trail=trail,
    )
    wrapped = guard.wrap("RegistryService/Deregister", deregister, client_streaming=False)
    request = invocation_pb2.DeregisterRequest(instance_id="orders-1")
    for spec in ("service/orders", "operator/alice"):
        token = CALLER.set(caller(spec))
        try:
            assert await wrapped(request) == "gone"
        finally:
            CALLER.reset(token)
    assert [who for who, _, _ in trail.admin_changes] == ["spiffe://meridian.local/operator/alice"]


def test_denials_reach_the_trail() -> None:
    trail = RecordedTrail()
    e = PolicyEngine(compile_policies(builtin("sandbox")), region="us-east", trail=trail)
    with pytest.raises(PermissionDeniedError):
        e.check(INVENTORY, Access("state:write", "Keyspace", "orders", "o-1"))
    assert trail.denials == [Access("state:write", "Keyspace", "orders", "o-1")]
