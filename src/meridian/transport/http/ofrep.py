"""The OpenFeature Remote Evaluation Protocol (OFREP) on the agent's HTTP port.

``POST /ofrep/v1/evaluate/flags/{key}`` and ``POST /ofrep/v1/evaluate/flags``
(bulk), so services use the stock OpenFeature SDKs with their OFREP
providers. Each request is the FlagService RPC (``Evaluate``,
``EvaluateAll``) through the same guarded handler, span and metrics as any
other call; only the JSON shapes and statuses are OFREP's:

- 200 ``{"key", "value", "variant", "reason", "metadata"}``;
- 404 ``{"key", "errorCode": "FLAG_NOT_FOUND", "errorDetails"}``;
- 400 ``{"key", "errorCode", "errorDetails"}`` with ``PARSE_ERROR`` (a body
  that is not JSON), ``INVALID_CONTEXT`` (a context that is not an object,
  a non-string ``targetingKey``) or ``GENERAL`` (targeting that failed);
- 401/403 when the caller is not allowed (mutual TLS, then policy);
- 503 with ``Retry-After`` while the agent has not loaded the flags yet;
- bulk: 200 ``{"flags": [...], "metadata": {}}`` with an ``ETag`` (the
  flag set's revision, the region and the context); a request whose
  ``If-None-Match`` matches is answered 304.

Values are served exactly as the flag defines them (an integer stays an
integer), not through protobuf's doubles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf.message import Message

from meridian._pb.meridian.v1 import flags_pb2
from meridian.core.calls import Caller
from meridian.core.errors import ErrorCode, MeridianError
from meridian.flags.model import FLAG_NOT_FOUND, INVALID_CONTEXT, MAX_CONTEXT_BYTES, PARSE_ERROR
from meridian.flags.service import PROVIDER_NOT_READY, FlagApi
from meridian.transport.api import AgentApi
from meridian.transport.errors import error_body, mapping_for
from meridian.transport.routes import Route

SINGLE = "/ofrep/v1/evaluate/flags/{key}"
BULK = "/ofrep/v1/evaluate/flags"


def _evaluation_json(e: flags_pb2.FlagEvaluation, flags: FlagApi) -> dict[str, Any]:
    value, metadata = flags.served(e)
    return {
        "key": e.key,
        "reason": e.reason,
        "variant": e.variant,
        "value": value,
        "metadata": dict(metadata),
    }


def _error_json(key: str, code: str, details: str) -> dict[str, Any]:
    out = {"errorCode": code, "errorDetails": details}
    return {"key": key, **out} if key else out


def _rpc_error(key: str, error: MeridianError) -> web.Response:
    status = mapping_for(error).http
    if error.code is ErrorCode.INVALID_ARGUMENT:
        return web.json_response(_error_json(key, "GENERAL", str(error)), status=400)
    if status >= 500:
        retry = {"Retry-After": "1"} if mapping_for(error).retryable else None
        return web.json_response({"errorDetails": str(error)}, status=status, headers=retry)
    return web.json_response(error_body(error), status=status)


async def _context(request: web.Request, key: str) -> dict[str, Any] | web.Response:
    """The request's ``context``, or the OFREP 400 saying what is wrong."""
    if request.content_length is not None and request.content_length > MAX_CONTEXT_BYTES:
        return web.json_response(
            _error_json(key, INVALID_CONTEXT, f"the body is larger than {MAX_CONTEXT_BYTES} bytes"),
            status=400,
        )
    raw = await request.content.read(MAX_CONTEXT_BYTES + 1)
    if len(raw) > MAX_CONTEXT_BYTES:
        return web.json_response(
            _error_json(key, INVALID_CONTEXT, f"the body is larger than {MAX_CONTEXT_BYTES} bytes"),
            status=400,
        )
    try:
        doc = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError) as exc:
        return web.json_response(
            _error_json(key, PARSE_ERROR, f"the body is not JSON: {exc}"[:300]), status=400
        )
    context = doc.get("context", {}) if isinstance(doc, dict) else None
    if not isinstance(context, dict):
        return web.json_response(
            _error_json(key, INVALID_CONTEXT, "context must be a JSON object"), status=400
        )
    return context


def _request(message: Message, context: dict[str, Any], key: str) -> web.Response | None:
    try:
        message.context.update(context)  # type: ignore[attr-defined]
    except (ValueError, TypeError, RecursionError) as exc:
        return web.json_response(
            _error_json(key, INVALID_CONTEXT, f"context can't be used: {exc}"[:300]), status=400
        )
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handlers(
    api: AgentApi,
    flags: FlagApi,
    single_route: Route,
    bulk_route: Route,
    caller: Callable[[web.Request], Caller],
) -> tuple[Handler, Handler]:
    """The two OFREP handlers, each calling its guarded FlagService route."""

    async def single(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        context = await _context(request, key)
        if isinstance(context, web.Response):
            return context
        message = flags_pb2.EvaluateFlagRequest(key=key)
        bad = _request(message, context, key)
        if bad is not None:
            return bad
        result = await api.call(
            "FlagService",
            "Evaluate",
            "http",
            request.headers,
            single_route.handler,
            message,
            caller(request),
        )
        if result.error is not None:
            return _rpc_error(key, result.error)
        assert isinstance(result.response, flags_pb2.EvaluateFlagResponse)
        e = result.response.evaluation
        if e.error_code == FLAG_NOT_FOUND:
            return web.json_response(_error_json(key, e.error_code, e.error_details), status=404)
        if e.error_code == PROVIDER_NOT_READY:
            return web.json_response(
                {"errorDetails": e.error_details}, status=503, headers={"Retry-After": "1"}
            )
        if e.error_code:
            return web.json_response(_error_json(key, e.error_code, e.error_details), status=400)
        return web.json_response(_evaluation_json(e, flags))

    async def bulk(request: web.Request) -> web.StreamResponse:
        context = await _context(request, "")
        if isinstance(context, web.Response):
            return context
        message = flags_pb2.EvaluateAllFlagsRequest()
        bad = _request(message, context, "")
        if bad is not None:
            return bad
        result = await api.call(
            "FlagService",
            "EvaluateAll",
            "http",
            request.headers,
            bulk_route.handler,
            message,
            caller(request),
        )
        if result.error is not None:
            return _rpc_error("", result.error)
        assert isinstance(result.response, flags_pb2.EvaluateAllFlagsResponse)
        response = result.response
        digest = hashlib.sha256(
            json.dumps(
                [response.revision, flags.region, context], sort_keys=True, default=str
            ).encode()
        ).hexdigest()[:32]
        etag = f'"{digest}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        out = []
        for e in response.evaluations:
            if e.error_code:
                out.append(_error_json(e.key, e.error_code, e.error_details))
            else:
                out.append(_evaluation_json(e, flags))
        return web.json_response({"flags": out, "metadata": {}}, headers={"ETag": etag})

    return single, bulk
