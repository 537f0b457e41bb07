"""The Registry and Invocation APIs, once, for both transports: proto in, proto out.

Every field is validated before anything is registered or sent; a bad request
gets INVALID_ARGUMENT naming the field and the rule.

Invocation has one entry, :meth:`InvocationApi.call`, used by the HTTP
passthrough (``/v1/invoke/{service}/{method...}``), the gRPC transparent
proxy and ``Invoke``; a call forwarded from another region gets its deadline
the same way (:func:`~meridian.invocation.resilience.deadline.resolve_deadline`).
:func:`http_call` and :func:`grpc_call` build the validated
:class:`~meridian.invocation.calls.Call`: they drop the headers a caller may
not pass on (hop-by-hop, Meridian's own, gRPC's own) and put the agent's
``traceparent`` in place of the caller's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from meridian._pb.meridian.v1 import invocation_pb2 as pb
from meridian.config.model import InvocationConfig
from meridian.core.calls import CALLER, Caller
from meridian.core.endpoints import SANDBOX, EndpointPolicy
from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.invocation.calls import HOP_BY_HOP, Call, Reply
from meridian.invocation.model import (
    INSTANCE_ID,
    grpc_violations,
    http_violations,
    service_violations,
    validate_registration,
)
from meridian.invocation.registry import PROTOCOL_NAMES, RegistryComponent
from meridian.invocation.resilience.deadline import resolve_deadline
from meridian.invocation.router import Invoker
from meridian.observability.tracing import current_traceparent
from meridian.policy import Access, Guard

IDEMPOTENCY_KEY_HEADER = "idempotency-key"
#: The gRPC metadata that names the service the transparent proxy calls.
SERVICE_METADATA = "meridian-service"
#: Headers a caller may not set on the call the agent makes: ours, and the
#: trace context (the agent sends its own span's).
RESERVED_HEADERS = frozenset(
    {SERVICE_METADATA, "grpc-timeout", "meridian-timeout-ms", "traceparent"}
)
#: Not passed on over HTTP: the connection's own headers, and the reserved ones.
_HTTP_DROPPED = HOP_BY_HOP | RESERVED_HEADERS
#: Not passed on over gRPC: the reserved ones and gRPC's own.
_GRPC_DROPPED = RESERVED_HEADERS | {"user-agent", "content-type", "te"}


def _with_traceparent(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``headers`` and the current span's ``traceparent`` (the agent's server span,
    a child of the caller's), when there is one."""
    traceparent = current_traceparent()
    if traceparent:
        headers.append(("traceparent", traceparent))
    return tuple(headers)


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _has_key(headers: Iterable[tuple[str, str]]) -> bool:
    return any(k.lower() == IDEMPOTENCY_KEY_HEADER and v for k, v in headers)


def http_call(
    *,
    service: str,
    method: str,
    verb: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    max_body: int,
    parsed_headers: bool = False,
) -> Call:
    """A validated HTTP call, or InvalidArgumentError naming each bad field.

    ``parsed_headers``: the headers come from an HTTP request the server has
    already parsed (names are tokens, values have no CR or LF), so only their
    number and size are checked."""
    verb = verb.upper() or "POST"
    v = http_violations(
        service=service,
        method=method,
        verb=verb,
        query=query,
        headers=headers,
        body_bytes=len(body),
        max_body=max_body,
        parsed_headers=parsed_headers,
    )
    if v:
        raise InvalidArgumentError(v)
    kept = _with_traceparent([(k, val) for k, val in headers if k.lower() not in _HTTP_DROPPED])
    return Call(
        service=service,
        route=method.lstrip("/"),
        protocol="http",
        body=body,
        headers=kept,
        verb=verb,
        query=query,
        has_idempotency_key=_has_key(headers),
    )


def grpc_call(
    *, service: str, full_method: str, metadata: list[tuple[str, str]], body: bytes, max_body: int
) -> Call:
    v = grpc_violations(
        service=service, full_method=full_method, body_bytes=len(body), max_body=max_body
    )
    if v:
        raise InvalidArgumentError(v)
    kept = [(k, val) for k, val in metadata if k not in _GRPC_DROPPED and not k.startswith(":")]
    return Call(
        service=service,
        route=full_method,
        protocol="grpc",
        body=body,
        headers=_with_traceparent(kept),
        verb="",
        has_idempotency_key=_has_key(metadata),
    )


def reply_headers(reply: Reply) -> list[tuple[str, str]]:
    """The instance's headers plus who served the call."""
    return [
        *reply.headers,
        ("Meridian-Region", reply.region),
        ("Meridian-Instance", reply.instance_id),
        ("Meridian-Version", reply.version),
        ("Meridian-Attempts", str(reply.attempts)),
    ]


class RegistryApi:
    def __init__(
        self,
        registry: RegistryComponent,
        config: InvocationConfig,
        endpoints: EndpointPolicy = SANDBOX,
    ) -> None:
        self.registry = registry
        self.config = config
        #: Where instances may be, beyond the fixed rules.
        self.endpoints = endpoints

    async def register(self, request: pb.RegisterRequest) -> pb.RegisterResponse:
        inst = request.instance
        if not request.HasField("instance"):
            raise InvalidArgumentError(FieldViolation("instance", "is required"))
        reg = validate_registration(
            service=inst.service,
            endpoint=inst.endpoint,
            protocol=PROTOCOL_NAMES.get(inst.protocol, ""),
            instance_id=inst.instance_id,
            version=inst.version,
            metadata=dict(inst.metadata),
            health_path=inst.health_check.http_path,
            grpc_health_service=inst.health_check.grpc_service,
            check_interval_s=inst.health_check.interval.ToNanoseconds() / 1e9,
            ttl_s=request.ttl.ToNanoseconds() / 1e9,
            default_ttl_s=self.config.default_ttl_s,
            max_ttl_s=self.config.max_ttl_s,
            endpoints=self.endpoints,
        )
        instance_id, expires, ttl = await self.registry.register(reg, CALLER.get().identity)
        resp = pb.RegisterResponse(instance_id=instance_id, lease_expires_at=_ts(expires))
        resp.ttl.FromNanoseconds(int(ttl * 1e9))
        return resp

    def _instance_id(self, instance_id: str) -> None:
        if not INSTANCE_ID.match(instance_id):
            raise InvalidArgumentError(
                FieldViolation(
                    "instance_id", "must be 1-128 characters of A-Z, a-z, 0-9, '_' and '-'"
                )
            )

    async def heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        self._instance_id(request.instance_id)
        return pb.HeartbeatResponse(
            lease_expires_at=_ts(
                self.registry.heartbeat(request.instance_id, CALLER.get().identity)
            )
        )

    async def deregister(self, request: pb.DeregisterRequest) -> pb.DeregisterResponse:
        self._instance_id(request.instance_id)
        await self.registry.deregister(request.instance_id, CALLER.get().identity)
        return pb.DeregisterResponse()

    async def list_instances(self, request: pb.ListInstancesRequest) -> pb.ListInstancesResponse:
        v = service_violations(request.service) if request.service else []
        if len(request.region) > 64:
            v.append(FieldViolation("region", "must be at most 64 characters"))
        if v:
            raise InvalidArgumentError(v)
        return pb.ListInstancesResponse(
            instances=self.registry.statuses(request.service, request.region)
        )


class InvocationApi:
    def __init__(self, invoker: Invoker, config: InvocationConfig, guard: Guard) -> None:
        self.invoker = invoker
        self.config = config
        self.guard = guard

    async def call(self, call: Call, caller: Caller | None = None) -> Reply:
        """Invoke ``call``: the one entry every invocation takes. ``caller`` is
        the caller's timeout, by default the one the transport set for the call
        being served. The caller must be allowed to ``invoke`` the service
        (PERMISSION_DENIED naming it otherwise). The route's policy is resolved
        once, for the deadline and the call."""
        self.guard.check((Access("invoke", "Service", call.service, call.route),))
        timeout = CALLER.get() if caller is None else caller
        policy = self.invoker.policy(call)
        deadline = resolve_deadline(
            time.monotonic(),
            policy.timeout,
            timeout_ms=timeout.timeout_ms,
            remaining_s=timeout.remaining_s,
        )
        reply = await self.invoker.invoke(call, deadline, policy)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    "meridian.invocation.service": call.service,
                    "meridian.invocation.region": reply.region,
                    "meridian.invocation.version": reply.version,
                }
            )
        return reply

    async def invoke(self, request: pb.InvokeRequest) -> pb.InvokeResponse:
        """InvocationService.Invoke (gRPC, or POST /v1/invocation/invoke). A
        ``Meridian-Timeout-Ms`` among the request's headers is the caller's timeout."""
        headers = [(h.name, h.value) for h in request.headers]
        call = http_call(
            service=request.service,
            method=request.method,
            verb=request.http_verb,
            query=request.query,
            headers=headers,
            body=request.body,
            max_body=self.config.max_body_bytes,
        )
        caller = CALLER.get()
        timeout_ms = next((v for k, v in headers if k.lower() == "meridian-timeout-ms"), None)
        if timeout_ms is not None:
            caller = dataclasses.replace(caller, timeout_ms=timeout_ms)
        reply = await self.call(call, caller)
        return pb.InvokeResponse(
            status=reply.status,
            headers=[pb.Header(name=k, value=v) for k, v in reply.headers],
            body=reply.body,
            region=reply.region,
            instance_id=reply.instance_id,
            attempts=reply.attempts,
            version=reply.version,
        )
