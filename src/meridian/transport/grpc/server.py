"""The gRPC server, built from the route table: one generic handler per
contract service (no servicer per RPC), plus the transparent invocation proxy.
Each handler only adapts: metadata and deadline in, AgentApi.call, status out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2_grpc

from meridian.core.calls import NO_CALLER, Caller
from meridian.core.errors import MeridianError
from meridian.invocation.model import metadata_text, metadata_wire
from meridian.invocation.service import SERVICE_METADATA, InvocationApi, grpc_call
from meridian.security.tls import Callers, GrpcServerCredentials
from meridian.transport.api import AgentApi, Services
from meridian.transport.errors import grpc_status
from meridian.transport.routes import Route, RouteError, build_routes

Ctx: TypeAlias = grpc.aio.ServicerContext

#: Room for the largest value (8 MiB) plus the envelope.
MAX_MESSAGE_BYTES = 10 << 20


async def _abort(
    context: Ctx, error: MeridianError, trailing: tuple[tuple[str, str], ...] = ()
) -> None:
    """End the call with ``error`` (this raises): its gRPC code and message,
    and its details (``google.rpc.Status``) in the trailers, after ``trailing``."""
    status = grpc_status(error)
    # abort() replaces whatever set_trailing_metadata() set, so pass it all here.
    await context.abort(status.code, status.message, trailing + status.trailing_metadata)


def _carrier(context: Ctx) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def _caller(context: Ctx, callers: Callers | None) -> Caller:
    """The caller's deadline and the identity in its client certificate;
    PermissionDeniedError when ``callers`` refuses that identity."""
    remaining = context.time_remaining()
    if callers is None:
        return NO_CALLER if remaining is None else Caller(remaining_s=remaining)
    # The verified certificate's SANs, not auth_context(), which copies the whole
    # certificate into a new dict on every call.
    identity = callers.identify_sans(context.peer_identities())
    return Caller(remaining_s=remaining, identity=identity.uri)


def _method_handler(api: AgentApi, route: Route, callers: Callers | None) -> grpc.RpcMethodHandler:
    """The gRPC handler of one route: unary, a server stream, or a bidirectional
    stream (the contract has no client-stream-only RPC; the route table says so)."""
    service, method, handler = route.service, route.method, route.handler
    decode, encode = route.request.FromString, route.response.SerializeToString

    if not route.client_streaming and not route.server_streaming:

        async def unary(request: Message, context: Ctx) -> Message:
            try:
                caller = _caller(context, callers)
            except MeridianError as exc:
                await _abort(context, exc)
            result = await api.call(
                service, method, "grpc", _carrier(context), handler, request, caller
            )
            # Trailing, not initial, metadata: sending initial metadata is a separate
            # write per call, and it showed up in profiles of the read path.
            trailing = (("traceparent", result.traceparent),) if result.traceparent else ()
            if result.error is not None:
                await _abort(context, result.error, trailing)
            if trailing:
                context.set_trailing_metadata(trailing)
            assert result.response is not None
            return result.response

        return grpc.unary_unary_rpc_method_handler(unary, decode, encode)

    async def stream(request: Any, context: Ctx) -> AsyncIterator[Message]:
        try:
            caller = _caller(context, callers)
            with api.serving(service, method, "grpc", _carrier(context), caller) as tp:
                responses = await handler(request)
                # A stream's first message may be far off: send the trace context now.
                await context.send_initial_metadata((("traceparent", tp),))
                async for response in responses:
                    yield response
        except MeridianError as exc:
            await _abort(context, exc)

    if route.client_streaming and route.server_streaming:
        return grpc.stream_stream_rpc_method_handler(stream, decode, encode)
    if route.server_streaming:
        return grpc.unary_stream_rpc_method_handler(stream, decode, encode)
    raise RouteError(f"{route.grpc_path}: a client stream with one response is not served")


def service_handlers(
    api: AgentApi, routes: Iterable[Route], callers: Callers | None = None
) -> dict[str, dict[str, Any]]:
    """The routes' gRPC handlers, by full service name and method name."""
    out: dict[str, dict[str, Any]] = {}
    for route in routes:
        out.setdefault(route.full_service, {})[route.method] = _method_handler(api, route, callers)
    return out


class InvocationProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The transparent gRPC proxy: any unary method, with ``meridian-service``
    metadata naming the target service, is invoked through the router as raw
    bytes, its metadata with it (binary ``-bin`` values too). Streaming methods
    are not proxied (UNIMPLEMENTED)."""

    def __init__(
        self, api: AgentApi, invocation: InvocationApi, callers: Callers | None = None
    ) -> None:
        self.api = api
        self.invocation = invocation
        self.callers = callers

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        md = handler_call_details.invocation_metadata or ()
        target = next((v for k, v in md if k == SERVICE_METADATA and isinstance(v, str)), None)
        if target is None:
            return None
        full_method = handler_call_details.method
        full_method = full_method.decode() if isinstance(full_method, bytes) else full_method

        async def proxy(request: bytes, context: Ctx) -> bytes:
            return await self._proxy(target, full_method, request, context)

        return grpc.unary_unary_rpc_method_handler(proxy)

    async def _proxy(self, service: str, full_method: str, request: bytes, context: Ctx) -> bytes:
        # Binary (-bin) values travel as base64 text, as HTTP/2 carries them.
        incoming = [(k, metadata_text(k, v)) for k, v in (context.invocation_metadata() or ())]
        inv = self.invocation
        try:
            caller = _caller(context, self.callers)
            with self.api.serving("InvocationService", "Proxy", "grpc", dict(incoming), caller):
                call = grpc_call(
                    service=service,
                    full_method=full_method,
                    metadata=incoming,
                    body=request,
                    max_body=inv.config.max_body_bytes,
                )
                reply = await inv.call(call)
        except MeridianError as exc:
            await _abort(context, exc)
        await context.send_initial_metadata(
            (
                ("meridian-region", reply.region),
                ("meridian-instance", reply.instance_id),
                ("meridian-version", reply.version),
                ("meridian-attempts", str(reply.attempts)),
            )
        )
        passed = tuple(
            (k, wire)
            for k, v in reply.headers
            if not k.startswith(("grpc-", ":"))
            and k not in ("content-type",)
            and (wire := metadata_wire(k, v)) is not None
        )
        if passed:
            context.set_trailing_metadata(passed)
        if reply.grpc_code and reply.grpc_code != "OK":
            code = (
                grpc.StatusCode[reply.grpc_code]
                if reply.grpc_code in grpc.StatusCode.__members__
                else grpc.StatusCode.UNKNOWN
            )
            await context.abort(code, reply.grpc_details)
        return reply.body


class GrpcTransport:
    """The agent's gRPC server. ``start()`` returns once the port is bound."""

    def __init__(
        self,
        api: AgentApi,
        services: Services,
        host: str,
        port: int,
        *,
        tls: GrpcServerCredentials | None = None,
        callers: Callers | None = None,
    ) -> None:
        """``tls`` and ``callers`` together: TLS with a client certificate
        required, and every call refused unless ``callers`` accepts its
        identity. Neither: plaintext (insecure mode)."""
        self.api = api
        self.services = services
        self.tls = tls
        self.callers = callers
        self.routes = build_routes(services.implementations(api), guard=services.guard)
        self.address = f"{host}:{port}"
        # The standard grpc.health.v1 service too, for orchestrators' probes.
        self.std_health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        # grpc.aio binds the server to the running loop, so build it here.
        self._server = server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        for name, handlers in service_handlers(self.api, self.routes, self.callers).items():
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
            server.add_registered_method_handlers(name, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.std_health, server)
        server.add_generic_rpc_handlers(
            (InvocationProxy(self.api, self.services.invocation, self.callers),)
        )
        if self.tls is not None:
            bound = server.add_secure_port(self.address, self.tls.credentials)
        else:
            bound = server.add_insecure_port(self.address)
        if bound == 0:
            raise OSError(f"gRPC cannot bind {self.address}: address in use?")
        await server.start()

    async def set_serving(self, serving: bool) -> None:
        from grpc_health.v1 import health_pb2 as std

        status = std.HealthCheckResponse.SERVING if serving else std.HealthCheckResponse.NOT_SERVING
        await self.std_health.set("", status)

    async def stop(self, grace_s: float) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
