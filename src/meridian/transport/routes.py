"""The route table: every RPC of the public contract, read from the service
descriptors in ``proto/meridian/v1`` and bound to its handler.

Both transports are built from it, so neither holds a servicer or a route per
RPC. The gRPC server registers one generic handler per service; the HTTP server
adds each RPC's ``google.api.http`` bindings (the first is the path, any
``additional_bindings`` are the older paths kept as aliases). An RPC with a
client stream (``Subscribe``, ``PublishStream``) has no HTTP binding: it is
gRPC only.

A handler is found by name: RPC ``GetMany`` of ``StateService`` is the method
``get_many`` of that service's implementation. A missing or doubly defined
handler, and an HTTP rule this server can't serve, stop the agent at start with
an error naming the RPC, never at the first call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from meridian._pb.meridian.v1 import (
    events_pb2,
    flags_pb2,
    health_pb2,
    idempotency_pb2,
    invocation_pb2,
    policy_pb2,
    rollouts_pb2,
    state_pb2,
    status_pb2,
)
from meridian.policy import Guard

#: The generated modules of the public contract, one per ``.proto``.
CONTRACT: tuple[ModuleType, ...] = (
    status_pb2,
    health_pb2,
    state_pb2,
    idempotency_pb2,
    events_pb2,
    invocation_pb2,
    policy_pb2,
    flags_pb2,
    rollouts_pb2,
)

#: The one URL style: ``/v1/<resource>/<the RPC's name in kebab-case>``, or
#: ``/v1/<resource>`` for a read of the agent itself (status, health).
PATH_STYLE = re.compile(r"^/v1/[a-z]+(/[a-z]+(-[a-z]+)*)?\Z")


class RouteError(ValueError):
    """The contract and the implementations do not fit; names the RPC."""


@dataclass(frozen=True)
class HttpBinding:
    verb: str
    path: str
    #: True: the request message is the JSON body; False: the query parameters.
    body: bool
    #: An older path, kept until every client has moved.
    alias: bool


@dataclass(frozen=True)
class Route:
    service: str
    method: str
    #: The gRPC service name, ``meridian.v1.StateService``.
    full_service: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool
    http: tuple[HttpBinding, ...]
    handler: Callable[..., Any]

    @property
    def grpc_path(self) -> str:
        return f"/{self.full_service}/{self.method}"


def snake_case(name: str) -> str:
    """``GetMany`` -> ``get_many``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def kebab_case(name: str) -> str:
    """``GetMany`` -> ``get-many``."""
    return snake_case(name).replace("_", "-")


def contract_services(modules: Iterable[ModuleType] = CONTRACT) -> list[ServiceDescriptor]:
    return [s for m in modules for s in m.DESCRIPTOR.services_by_name.values()]


def _binding(rule: http_pb2.HttpRule, rpc: str, *, alias: bool) -> HttpBinding:
    pattern = rule.WhichOneof("pattern")
    if pattern not in ("get", "post"):
        raise RouteError(f"{rpc}: HTTP rule {pattern!r} is not served; use get or post")
    path = getattr(rule, pattern)
    if "{" in path or not path.startswith("/"):
        raise RouteError(f"{rpc}: HTTP path {path!r} must be a literal path (no templates)")
    if pattern == "post" and rule.body != "*":
        raise RouteError(f"{rpc}: a post rule must take the whole message as its body ('*')")
    if pattern == "get" and rule.body:
        raise RouteError(f"{rpc}: a get rule has no body")
    if rule.response_body:
        raise RouteError(f"{rpc}: response_body is not served; the response is the whole message")
    return HttpBinding(pattern.upper(), path, pattern == "post", alias)


def http_bindings(method: MethodDescriptor) -> tuple[HttpBinding, ...]:
    """The method's ``google.api.http`` bindings, the main one first; () if none."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return ()
    rule = options.Extensions[annotations_pb2.http]
    rpc = method.full_name
    out = [_binding(rule, rpc, alias=False)]
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise RouteError(f"{rpc}: additional bindings can't nest")
        out.append(_binding(extra, rpc, alias=True))
    if method.client_streaming:
        raise RouteError(f"{rpc}: a client stream can't be served over HTTP")
    return tuple(out)


def _handler(service: str, method: str, implementations: Sequence[object]) -> Callable[..., Any]:
    name = snake_case(method)
    found = [getattr(impl, name) for impl in implementations if callable(getattr(impl, name, None))]
    if not found:
        kinds = ", ".join(type(i).__name__ for i in implementations) or "nothing"
        raise RouteError(f"{service}.{method}: no method {name!r} on {kinds}")
    if len(found) > 1:
        raise RouteError(f"{service}.{method}: {name!r} is defined more than once")
    handler: Callable[..., Any] = found[0]
    return handler


def build_routes(
    implementations: Mapping[str, Sequence[object]],
    services: Iterable[ServiceDescriptor] | None = None,
    guard: Guard | None = None,
) -> tuple[Route, ...]:
    """Every RPC of ``services`` (the contract by default) bound to its handler
    in ``implementations`` (by service name), authorized by ``guard`` first.
    Raises RouteError naming the RPC for a missing handler, an unserved HTTP
    rule, two RPCs on one path, an RPC the guard has no rule for, or an
    implementation for a service the contract does not have."""
    routes: list[Route] = []
    paths: dict[tuple[str, str], str] = {}
    descriptors = list(contract_services() if services is None else services)
    unknown = set(implementations) - {s.name for s in descriptors}
    if unknown:
        raise RouteError(f"implementations for services not in the contract: {sorted(unknown)}")
    for service in descriptors:
        impls = implementations.get(service.name)
        if impls is None:
            raise RouteError(f"{service.full_name}: no implementation")
        for method in service.methods:
            bindings = http_bindings(method)
            for b in bindings:
                seen = paths.setdefault((b.verb, b.path), method.full_name)
                if seen != method.full_name:
                    raise RouteError(f"{method.full_name}: {b.verb} {b.path} is {seen}'s already")
            handler = _handler(service.name, method.name, impls)
            if guard is not None:
                try:
                    handler = guard.wrap(
                        f"{service.name}/{method.name}",
                        handler,
                        client_streaming=method.client_streaming,
                    )
                except KeyError:
                    raise RouteError(
                        f"{method.full_name}: no authorization rule (meridian.policy.rpcs)"
                    ) from None
            routes.append(
                Route(
                    service=service.name,
                    method=method.name,
                    full_service=service.full_name,
                    request=message_factory.GetMessageClass(method.input_type),
                    response=message_factory.GetMessageClass(method.output_type),
                    client_streaming=method.client_streaming,
                    server_streaming=method.server_streaming,
                    http=bindings,
                    handler=handler,
                )
            )
    return tuple(routes)
