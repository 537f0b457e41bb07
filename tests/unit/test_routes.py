"""The route table: the contract's google.api.http rules, the one URL style,
and the checks that stop an agent whose contract and handlers do not fit."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

from meridian.events.service import EventsApi
from meridian.flags.service import FlagApi
from meridian.idempotency.service import IdempotencyApi
from meridian.invocation.service import InvocationApi, RegistryApi
from meridian.policy.service import PolicyApi
from meridian.rollouts.service import RolloutApi
from meridian.state.service import StateApi
from meridian.transport.api import AgentApi
from meridian.transport.routes import (
    PATH_STYLE,
    RouteError,
    build_routes,
    contract_services,
    kebab_case,
)

#: The real implementations, as classes: the table must bind every RPC on them.
IMPLEMENTATIONS: dict[str, tuple[object, ...]] = {
    "StatusService": (AgentApi,),
    "HealthService": (AgentApi,),
    "StateService": (StateApi,),
    "IdempotencyService": (IdempotencyApi,),
    "EventService": (EventsApi,),
    "RegistryService": (RegistryApi,),
    "InvocationService": (InvocationApi,),
    "PolicyService": (PolicyApi,),
    "FlagService": (FlagApi,),
    "RolloutService": (RolloutApi,),
}

#: The paths from before the one URL style, kept as aliases. Adding or dropping
#: one is an API change: it shows up here.
ALIASES = {
    "/v1/state/getmany": "GetMany",
    "/v1/state/putmany": "PutMany",
    "/v1/state/setadd": "SetAdd",
    "/v1/state/setremove": "SetRemove",
    "/v1/events/push/register": "RegisterPush",
    "/v1/events/push/unregister": "UnregisterPush",
    "/v1/registry/list": "ListInstances",
}


def test_every_rpc_of_the_contract_is_bound_to_a_handler() -> None:
    routes = build_routes(IMPLEMENTATIONS)
    names = {(r.service, r.method) for r in routes}
    expected = {(s.name, m.name) for s in contract_services() for m in s.methods}
    assert names == expected and len(routes) == len(expected) == 48
    get_many = next(r for r in routes if r.method == "GetMany")
    assert get_many.handler is StateApi.get_many
    assert get_many.grpc_path == "/meridian.v1.StateService/GetMany"
    push = next(r for r in routes if r.method == "RegisterPush")
    assert push.handler is EventsApi.register_push


def test_one_url_style_and_every_rpc_but_client_streams_over_http() -> None:
    routes = build_routes(IMPLEMENTATIONS)
    resources: dict[str, set[str]] = {}
    aliases = {}
    for route in routes:
        if route.client_streaming:
            assert route.http == (), route.method  # Subscribe, PublishStream: gRPC only
            continue
        main, *extra = route.http
        assert not main.alias and all(b.alias for b in extra)
        assert PATH_STYLE.match(main.path), main.path
        resource = main.path.split("/")[2]
        resources.setdefault(route.service, set()).add(resource)
        # A read of the agent itself (status, health) is GET /v1/<resource>; the
        # stream (Watch) is GET and every other RPC POSTs its message, both at
        # /v1/<resource>/<rpc in kebab-case>.
        read = route.service in ("StatusService", "HealthService")
        expected = f"/v1/{resource}" if read else f"/v1/{resource}/{kebab_case(route.method)}"
        assert main.path == expected
        get = read or route.server_streaming
        assert (main.verb, main.body) == (("GET", False) if get else ("POST", True))
        aliases.update({b.path: route.method for b in extra})
    assert all(len(r) == 1 for r in resources.values()), resources
    assert aliases == ALIASES


def test_the_style_check_refuses_other_styles() -> None:
    for path in (
        "/v1/state/getMany",
        "/v1/state/get_many",
        "/state/get",
        "/v1/state/get/",
        "/v2/x",
    ):
        assert not PATH_STYLE.match(path), path
    for path in ("/v1/state/get-many", "/v1/health", "/v1/events/register-push"):
        assert PATH_STYLE.match(path), path


_files = itertools.count()


def _service(
    *methods: tuple[str, Callable[[descriptor_pb2.MethodDescriptorProto], None]],
) -> ServiceDescriptor:
    """A one-service contract, made for the test in the default pool."""
    package = f"meridian.routestest{next(_files)}"
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}.proto",
        package=package,
        syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    fdp.message_type.add(name="Req").field.add(
        name="n", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    )
    fdp.message_type.add(name="Resp")
    svc = fdp.service.add(name="TestService")
    for name, configure in methods:
        m = svc.method.add(name=name, input_type=f".{package}.Req", output_type=f".{package}.Resp")
        configure(m)
    pool = descriptor_pool.Default()
    pool.Add(fdp)
    return pool.FindServiceByName(f"{package}.TestService")


def _rule(**fields: str) -> Callable[[descriptor_pb2.MethodDescriptorProto], None]:
    def configure(m: descriptor_pb2.MethodDescriptorProto) -> None:
        rule = m.options.Extensions[annotations_pb2.http]
        for k, v in fields.items():
            setattr(rule, k, v)

    return configure


class _Impl:
    async def get(self, request: object) -> object:
        return request

    async def put(self, request: object) -> object:
        return request


def _build(service: ServiceDescriptor, *impls: object) -> None:
    build_routes({"TestService": impls or (_Impl(),)}, [service])


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ({"put": "/v1/test/get", "body": "*"}, "'put' is not served"),
        ({"post": "/v1/test/get"}, "body ('*')"),
        ({"post": "/v1/test/get", "body": "n"}, "body ('*')"),
        ({"get": "/v1/test/get", "body": "*"}, "get rule has no body"),
        ({"get": "/v1/test/{n}"}, "literal path"),
        ({"get": "v1/test/get"}, "literal path"),
        ({"post": "/v1/test/get", "body": "*", "response_body": "n"}, "response_body"),
    ],
)
def test_an_http_rule_the_server_cant_serve_stops_the_build(
    rule: dict[str, str], says: str
) -> None:
    with pytest.raises(RouteError, match=r"TestService\.Get") as info:
        _build(_service(("Get", _rule(**rule))))
    assert says in str(info.value)


def test_a_missing_or_doubled_handler_or_a_shared_path_stops_the_build() -> None:
    ok = _rule(post="/v1/test/get", body="*")
    with pytest.raises(RouteError, match=r"TestService.Delete: no method 'delete' on _Impl"):
        _build(_service(("Get", ok), ("Delete", _rule(post="/v1/test/delete", body="*"))))
    with pytest.raises(RouteError, match=r"'get' is defined more than once"):
        _build(_service(("Get", ok)), _Impl(), _Impl())
    with pytest.raises(RouteError, match=r"POST /v1/test/get is .*TestService\.Get's already"):
        _build(_service(("Get", ok), ("Put", ok)))
    with pytest.raises(RouteError, match="not in the contract"):
        build_routes({"TestService": (_Impl(),), "Nope": ()}, [_service(("Get", ok))])
    with pytest.raises(RouteError, match="no implementation"):
        build_routes({}, [_service(("Get", ok))])


def test_a_client_stream_over_http_stops_the_build() -> None:
    def streamed(m: descriptor_pb2.MethodDescriptorProto) -> None:
        _rule(post="/v1/test/get", body="*")(m)
        m.client_streaming = True

    with pytest.raises(RouteError, match="client stream"):
        _build(_service(("Get", streamed)))


def test_an_alias_binding_is_checked_like_the_main_one() -> None:
    def with_alias(m: descriptor_pb2.MethodDescriptorProto) -> None:
        rule = m.options.Extensions[annotations_pb2.http]
        rule.post, rule.body = "/v1/test/get", "*"
        rule.additional_bindings.add(post="/v1/test/old")  # no body: refused

    with pytest.raises(RouteError, match="body"):
        _build(_service(("Get", with_alias)))

    def good_alias(m: descriptor_pb2.MethodDescriptorProto) -> None:
        rule = m.options.Extensions[annotations_pb2.http]
        rule.post, rule.body = "/v1/test/get", "*"
        rule.additional_bindings.add(post="/v1/test/old", body="*")

    (route,) = build_routes({"TestService": (_Impl(),)}, [_service(("Get", good_alias))])
    assert [(b.path, b.alias) for b in route.http] == [
        ("/v1/test/get", False),
        ("/v1/test/old", True),
    ]
