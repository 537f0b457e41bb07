"""HTTP/JSON routes over the same service layer as gRPC.

Bodies are protojson (the proto3 JSON mapping: lowerCamelCase, bytes as
base64, 64-bit integers as strings).

- ``GET /v1/status``  → StatusService.GetStatus
- ``GET /v1/health``  → HealthService.Check (200 SERVING/DEGRADED, 503 NOT_SERVING)
- ``POST /v1/state/get|put|create|delete|scan|increment|setadd|setremove``
  → StateService.*, the request message as JSON in the body
- ``POST /v1/idempotency/begin|complete|abort`` → IdempotencyService.*
- ``POST /v1/events/publish|publish-batch|replay|invalidate|push/register|push/unregister``
  → EventService.* (Subscribe is a gRPC bidirectional stream; HTTP services
  register a push endpoint instead)
- ``POST /v1/registry/register|heartbeat|deregister|list`` → RegistryService.*
- ``POST /v1/invocation/invoke`` → InvocationService.Invoke (protojson)
- ``<VERB> /v1/invoke/{service}/{method...}?{query}`` → the same invocation as a
  passthrough: the method, headers, query and body go to the service; its
  status, headers and body come back, with ``Meridian-Region``,
  ``Meridian-Instance`` and ``Meridian-Attempts``. The deadline is the
  ``Meridian-Timeout-Ms`` header (milliseconds).
- ``GET /metrics``    → Prometheus exposition

A body that is not JSON, not an object of the request's fields, or too large is
rejected with INVALID_ARGUMENT naming ``body`` and the rule, before anything
runs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from multidict import CIMultiDict

from meridian._pb.meridian.v1 import (
    events_pb2,
    health_pb2,
    idempotency_pb2,
    invocation_pb2,
    state_pb2,
    status_pb2,
)
from meridian.core.errors import FieldViolation, InvalidArgumentError, MeridianError
from meridian.invocation.calls import HOP_BY_HOP
from meridian.invocation.service import http_call, reply_headers
from meridian.observability.metrics import CONTENT_TYPE
from meridian.transport.api import AgentApi, Services
from meridian.transport.errors import error_body, mapping_for

#: The largest value (8 MiB) base64-encoded, plus the envelope.
MAX_BODY = 12 << 20

Handler = Callable[[Any], Awaitable[Message]]


def _json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _json_text(message: Message) -> str:
    """``json.dumps(_json(message))``, the body ``web.json_response`` would send."""
    if type(message) is state_pb2.GetResponse:
        fast = _get_response_text(message)
        if fast is not None:
            return fast
    return json.dumps(_json(message))


#: protojson text of recently served entries, by their wire bytes: an EVENTUAL read
#: of a hot key sends the same entry again and again. Small entries only, bounded.
_ENTRY_TEXT: dict[bytes, str] = {}
_ENTRY_TEXT_MAX = 1024
_ENTRY_TEXT_MAX_BYTES = 4096


def _entry_text(entry: state_pb2.Entry) -> str:
    wire = entry.SerializeToString()
    text = _ENTRY_TEXT.get(wire)
    if text is None:
        text = json.dumps(_json(entry))
        if len(wire) <= _ENTRY_TEXT_MAX_BYTES:
            if len(_ENTRY_TEXT) >= _ENTRY_TEXT_MAX:
                _ENTRY_TEXT.clear()
            _ENTRY_TEXT[wire] = text
    return text


_LEVEL_NAMES = {v: k for k, v in state_pb2.Consistency.Level.items()}


def _get_response_text(resp: state_pb2.GetResponse) -> str | None:
    """The protojson of a GetResponse without json_format on each call: the same text,
    field for field and in the same order (set fields by number, then the unset
    ``served``), with the entry's text cached. None: let json_format do it."""
    served = _LEVEL_NAMES.get(resp.served)
    if served is None:
        return None
    parts = []
    if resp.HasField("entry"):
        parts.append('"entry": ' + _entry_text(resp.entry))
    if resp.served:
        parts.append(f'"served": "{served}"')
    if resp.HasField("staleness_bound"):
        try:
            parts.append(f'"stalenessBound": "{resp.staleness_bound.ToJsonString()}"')
        except ValueError:
            return None
    if not resp.served:
        parts.append(f'"served": "{served}"')
    return "{" + ", ".join(parts) + "}"


class HttpTransport:
    """The agent's HTTP server. ``start()`` returns once the port is bound."""

    def __init__(self, api: AgentApi, services: Services, host: str, port: int) -> None:
        self.api = api
        self.host = host
        self.port = port
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/state/watch", self._watch)
        state = self.state = services.state
        state_routes: dict[str, tuple[Handler, type[Message]]] = {
            "Get": (state.get, state_pb2.GetRequest),
            "GetMany": (state.get_many, state_pb2.GetManyRequest),
            "Put": (state.put, state_pb2.PutRequest),
            "PutMany": (state.put_many, state_pb2.PutManyRequest),
            "Create": (state.create, state_pb2.CreateRequest),
            "Delete": (state.delete, state_pb2.DeleteRequest),
            "Scan": (state.scan, state_pb2.ScanRequest),
            "Increment": (state.increment, state_pb2.IncrementRequest),
            "SetAdd": (state.set_add, state_pb2.SetRequest),
            "SetRemove": (state.set_remove, state_pb2.SetRequest),
        }
        for method, (handler, request_type) in state_routes.items():
            app.router.add_post(
                f"/v1/state/{method.lower()}",
                self._json_route("StateService", method, handler, request_type),
            )
        idem = services.idempotency
        idempotency_routes: dict[str, tuple[Handler, type[Message]]] = {
            "Begin": (idem.begin, idempotency_pb2.BeginRequest),
            "Complete": (idem.complete, idempotency_pb2.CompleteRequest),
            "Abort": (idem.abort, idempotency_pb2.AbortRequest),
        }
        for method, (handler, request_type) in idempotency_routes.items():
            app.router.add_post(
                f"/v1/idempotency/{method.lower()}",
                self._json_route("IdempotencyService", method, handler, request_type),
            )
        events = services.events
        event_routes: dict[str, tuple[Handler, type[Message]]] = {
            "Publish": (events.publish, events_pb2.PublishRequest),
            "PublishBatch": (events.publish_batch, events_pb2.PublishBatchRequest),
            "Replay": (events.replay, events_pb2.ReplayRequest),
            "Invalidate": (events.invalidate, events_pb2.InvalidateRequest),
            "RegisterPush": (services.push.register, events_pb2.RegisterPushRequest),
            "UnregisterPush": (services.push.unregister, events_pb2.UnregisterPushRequest),
        }
        path = {
            "PublishBatch": "publish-batch",
            "RegisterPush": "push/register",
            "UnregisterPush": "push/unregister",
        }
        for method, (handler, request_type) in event_routes.items():
            app.router.add_post(
                f"/v1/events/{path.get(method, method.lower())}",
                self._json_route("EventService", method, handler, request_type),
            )
        reg = services.registry
        registry_routes: dict[str, tuple[Handler, type[Message]]] = {
            "Register": (reg.register, invocation_pb2.RegisterRequest),
            "Heartbeat": (reg.heartbeat, invocation_pb2.HeartbeatRequest),
            "Deregister": (reg.deregister, invocation_pb2.DeregisterRequest),
            "ListInstances": (reg.list_instances, invocation_pb2.ListInstancesRequest),
        }
        for method, (handler, request_type) in registry_routes.items():
            name = "list" if method == "ListInstances" else method.lower()
            app.router.add_post(
                f"/v1/registry/{name}",
                self._json_route("RegistryService", method, handler, request_type),
            )
        self.invocation = services.invocation
        app.router.add_post(
            "/v1/invocation/invoke",
            self._json_route(
                "InvocationService",
                "Invoke",
                services.invocation.invoke,
                invocation_pb2.InvokeRequest,
            ),
        )
        app.router.add_route("*", "/v1/invoke/{service}", self._invoke)
        app.router.add_route("*", "/v1/invoke/{service}/{method:.*}", self._invoke)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def _respond(
        self,
        request: web.Request,
        service: str,
        method: str,
        handler: Handler,
        message: Message,
        ok_status: Callable[[Message], int] = lambda _: 200,
    ) -> web.Response:
        result = await self.api.call(service, method, "http", request.headers, handler, message)
        headers = {"traceparent": result.traceparent} if result.traceparent else {}
        if result.error is not None:
            return web.json_response(
                error_body(result.error), status=mapping_for(result.error).http, headers=headers
            )
        assert result.response is not None
        return web.json_response(
            text=_json_text(result.response), status=ok_status(result.response), headers=headers
        )

    def _json_route(
        self, service: str, method: str, handler: Handler, request_type: type[Message]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            parsed = await _parse_body(request, request_type)
            if isinstance(parsed, MeridianError):
                # A bad body is still one traced, counted call of this method.
                error = parsed

                async def reject(_: Message) -> Message:
                    raise error

                return await self._respond(request, service, method, reject, request_type())
            return await self._respond(request, service, method, handler, parsed)

        return route

    async def _status(self, request: web.Request) -> web.Response:
        return await self._respond(
            request,
            "StatusService",
            "GetStatus",
            self.api.get_status,
            status_pb2.GetStatusRequest(),
        )

    async def _health(self, request: web.Request) -> web.Response:
        def code(resp: Message) -> int:
            assert isinstance(resp, health_pb2.HealthCheckResponse)
            not_serving = health_pb2.HealthCheckResponse.SERVING_STATUS_NOT_SERVING
            return 503 if resp.status == not_serving else 200

        return await self._respond(
            request,
            "HealthService",
            "Check",
            self.api.check_health,
            health_pb2.HealthCheckRequest(),
            code,
        )

    async def _invoke(self, request: web.Request) -> web.Response:
        """The invocation passthrough; see the module docstring."""
        service = request.match_info["service"]
        prefix = f"/v1/invoke/{service}"
        raw_path = request.raw_path.split("?", 1)[0]
        method = raw_path[len(prefix) :].lstrip("/") if raw_path.startswith(prefix) else ""
        inv = self.invocation
        try:
            with self.api.serving("InvocationService", "Invoke", "http", request.headers) as tp:
                body = await request.read()
                headers = [
                    (k, v)
                    for k, v in request.headers.items()
                    if k.lower() not in HOP_BY_HOP and k.lower() != "traceparent"
                ]
                if tp:
                    headers.append(("traceparent", tp))
                call = http_call(
                    service=service,
                    method=method,
                    verb=request.method,
                    query=request.query_string,
                    headers=headers,
                    body=body,
                    max_body=inv.config.max_body_bytes,
                    parsed_headers=True,
                )
                reply = await inv.call(call, timeout_ms=request.headers.get("Meridian-Timeout-Ms"))
                return web.Response(
                    status=reply.status, body=reply.body, headers=CIMultiDict(reply_headers(reply))
                )
        except MeridianError as exc:
            return web.json_response(error_body(exc), status=mapping_for(exc).http)

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        """StateService.Watch as Server-Sent Events: one ``data:`` line of protojson per
        change, with the revision as the event id and the kind as the event name."""
        query = request.query
        watch = state_pb2.WatchRequest(
            keyspace=query.get("keyspace", ""), prefix=query.get("prefix", "")
        )
        error: MeridianError | None = None
        raw = query.get("from_revision") or request.headers.get("Last-Event-ID")
        if raw is not None:
            if raw.isdigit() and len(raw) <= 20 and int(raw) < 2**64:
                watch.from_revision = int(raw) + (1 if "from_revision" not in query else 0)
            else:
                error = InvalidArgumentError(
                    FieldViolation("from_revision", "must be a non-negative integer revision")
                )
        try:
            with self.api.serving("StateService", "Watch", "http", request.headers) as tp:
                if error is not None:
                    raise error
                events = await self.state.watch(watch)
                response = web.StreamResponse(
                    headers={
                        "Content-Type": "text/event-stream",
                        "Cache-Control": "no-cache",
                        "traceparent": tp,
                    }
                )
                await response.prepare(request)
                async for event in events:
                    kind = state_pb2.WatchEvent.Kind.Name(event.kind).removeprefix("KIND_")
                    data = json_format.MessageToJson(event, indent=None)
                    await response.write(
                        f"id: {event.entry.revision}\nevent: {kind.lower()}\ndata: {data}\n\n".encode()
                    )
                return response
        except MeridianError as exc:
            return web.json_response(error_body(exc), status=mapping_for(exc).http)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.api.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        await self.runner.cleanup()


async def _parse_body(request: web.Request, request_type: type[Message]) -> Message | MeridianError:
    """The request message from a protojson body, or the error naming what is wrong."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        return InvalidArgumentError(
            FieldViolation("body", f"is {request.content_length} bytes; at most {MAX_BODY}")
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return InvalidArgumentError(FieldViolation("body", f"is larger than {MAX_BODY} bytes"))
    if request_type is state_pb2.GetRequest and raw:
        fast = _fast_get_request(raw)
        if fast is not None:
            return fast
    message = request_type()
    try:
        json_format.Parse(raw or b"{}", message)
    except json_format.ParseError as exc:
        return InvalidArgumentError(
            FieldViolation("body", f"is not a valid {request_type.DESCRIPTOR.name} in JSON: {exc}")
        )
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        return InvalidArgumentError(FieldViolation("body", f"is not valid JSON: {exc}"))
    return message


class _Duplicate(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate
    return out


_GET_FIELDS = frozenset({"keyspace", "key", "consistency"})
_LEVELS_BY_NAME = dict(state_pb2.Consistency.Level.items())


def _fast_get_request(raw: bytes) -> state_pb2.GetRequest | None:
    """The common GetRequest body (``keyspace`` and ``key`` strings, ``consistency``
    with a ``level`` name) without json_format; the same message json_format.Parse
    makes. Anything else (other spellings, types, duplicates, bad JSON): None, and
    json_format parses it, with its errors."""
    try:
        js = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
        if type(js) is not dict or not js.keys() <= _GET_FIELDS:
            return None
        keyspace = js.get("keyspace", "")
        key = js.get("key", "")
        if type(keyspace) is not str or type(key) is not str:
            return None
        if "consistency" not in js:
            return state_pb2.GetRequest(keyspace=keyspace, key=key)
        c = js["consistency"]
        if type(c) is not dict or not c.keys() <= {"level"}:
            return None
        level = _LEVELS_BY_NAME.get(c.get("level", "LEVEL_UNSPECIFIED"))
        if level is None:
            return None
        return state_pb2.GetRequest(
            keyspace=keyspace, key=key, consistency=state_pb2.Consistency(level=level)
        )
    except Exception:  # surrogates, bad UTF-8 or JSON, duplicates: json_format decides
        return None
