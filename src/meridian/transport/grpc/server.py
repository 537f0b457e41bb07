"""gRPC servicers. Each one only adapts: metadata in, AgentApi.call, status out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2_grpc

from meridian._pb.meridian.v1 import (
    events_pb2,
    events_pb2_grpc,
    health_pb2,
    idempotency_pb2,
    idempotency_pb2_grpc,
    invocation_pb2,
    invocation_pb2_grpc,
    state_pb2,
    state_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
)
from meridian._pb.meridian.v1 import health_pb2_grpc as m_health_grpc
from meridian.core.errors import MeridianError
from meridian.events.push import PushDeliveries
from meridian.events.service import EventsApi
from meridian.idempotency.service import IdempotencyApi
from meridian.invocation.service import InvocationApi, RegistryApi, grpc_call
from meridian.state.service import StateApi
from meridian.transport.api import AgentApi, Services
from meridian.transport.errors import grpc_status

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
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


async def _unary(
    api: AgentApi,
    service: str,
    method: str,
    handler: Callable[[Req], Awaitable[Resp]],
    request: Req,
    context: Ctx,
) -> Resp:
    carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    result = await api.call(service, method, "grpc", carrier, handler, request)
    # Trailing, not initial, metadata: sending initial metadata is a separate
    # write per call, and it showed up in profiles of the read path.
    trailing = (("traceparent", result.traceparent),) if result.traceparent else ()
    if result.error is not None:
        await _abort(context, result.error, trailing)
    if trailing:
        context.set_trailing_metadata(trailing)
    assert result.response is not None
    return result.response  # type: ignore[return-value]


class StatusServicer(status_pb2_grpc.StatusServiceServicer):
    def __init__(self, api: AgentApi) -> None:
        self.api = api

    async def GetStatus(
        self, request: status_pb2.GetStatusRequest, context: Ctx
    ) -> status_pb2.GetStatusResponse:
        return await _unary(
            self.api, "StatusService", "GetStatus", self.api.get_status, request, context
        )


class HealthServicer(m_health_grpc.HealthServiceServicer):
    def __init__(self, api: AgentApi) -> None:
        self.api = api

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Ctx
    ) -> health_pb2.HealthCheckResponse:
        return await _unary(
            self.api, "HealthService", "Check", self.api.check_health, request, context
        )


class StateServicer(state_pb2_grpc.StateServiceServicer):
    def __init__(self, api: AgentApi, state: StateApi) -> None:
        self.api = api
        self.state = state

    async def Get(self, request: state_pb2.GetRequest, context: Ctx) -> state_pb2.GetResponse:
        return await _unary(self.api, "StateService", "Get", self.state.get, request, context)

    async def GetMany(
        self, request: state_pb2.GetManyRequest, context: Ctx
    ) -> state_pb2.GetManyResponse:
        return await _unary(
            self.api, "StateService", "GetMany", self.state.get_many, request, context
        )

    async def PutMany(
        self, request: state_pb2.PutManyRequest, context: Ctx
    ) -> state_pb2.PutManyResponse:
        return await _unary(
            self.api, "StateService", "PutMany", self.state.put_many, request, context
        )

    async def Put(self, request: state_pb2.PutRequest, context: Ctx) -> state_pb2.WriteResponse:
        return await _unary(self.api, "StateService", "Put", self.state.put, request, context)

    async def Create(
        self, request: state_pb2.CreateRequest, context: Ctx
    ) -> state_pb2.WriteResponse:
        return await _unary(self.api, "StateService", "Create", self.state.create, request, context)

    async def Delete(
        self, request: state_pb2.DeleteRequest, context: Ctx
    ) -> state_pb2.WriteResponse:
        return await _unary(self.api, "StateService", "Delete", self.state.delete, request, context)

    async def Scan(self, request: state_pb2.ScanRequest, context: Ctx) -> state_pb2.ScanResponse:
        return await _unary(self.api, "StateService", "Scan", self.state.scan, request, context)

    async def Increment(
        self, request: state_pb2.IncrementRequest, context: Ctx
    ) -> state_pb2.WriteResponse:
        return await _unary(
            self.api, "StateService", "Increment", self.state.increment, request, context
        )

    async def SetAdd(self, request: state_pb2.SetRequest, context: Ctx) -> state_pb2.WriteResponse:
        return await _unary(
            self.api, "StateService", "SetAdd", self.state.set_add, request, context
        )

    async def SetRemove(
        self, request: state_pb2.SetRequest, context: Ctx
    ) -> state_pb2.WriteResponse:
        return await _unary(
            self.api, "StateService", "SetRemove", self.state.set_remove, request, context
        )

    async def Watch(
        self, request: state_pb2.WatchRequest, context: Ctx
    ) -> AsyncIterator[state_pb2.WatchEvent]:
        carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        try:
            with self.api.serving("StateService", "Watch", "grpc", carrier) as tp:
                # A stream's first message may be far off: send the trace context now.
                await context.send_initial_metadata((("traceparent", tp),))
                async for event in await self.state.watch(request):
                    yield event
        except MeridianError as exc:
            await _abort(context, exc)


class IdempotencyServicer(idempotency_pb2_grpc.IdempotencyServiceServicer):
    def __init__(self, api: AgentApi, idempotency: IdempotencyApi) -> None:
        self.api = api
        self.idempotency = idempotency

    async def Begin(
        self, request: idempotency_pb2.BeginRequest, context: Ctx
    ) -> idempotency_pb2.BeginResponse:
        return await _unary(
            self.api, "IdempotencyService", "Begin", self.idempotency.begin, request, context
        )

    async def Complete(
        self, request: idempotency_pb2.CompleteRequest, context: Ctx
    ) -> idempotency_pb2.CompleteResponse:
        return await _unary(
            self.api, "IdempotencyService", "Complete", self.idempotency.complete, request, context
        )

    async def Abort(
        self, request: idempotency_pb2.AbortRequest, context: Ctx
    ) -> idempotency_pb2.AbortResponse:
        return await _unary(
            self.api, "IdempotencyService", "Abort", self.idempotency.abort, request, context
        )


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, api: AgentApi, events: EventsApi, push: PushDeliveries) -> None:
        self.api = api
        self.events = events
        self.push = push

    async def Publish(
        self, request: events_pb2.PublishRequest, context: Ctx
    ) -> events_pb2.PublishResponse:
        return await _unary(
            self.api, "EventService", "Publish", self.events.publish, request, context
        )

    async def PublishBatch(
        self, request: events_pb2.PublishBatchRequest, context: Ctx
    ) -> events_pb2.PublishBatchResponse:
        return await _unary(
            self.api, "EventService", "PublishBatch", self.events.publish_batch, request, context
        )

    async def PublishStream(
        self, request_iterator: AsyncIterator[events_pb2.PublishRequest], context: Ctx
    ) -> AsyncIterator[events_pb2.PublishResponse]:
        carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        try:
            with self.api.serving("EventService", "PublishStream", "grpc", carrier) as tp:
                await context.send_initial_metadata((("traceparent", tp),))
                async for response in self.events.publish_stream(request_iterator):
                    yield response
        except MeridianError as exc:
            await _abort(context, exc)

    async def Replay(
        self, request: events_pb2.ReplayRequest, context: Ctx
    ) -> events_pb2.ReplayResponse:
        return await _unary(
            self.api, "EventService", "Replay", self.events.replay, request, context
        )

    async def Invalidate(
        self, request: events_pb2.InvalidateRequest, context: Ctx
    ) -> events_pb2.InvalidateResponse:
        return await _unary(
            self.api, "EventService", "Invalidate", self.events.invalidate, request, context
        )

    async def RegisterPush(
        self, request: events_pb2.RegisterPushRequest, context: Ctx
    ) -> events_pb2.RegisterPushResponse:
        return await _unary(
            self.api, "EventService", "RegisterPush", self.push.register, request, context
        )

    async def UnregisterPush(
        self, request: events_pb2.UnregisterPushRequest, context: Ctx
    ) -> events_pb2.UnregisterPushResponse:
        return await _unary(
            self.api, "EventService", "UnregisterPush", self.push.unregister, request, context
        )

    async def Subscribe(
        self, request_iterator: AsyncIterator[events_pb2.SubscribeRequest], context: Ctx
    ) -> AsyncIterator[events_pb2.Delivery]:
        carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        try:
            with self.api.serving("EventService", "Subscribe", "grpc", carrier) as tp:
                deliveries = await self.events.subscribe(request_iterator)
                await context.send_initial_metadata((("traceparent", tp),))
                async for delivery in deliveries:
                    yield delivery
        except MeridianError as exc:
            await _abort(context, exc)


class RegistryServicer(invocation_pb2_grpc.RegistryServiceServicer):
    def __init__(self, api: AgentApi, registry: RegistryApi) -> None:
        self.api = api
        self.registry = registry

    async def Register(
        self, request: invocation_pb2.RegisterRequest, context: Ctx
    ) -> invocation_pb2.RegisterResponse:
        return await _unary(
            self.api, "RegistryService", "Register", self.registry.register, request, context
        )

    async def Heartbeat(
        self, request: invocation_pb2.HeartbeatRequest, context: Ctx
    ) -> invocation_pb2.HeartbeatResponse:
        return await _unary(
            self.api, "RegistryService", "Heartbeat", self.registry.heartbeat, request, context
        )

    async def Deregister(
        self, request: invocation_pb2.DeregisterRequest, context: Ctx
    ) -> invocation_pb2.DeregisterResponse:
        return await _unary(
            self.api, "RegistryService", "Deregister", self.registry.deregister, request, context
        )

    async def ListInstances(
        self, request: invocation_pb2.ListInstancesRequest, context: Ctx
    ) -> invocation_pb2.ListInstancesResponse:
        return await _unary(
            self.api,
            "RegistryService",
            "ListInstances",
            self.registry.list_instances,
            request,
            context,
        )


class InvocationServicer(invocation_pb2_grpc.InvocationServiceServicer):
    def __init__(self, api: AgentApi, invocation: InvocationApi) -> None:
        self.api = api
        self.invocation = invocation

    async def Invoke(
        self, request: invocation_pb2.InvokeRequest, context: Ctx
    ) -> invocation_pb2.InvokeResponse:
        remaining = context.time_remaining()

        async def invoke(req: invocation_pb2.InvokeRequest) -> invocation_pb2.InvokeResponse:
            return await self.invocation.invoke(req, timeout_s=remaining)

        return await _unary(self.api, "InvocationService", "Invoke", invoke, request, context)


SERVICE_METADATA = "meridian-service"
#: Metadata the proxy does not pass on: gRPC's own, and ours.
_DROPPED_METADATA = frozenset(
    {SERVICE_METADATA, "grpc-timeout", "user-agent", "content-type", "te", "traceparent"}
)


class InvocationProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The transparent gRPC proxy: any unary method, with ``meridian-service``
    metadata naming the target service, is invoked through the router as raw
    bytes. Streaming methods are not proxied (UNIMPLEMENTED)."""

    def __init__(self, api: AgentApi, invocation: InvocationApi) -> None:
        self.api = api
        self.invocation = invocation

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
        incoming = [(k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)]
        carrier = dict(incoming)
        inv = self.invocation
        try:
            with self.api.serving("InvocationService", "Proxy", "grpc", carrier) as tp:
                metadata = [
                    (k, v)
                    for k, v in incoming
                    if k not in _DROPPED_METADATA and not k.startswith(":")
                ]
                if tp:
                    metadata.append(("traceparent", tp))
                call = grpc_call(
                    service=service,
                    full_method=full_method,
                    metadata=metadata,
                    body=request,
                    max_body=inv.config.max_body_bytes,
                )
                reply = await inv.call(call, timeout_s=context.time_remaining())
        except MeridianError as exc:
            await _abort(context, exc)
        await context.send_initial_metadata(
            (
                ("meridian-region", reply.region),
                ("meridian-instance", reply.instance_id),
                ("meridian-attempts", str(reply.attempts)),
            )
        )
        passed = tuple(
            (k, v)
            for k, v in reply.headers
            if not k.startswith(("grpc-", ":")) and k not in ("content-type",)
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

    def __init__(self, api: AgentApi, services: Services, host: str, port: int) -> None:
        self.api = api
        self.services = services
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
        add = (
            (status_pb2_grpc.add_StatusServiceServicer_to_server, StatusServicer(self.api)),
            (m_health_grpc.add_HealthServiceServicer_to_server, HealthServicer(self.api)),
            (
                state_pb2_grpc.add_StateServiceServicer_to_server,
                StateServicer(self.api, self.services.state),
            ),
            (
                idempotency_pb2_grpc.add_IdempotencyServiceServicer_to_server,
                IdempotencyServicer(self.api, self.services.idempotency),
            ),
            (
                events_pb2_grpc.add_EventServiceServicer_to_server,
                EventServicer(self.api, self.services.events, self.services.push),
            ),
            (
                invocation_pb2_grpc.add_RegistryServiceServicer_to_server,
                RegistryServicer(self.api, self.services.registry),
            ),
            (
                invocation_pb2_grpc.add_InvocationServiceServicer_to_server,
                InvocationServicer(self.api, self.services.invocation),
            ),
        )
        for register, servicer in add:
            register(servicer, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.std_health, server)
        server.add_generic_rpc_handlers((InvocationProxy(self.api, self.services.invocation),))
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
