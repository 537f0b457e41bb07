"""HTTP/JSON control API for the sandbox WAN emulator, and its async client.

Endpoints (all JSON):

* ``GET  /v1/wan``            → :meth:`WanEmulator.snapshot`
* ``PUT  /v1/wan/latency``    ``{"a", "b", "latency_ms", "jitter_ms"?, "one_way"?}``
* ``POST /v1/wan/partition``  ``{"region", "peers"?: null|[...], "direction"?}``
* ``POST /v1/wan/heal``       ``{"region"?: null|str}`` → ``{"reset": n}``
* ``POST /v1/wan/reset``      ``{"region"?: null|str, "peer"?: null|str}`` → ``{"reset": n}``

Mutating endpoints other than heal and reset answer with the new snapshot.
Bad input (malformed JSON, a body over 64 KiB, unknown fields, wrong types,
unknown regions, out-of-range numbers) answers HTTP 400 with
``{"error": {"code": "INVALID_ARGUMENT", "field": ..., "message": ...}}`` and
changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
from aiohttp import web

from meridian.core.errors import ErrorCode, InvalidArgumentError, UnavailableError
from meridian.sandbox.wan import WanArgumentError, WanEmulator

__all__ = [
    "DEFAULT_CONTROL_PORT",
    "MAX_BODY_BYTES",
    "WanClient",
    "WanControlServer",
    "WanUnreachableError",
]

_log = logging.getLogger(__name__)

DEFAULT_CONTROL_PORT: Final = 8474
"""Toxiproxy's conventional control port; the sandbox may choose another."""
MAX_BODY_BYTES: Final = 64 * 1024
"""Largest request body the control server reads."""

_Body = dict[str, object]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WanUnreachableError(UnavailableError, ConnectionError):
    """The WAN emulator's control API could not be reached."""


def _error_response(exc: InvalidArgumentError) -> web.Response:
    return web.json_response(
        {
            "error": {
                "code": str(ErrorCode.INVALID_ARGUMENT),
                "field": exc.field,
                "message": str(exc),
            }
        },
        status=400,
    )


@web.middleware
async def _invalid_argument_to_400(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidArgumentError as exc:
        _log.info("WAN control %s %s rejected: %s", request.method, request.path, exc)
        return _error_response(exc)


async def _read_body(request: web.Request, allowed: tuple[str, ...]) -> _Body:
    """Read at most MAX_BODY_BYTES of JSON object whose keys are all in ``allowed``."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise WanArgumentError(
            "body", f"must be at most {MAX_BODY_BYTES} bytes, got {request.content_length}"
        )
    raw = bytearray()
    while chunk := await request.content.read(MAX_BODY_BYTES + 1 - len(raw)):
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise WanArgumentError("body", f"must be at most {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise WanArgumentError("body", f"must be valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise WanArgumentError("body", f"must be a JSON object, got {type(body).__name__}")
    for key in body:
        if key not in allowed:
            raise WanArgumentError(key, f"unknown field; allowed fields are {', '.join(allowed)}")
    return body


def _required(body: _Body, field: str) -> object:
    if field not in body or body[field] is None:
        raise WanArgumentError(field, "is required")
    return body[field]


def _optional_str(body: _Body, field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise WanArgumentError(field, f"must be a string or null, got {type(value).__name__}")
    return value


class WanControlServer:
    """Serves the control API for ``emulator`` on ``host:port`` (``port=0`` picks a free one).

    Must run on the emulator's event loop. ``start()`` returns once the
    socket is bound; ``aclose()`` is idempotent and stops serving. The
    emulator itself is not closed: its owner closes it.
    """

    def __init__(
        self, emulator: WanEmulator, host: str = "127.0.0.1", port: int = DEFAULT_CONTROL_PORT
    ) -> None:
        self._emulator = emulator
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The bound port. Raises RuntimeError before ``start()``."""
        if self._bound_port is None:
            raise RuntimeError("WanControlServer is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8474``."""
        return f"http://{self._host}:{self.port}"

    async def __aenter__(self) -> WanControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[_invalid_argument_to_400])
        app.router.add_get("/v1/wan", self._get)
        app.router.add_put("/v1/wan/latency", self._latency)
        app.router.add_post("/v1/wan/partition", self._partition)
        app.router.add_post("/v1/wan/heal", self._heal)
        app.router.add_post("/v1/wan/reset", self._reset)
        return app

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            OSError: the address could not be bound (names it).
            RuntimeError: already started or closed.
        """
        if self._runner is not None or self._closed:
            raise RuntimeError("WanControlServer.start() may be called once")
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except OSError as exc:
            await self.aclose()
            raise OSError(
                exc.errno,
                f"WAN control API cannot listen on {self._host}:{self._port}: "
                f"{exc.strerror or exc}",
            ) from exc
        except BaseException:
            await self.aclose()
            raise
        self._bound_port = int(runner.addresses[0][1])
        _log.info("WAN control API listening on %s", self.url)

    async def aclose(self) -> None:
        """Stop serving. Idempotent."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self._emulator.snapshot())

    async def _latency(self, request: web.Request) -> web.Response:
        body = await _read_body(request, ("a", "b", "latency_ms", "jitter_ms", "one_way"))
        one_way = body.get("one_way", False)
        if not isinstance(one_way, bool):
            raise WanArgumentError("one_way", f"must be a boolean, got {type(one_way).__name__}")
        self._emulator.set_latency(
            _required(body, "a"),  # type: ignore[arg-type]  # validated by the matrix
            _required(body, "b"),  # type: ignore[arg-type]
            _required(body, "latency_ms"),  # type: ignore[arg-type]
            body.get("jitter_ms"),  # type: ignore[arg-type]
            one_way=one_way,
        )
        return web.json_response(self._emulator.snapshot())

    async def _partition(self, request: web.Request) -> web.Response:
        body = await _read_body(request, ("region", "peers", "direction"))
        peers = body.get("peers")
        if peers is not None and not isinstance(peers, list):
            raise WanArgumentError("peers", f"must be a list or null, got {type(peers).__name__}")
        self._emulator.partition(
            _required(body, "region"),  # type: ignore[arg-type]  # validated by the table
            peers=peers,
            direction=body.get("direction", "both"),  # type: ignore[arg-type]
        )
        return web.json_response(self._emulator.snapshot())

    async def _heal(self, request: web.Request) -> web.Response:
        body = await _read_body(request, ("region",))
        return web.json_response({"reset": self._emulator.heal(_optional_str(body, "region"))})

    async def _reset(self, request: web.Request) -> web.Response:
        body = await _read_body(request, ("region", "peer"))
        region = _optional_str(body, "region")
        peer = _optional_str(body, "peer")
        return web.json_response({"reset": await self._emulator.reset(region, peer=peer)})


class WanClient:
    """Async client for :class:`WanControlServer` at ``base_url``.

    Use as an async context manager (or call ``aclose()``, idempotent).

    Raises, from every operation:
        WanArgumentError: (a ``ValueError``) the server rejected the input; the
            message names the field and the rule.
        WanUnreachableError: (a ``ConnectionError``) nothing answers at
            ``base_url``: the sandbox WAN emulator is not running.
        RuntimeError: any other unexpected answer, or use after ``aclose()``.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> WanClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def snapshot(self) -> dict[str, Any]:
        """The emulator's state (see :meth:`WanEmulator.snapshot`)."""
        return await self._call("GET", "/v1/wan", None)

    async def set_latency(
        self,
        a: str,
        b: str,
        latency_ms: float,
        jitter_ms: float | None = None,
        one_way: bool = False,
    ) -> dict[str, Any]:
        """Set a→b (and b→a unless ``one_way``) latency; returns the new snapshot."""
        body = {"a": a, "b": b, "latency_ms": latency_ms, "jitter_ms": jitter_ms}
        return await self._call("PUT", "/v1/wan/latency", {**body, "one_way": one_way})

    async def partition(
        self, region: str, peers: list[str] | None = None, direction: str = "both"
    ) -> dict[str, Any]:
        """Partition ``region`` from ``peers`` (all when None); returns the new snapshot."""
        body = {"region": region, "peers": peers, "direction": direction}
        return await self._call("POST", "/v1/wan/partition", body)

    async def heal(self, region: str | None = None) -> int:
        """Heal ``region`` (all when None); returns how many poisoned connections were reset."""
        return int((await self._call("POST", "/v1/wan/heal", {"region": region}))["reset"])

    async def reset(self, region: str | None = None, peer: str | None = None) -> int:
        """Reset live connections touching ``region`` (and ``peer``); returns how many."""
        body = {"region": region, "peer": peer}
        return int((await self._call("POST", "/v1/wan/reset", body))["reset"])

    async def _call(
        self, method: str, path: str, body: Mapping[str, object] | None
    ) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError("WanClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = self._base_url + path
        try:
            async with self._session.request(method, url, json=body) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except TimeoutError as exc:
            raise WanUnreachableError(
                f"{url} did not answer in {self._timeout.total}s: is the WAN emulator stuck?"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise WanUnreachableError(
                f"cannot reach {url}: the sandbox WAN emulator is not running ({exc})"
            ) from exc
        except ValueError as exc:
            raise RuntimeError(f"{method} {url} answered with a body that is not JSON") from exc
        if status == 400 and isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            error = payload["error"]
            field = str(error.get("field", "body"))
            message = str(error.get("message", ""))
            raise WanArgumentError(field, message.removeprefix(f"{field}: "))
        if status != 200 or not isinstance(payload, dict):
            raise RuntimeError(f"{method} {url} answered HTTP {status}: {payload!r}")
        return payload
