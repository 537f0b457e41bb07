"""HTTP/JSON over the same service layer as gRPC, built from the route table.

Each RPC is served at the path of its ``google.api.http`` rule in
``proto/meridian/v1`` (see docs/api.md for the list): ``POST`` with the request
message as the body, or ``GET`` with its fields as query parameters. Bodies are
protojson (the proto3 JSON mapping: lowerCamelCase, bytes as base64, 64-bit
integers as strings). The paths from before the one URL style (``getmany``,
``push/register``, ``registry/list``, ...) are the rules' ``additional_bindings``
and still work.

Beside the table:

- ``GET /v1/health`` answers 503 when NOT_SERVING (200 for SERVING, DEGRADED);
- ``GET /v1/state/watch`` (a server stream) is Server-Sent Events;
- ``<VERB> /v1/invoke/{service}/{method...}?{query}`` is invocation as a
  passthrough: the method, headers, query and body go to the service; its
  status, headers and body come back, with ``Meridian-Region``,
  ``Meridian-Instance`` and ``Meridian-Attempts``. The deadline is the
  ``Meridian-Timeout-Ms`` header (milliseconds);
- ``GET /metrics`` is the Prometheus exposition.

A body that is not JSON, not an object of the request's fields, or too large is
rejected with INVALID_ARGUMENT naming ``body`` and the rule, before anything
runs; a bad query parameter is named the same way.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from multidict import CIMultiDict

from meridian._pb.meridian.v1 import health_pb2, state_pb2
from meridian.core.calls import NO_CALLER, Caller
from meridian.core.errors import FieldViolation, InvalidArgumentError, MeridianError
from meridian.invocation.resilience.deadline import HTTP_TIMEOUT_HEADER
from meridian.invocation.service import http_call, reply_headers
from meridian.observability.metrics import CONTENT_TYPE
from meridian.security.tls import Callers, ReloadingContext
from meridian.transport.api import AgentApi, Services
from meridian.transport.errors import error_body, mapping_for
from meridian.transport.http import ofrep
from meridian.transport.routes import Route, RouteError, build_routes

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


def _ok(_: Message) -> int:
    return 200


def _health_status(resp: Message) -> int:
    assert isinstance(resp, health_pb2.HealthCheckResponse)
    not_serving = health_pb2.HealthCheckResponse.SERVING_STATUS_NOT_SERVING
    return 503 if resp.status == not_serving else 200


#: The HTTP status of a successful call, where it is not 200.
_OK_STATUS: dict[tuple[str, str], Callable[[Message], int]] = {
    ("HealthService", "Check"): _health_status,
}


class HttpTransport:
    """The agent's HTTP server. ``start()`` returns once the port is bound."""

    def __init__(
        self,
        api: AgentApi,
        services: Services,
        host: str,
        port: int,
        *,
        tls: ReloadingContext | None = None,
        callers: Callers | None = None,
    ) -> None:
        """``tls`` and ``callers`` together: HTTPS with a client certificate
        required, and every request refused unless ``callers`` accepts its
        identity. Neither: plaintext (insecure mode)."""
        self.api = api
        self.host = host
        self.port = port
        self.tls = tls
        self.callers = callers
        self.routes = build_routes(services.implementations(api), guard=services.guard)
        middlewares = [self._identify] if callers is not None else []
        app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
        for route in self.routes:
            for binding in route.http:
                if route.server_streaming:
                    app.router.add_get(binding.path, self._event_stream(route))
                elif binding.body:
                    app.router.add_post(binding.path, self._json_route(route))
                else:
                    app.router.add_get(binding.path, self._query_route(route))
        app.router.add_get("/metrics", self._metrics)
        by_name = {(r.service, r.method): r for r in self.routes}
        single, bulk = ofrep.handlers(
            api,
            services.flags,
            by_name["FlagService", "Evaluate"],
            by_name["FlagService", "EvaluateAll"],
            _caller,
        )
        app.router.add_post(ofrep.SINGLE, single)
        app.router.add_post(ofrep.BULK, bulk)
        self.invocation = services.invocation
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
        ok_status: Callable[[Message], int] = _ok,
    ) -> web.Response:
        result = await self.api.call(
            service, method, "http", request.headers, handler, message, _caller(request)
        )
        headers = {"traceparent": result.traceparent} if result.traceparent else {}
        if result.error is not None:
            return web.json_response(
                error_body(result.error), status=mapping_for(result.error).http, headers=headers
            )
        assert result.response is not None
        return web.json_response(
            text=_json_text(result.response), status=ok_status(result.response), headers=headers
        )

    def _json_route(self, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            return await self._respond_parsed(
                request, route, await _parse_body(request, route.request)
            )

        return serve

    def _query_route(self, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            return await self._respond_parsed(
                request, route, _parse_query(request.query, route.request)
            )

        return serve

    async def _respond_parsed(
        self, request: web.Request, route: Route, parsed: Message | MeridianError
    ) -> web.Response:
        handler: Handler = route.handler
        if isinstance(parsed, MeridianError):
            # A bad request is still one traced, counted call of this method.
            error = parsed

            async def reject(_: Message) -> Message:
                raise error

            handler, parsed = reject, route.request()
        ok_status = _OK_STATUS.get((route.service, route.method), _ok)
        return await self._respond(request, route.service, route.method, handler, parsed, ok_status)

    async def _invoke(self, request: web.Request) -> web.Response:
        """The invocation passthrough; see the module docstring."""
        service = request.match_info["service"]
        prefix = f"/v1/invoke/{service}"
        raw_path = request.raw_path.split("?", 1)[0]
        method = raw_path[len(prefix) :].lstrip("/") if raw_path.startswith(prefix) else ""
        inv = self.invocation
        try:
            with self.api.serving(
                "InvocationService", "Invoke", "http", request.headers, _caller(request)
            ):
                call = http_call(
                    service=service,
                    method=method,
                    verb=request.method,
                    query=request.query_string,
                    headers=list(request.headers.items()),
                    body=await request.read(),
                    max_body=inv.config.max_body_bytes,
                    parsed_headers=True,
                )
                reply = await inv.call(call)
                return web.Response(
                    status=reply.status, body=reply.body, headers=CIMultiDict(reply_headers(reply))
                )
        except MeridianError as exc:
            return web.json_response(error_body(exc), status=mapping_for(exc).http)

    def _event_stream(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A server stream as Server-Sent Events. The one the contract has is
        StateService.Watch: one ``data:`` line of protojson per change, with the
        revision as the event id and the kind as the event name; a client that
        reconnects with ``Last-Event-ID`` resumes after that revision."""
        if route.response is not state_pb2.WatchEvent:
            raise RouteError(f"{route.grpc_path}: no Server-Sent Events mapping for its stream")
        service, method, handler = route.service, route.method, route.handler

        async def serve(request: web.Request) -> web.StreamResponse:
            parsed = _parse_query(request.query, route.request)
            resume = request.headers.get("Last-Event-ID")
            # A from_revision in the query says where to start; else resume after the id.
            resuming = resume is not None and "from_revision" not in request.query
            if resuming and not isinstance(parsed, MeridianError):
                assert resume is not None
                if resume.isdigit() and len(resume) <= 20 and int(resume) < 2**64 - 1:
                    parsed.from_revision = int(resume) + 1  # type: ignore[attr-defined]
                else:
                    parsed = InvalidArgumentError(
                        FieldViolation("Last-Event-ID", "must be a non-negative integer revision")
                    )
            try:
                with self.api.serving(
                    service, method, "http", request.headers, _caller(request)
                ) as tp:
                    if isinstance(parsed, MeridianError):
                        raise parsed
                    events = await handler(parsed)
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
                            f"id: {event.entry.revision}\nevent: {kind.lower()}\n"
                            f"data: {data}\n\n".encode()
                        )
                    return response
            except MeridianError as exc:
                return web.json_response(error_body(exc), status=mapping_for(exc).http)

        return serve

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.api.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    @web.middleware
    async def _identify(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The caller's identity from its client certificate; a certificate
        that names no identity allowed to call is refused (PERMISSION_DENIED)."""
        assert self.callers is not None
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            request[_IDENTITY] = self.callers.identify(der).uri
        except MeridianError as exc:
            return web.json_response(error_body(exc), status=mapping_for(exc).http)
        response: web.StreamResponse = await handler(request)
        return response

    async def start(self) -> None:
        await self.runner.setup()
        ssl_context = self.tls.outer if self.tls is not None else None
        site = web.TCPSite(
            self.runner, self.host, self.port, reuse_address=True, ssl_context=ssl_context
        )
        await site.start()

    async def stop(self) -> None:
        await self.runner.cleanup()


_IDENTITY = web.RequestKey("identity", str)


def _caller(request: web.Request) -> Caller:
    """The caller's identity, and its ``Meridian-Timeout-Ms`` as sent (checked
    where it is used)."""
    raw = request.headers.get(HTTP_TIMEOUT_HEADER)
    identity = request.get(_IDENTITY, "")
    if raw is None and not identity:
        return NO_CALLER
    return Caller(timeout_ms=raw, identity=identity)


def _parse_query(query: Mapping[str, str], request_type: type[Message]) -> Message | MeridianError:
    """The request message from query parameters, each named like its field (or
    its JSON name); parameters that name no field are ignored. A value that does
    not fit its field is INVALID_ARGUMENT naming the parameter."""
    message = request_type()
    fields = request_type.DESCRIPTOR.fields_by_name
    by_json = {f.json_name: f for f in request_type.DESCRIPTOR.fields}
    violations = []
    for name, value in query.items():
        field = fields.get(name) or by_json.get(name)
        if field is None:
            continue
        if field.message_type is not None or field.is_repeated:
            violations.append(FieldViolation(name, "can't be a query parameter; use POST"))
            continue
        try:
            json_format.ParseDict({field.json_name: value}, message)
        except json_format.ParseError as exc:
            violations.append(FieldViolation(name, f"is not a valid {field.name}: {exc}"[:300]))
    if violations:
        return InvalidArgumentError(violations)
    return message


def _browser_violations(request: web.Request) -> list[FieldViolation]:
    """Refuse what only a browser sends, so that a web page can't make a
    developer's browser write to a loopback agent (cross-site request forgery,
    DNS rebinding): a request with an ``Origin`` (browsers send one with every
    POST; SDKs and curl don't), and a body that is not declared JSON (a form or
    ``text/plain`` POST needs no CORS preflight; ``application/json`` does)."""
    out = []
    if "Origin" in request.headers:
        out.append(
            FieldViolation(
                "Origin",
                "must be absent: the agent's HTTP API serves services, not browsers",
            )
        )
    has_body = bool(request.content_length) or request.headers.get("Transfer-Encoding")
    declared = request.headers.get("Content-Type")
    if has_body and (declared is None or request.content_type != "application/json"):
        shown = "none" if declared is None else repr(declared[:60])
        out.append(
            FieldViolation(
                "Content-Type", f"must be application/json for a request with a body; got {shown}"
            )
        )
    return out


async def _parse_body(request: web.Request, request_type: type[Message]) -> Message | MeridianError:
    """The request message from a protojson body, or the error naming what is wrong."""
    browser = _browser_violations(request)
    if browser:
        return InvalidArgumentError(browser)
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
