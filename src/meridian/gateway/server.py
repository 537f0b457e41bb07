"""The gateway: an HTTP reverse proxy in front of every region's agent.

Every request except the gateway's own endpoints goes to one region's agent
(its ``http_url``) with the same method, path, query, headers (less the
hop-by-hop ones) and body; the answer is streamed back as it arrives, so
Server-Sent Events (``/v1/state/watch``) pass through, and gains a
``Meridian-Gateway-Region`` header naming the region that served it.

Which region: :meth:`HealthBoard.choose` (see :mod:`meridian.gateway.model`) over
the regions in rotation, given the request's hint header (``Meridian-Region``
by default). If a region cannot be connected to (the request never reached
it), it is taken out of rotation at once and the next region is tried; any
other failure before the answer's headers is a 502, and no region in rotation
a 503, both with the agents' error body ``{"error": {"code": "UNAVAILABLE",
"message": ...}}``. A hint that is not a region name is a 400 INVALID_ARGUMENT
naming the header; a well-formed hint naming no configured region is not an
error (the request goes to the nearest region).

Own endpoints: ``GET /gateway/status`` (every region's state, JSON),
``GET /gateway/health`` (200 while a region is up, else 503) and
``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from yarl import URL

from meridian.config import MeridianConfig
from meridian.config.model import GatewayConfig
from meridian.core.errors import (
    FieldViolation,
    InvalidArgumentError,
    MeridianError,
    PermissionDeniedError,
    UnavailableError,
)
from meridian.core.paths import refusal
from meridian.gateway.health import Clock, HealthChecker, describe
from meridian.gateway.metrics import NO_REGION, GatewayMetrics
from meridian.gateway.model import HealthBoard, Latency, Transition, parse_hint
from meridian.security.tls import ClientTls, ReloadingContext, TlsFiles, front_door_context
from meridian.transport.errors import error_body

log = logging.getLogger(__name__)

#: The response header naming the region that served a proxied request.
REGION_RESPONSE_HEADER = "Meridian-Gateway-Region"

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Host names the gateway, not the agent; Expect: 100-continue was answered here.
_REQUEST_DROP = HOP_BY_HOP | {"host", "expect"}
# Headers aiohttp's client would add to a request that lacks them: it must not.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

#: Default grace for requests in flight (long streams included) at shutdown.
SHUTDOWN_GRACE_S = 5.0
#: Default limit on the wait for an agent's status and headers (not on a body or a
#: stream, which may go on): a frozen agent accepts connections but never answers.
ANSWER_TIMEOUT_S = 30.0


def local_url(host: str, port: int, *, tls: bool = False) -> str:
    """Where a client on this machine reaches a gateway listening on ``host:port``."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def _without_hop_by_hop(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    # A header named in Connection is hop-by-hop too.
    named = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        key = name.lower()
        if key not in drop and key not in named:
            out.add(name, value)
    return out


class Gateway:
    """One gateway process's server, health checker and client session.

    ``targets`` maps each region to its agent's base URL; ``latency_ms`` is the
    configured one-way WAN latency between two regions; ``answer_timeout_s``
    bounds the wait for an agent's status and headers (a 502 after it).
    ``start()`` returns once every region has been checked once and the port is
    bound; ``aclose()`` stops taking requests, lets those in flight finish
    within ``grace_s`` (then cancels them), stops checking and closes the
    session. It is idempotent. As an async context manager the gateway starts on
    entry and closes on exit.
    """

    def __init__(
        self,
        settings: GatewayConfig,
        targets: Mapping[str, str],
        latency_ms: Latency,
        *,
        host: str | None = None,
        port: int | None = None,
        grace_s: float = SHUTDOWN_GRACE_S,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        clock: Clock = time.monotonic,
        upstream_tls: ClientTls | None = None,
        server_tls: ReloadingContext | None = None,
    ) -> None:
        self.settings = settings
        #: HTTPS towards clients (the gateway's certificate, no client certificate
        #: asked for); None: plain HTTP (insecure mode).
        self.server_tls = server_tls
        #: The gateway's own identity towards agents (mutual TLS); None: plaintext.
        self.upstream_tls = upstream_tls
        self.targets = {region: url.rstrip("/") for region, url in targets.items()}
        self.latency_ms = latency_ms
        self.host = settings.host if host is None else host
        self.port = settings.port if port is None else port
        self.grace_s = grace_s
        self.answer_timeout_s = answer_timeout_s
        self.clock = clock
        self.board = HealthBoard(
            list(self.targets), unhealthy_after=settings.unhealthy_after, now=clock()
        )
        self.metrics = GatewayMetrics(self.targets)
        self._connect_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.health_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._health: asyncio.Task[None] | None = None
        self._closed = False
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()

    @classmethod
    def from_config(
        cls, config: MeridianConfig, *, host: str | None = None, port: int | None = None
    ) -> Self:
        """A gateway in front of every region of ``config``."""
        files = TlsFiles.in_folder(config.gateway_tls_dir) if config.security.tls else None
        return cls(
            config.gateway,
            {r.name: r.http_url for r in config.regions},
            config.latency,
            host=host,
            port=port,
            upstream_tls=ClientTls(files) if files else None,
            server_tls=ReloadingContext(files, front_door_context) if files else None,
        )

    @property
    def url(self) -> str:
        """The gateway's base URL (after ``start()`` if it was asked for port 0)."""
        return local_url(self.host, self.port, tls=self.server_tls is not None)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Check every region once, then bind and serve. Raises UnavailableError if the
        port cannot be bound (nothing is left running then)."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        checker = HealthChecker(
            self._session,
            self.targets,
            self.board,
            self.metrics,
            interval_s=self.settings.health_interval_s,
            timeout_s=self.settings.health_timeout_s,
            clock=self.clock,
            on_transition=self._transition,
            upstream_tls=self.upstream_tls,
        )
        try:
            # The first answer should already know which regions are up.
            await checker.check_all()
            app = web.Application()
            app.router.add_route("*", "/gateway/status", self._own(self._status))
            app.router.add_route("*", "/gateway/health", self._own(self._healthz))
            app.router.add_route("*", "/metrics", self._own(self._metrics))
            app.router.add_route("*", "/{tail:.*}", self._proxy)
            self._runner = web.AppRunner(
                app,
                access_log=None,
                handle_signals=False,
                handler_cancellation=True,
                shutdown_timeout=self.grace_s,
            )
            await self._runner.setup()
            site = web.TCPSite(
                self._runner,
                self.host,
                self.port,
                reuse_address=True,
                ssl_context=self.server_tls.outer if self.server_tls else None,
            )
            try:
                await site.start()
            except OSError as exc:
                raise UnavailableError(
                    f"gateway cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
                ) from exc
        except BaseException:
            await self.aclose()
            raise
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        self._health = asyncio.create_task(checker.run(), name="gateway-health")

    async def aclose(self) -> None:
        """Stop intake, drain within ``grace_s``, stop checking, close the session."""
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            await self._runner.cleanup()
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Serve until :meth:`request_stop` or SIGTERM/SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            log.info(
                "gateway ready",
                extra={"url": self.url, "regions": self.targets, "up": self.board.up()},
            )
            self.ready.set()
            await self._stop.wait()
            log.info("gateway stopping")
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await self.aclose()
            log.info("gateway stopped")

    # -- health --------------------------------------------------------------

    def _transition(self, t: Transition) -> None:
        self.metrics.region_up.labels(t.region).set(1 if t.up else 0)
        if t.up:
            log.info("region up", extra={"target_region": t.region, "reason": t.reason})
        else:
            log.warning("region down", extra={"target_region": t.region, "reason": t.reason})

    # -- proxying ------------------------------------------------------------

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        arrived = self.clock()
        refused = refusal(request.raw_path.split("?", 1)[0], self.settings.allow)
        if refused is not None:
            return self._refuse(PermissionDeniedError(refused), 403, arrived)
        header = self.settings.region_header
        try:
            hint = parse_hint(request.headers.getall(header, []), header)
        except InvalidArgumentError as exc:
            return self._refuse(exc, 400, arrived)
        order = self.board.choose(hint, self.latency_ms)
        if not order:
            return self._refuse(
                UnavailableError(f"no region is up: {self._why_down()}"), 503, arrived
            )
        meant = hint if hint in self.targets else order[0]
        assert self._session is not None
        headers = self._upstream_headers(request)
        body = request.content if request.body_exists else None
        tried: list[str] = []
        for region in order:
            url = URL(self.targets[region] + request.raw_path, encoded=True)
            started = self.clock()
            try:
                async with asyncio.timeout(self.answer_timeout_s):
                    upstream = await self._session.request(
                        request.method,
                        url,
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        skip_auto_headers=_NO_AUTO_HEADERS,
                        timeout=self._connect_timeout,
                        ssl=self.upstream_tls.current() if self.upstream_tls else True,
                    )
            except aiohttp.ClientConnectorError as exc:
                # Not connected: the request never reached the region, so trying the
                # next one cannot run it twice.
                tried.append(f"{region}: {describe(exc)}")
                self._record(self.board.record_unreachable, region, describe(exc), started)
                continue
            except aiohttp.ConnectionTimeoutError as exc:
                tried.append(f"{region}: {describe(exc)}")
                self._record(self.board.record_failure, region, describe(exc), started)
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Sent, perhaps in part: it may have run, so no other region may run it.
                why = (
                    f"no answer within {self.answer_timeout_s:g}s"
                    if type(exc) is TimeoutError
                    else describe(exc)
                )
                log.warning(
                    "proxied request failed",
                    extra={"target_region": region, "path": request.path, "error": why},
                )
                return self._refuse(
                    UnavailableError(f"region {region} failed to answer: {why}"),
                    502,
                    arrived,
                    region,
                )
            try:
                if region != meant:
                    self.metrics.failovers.labels(meant, region).inc()
                return await self._relay(request, upstream, region, arrived)
            finally:
                upstream.release()
        return self._refuse(
            UnavailableError(f"no region could be reached: {'; '.join(tried)}"), 503, arrived
        )

    def _record(
        self,
        record: Callable[..., Transition | None],
        region: str,
        error: str,
        started: float,
    ) -> None:
        transition = record(region, error, self.clock(), started=started)
        if transition is not None:
            self._transition(transition)

    def _upstream_headers(self, request: web.Request) -> CIMultiDict[str]:
        headers = _without_hop_by_hop(request.headers, _REQUEST_DROP)
        if request.remote:
            previous = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = (
                f"{previous}, {request.remote}" if previous else request.remote
            )
        headers.setdefault("X-Forwarded-Host", request.host)
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        return headers

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        region: str,
        arrived: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(_without_hop_by_hop(upstream.headers, HOP_BY_HOP))
        response.headers[REGION_RESPONSE_HEADER] = region
        await response.prepare(request)
        self.metrics.request_seconds.labels(region).observe(self.clock() - arrived)
        self.metrics.requests.labels(region, str(upstream.status)).inc()
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status is sent: all that is left is to cut the client off, so it
            # sees a truncated answer rather than a complete-looking one.
            log.warning(
                "upstream broke off mid-answer",
                extra={"target_region": region, "path": request.path, "error": describe(exc)},
            )
            if request.transport is not None:
                request.transport.abort()
            return response
        except ConnectionResetError:
            return response  # the client went away
        await response.write_eof()
        return response

    def _refuse(
        self, error: MeridianError, status: int, arrived: float, region: str = NO_REGION
    ) -> web.Response:
        self.metrics.request_seconds.labels(region).observe(self.clock() - arrived)
        self.metrics.requests.labels(region, str(status)).inc()
        return web.json_response(error_body(error), status=status)

    def _why_down(self) -> str:
        return "; ".join(f"{h.region}: {h.last_error}" for h in self.board.snapshot())

    # -- own endpoints -------------------------------------------------------

    @staticmethod
    def _own(
        handler: Callable[[web.Request], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            if request.method not in ("GET", "HEAD"):
                error = InvalidArgumentError(
                    FieldViolation("method", f"{request.path} answers GET and HEAD only")
                )
                return web.json_response(
                    error_body(error), status=405, headers={"Allow": "GET, HEAD"}
                )
            return await handler(request)

        return route

    def status(self) -> dict[str, Any]:
        """What ``GET /gateway/status`` answers: the settings and every region's state."""
        mono, wall = self.clock(), time.time()
        regions = []
        for h in self.board.snapshot():
            since = wall - (mono - h.since)
            regions.append(
                {
                    "region": h.region,
                    "url": self.targets[h.region],
                    "up": h.up,
                    "rtt_ms": None if h.rtt_ms is None else round(h.rtt_ms, 3),
                    "consecutive_failures": h.consecutive_failures,
                    "last_error": h.last_error,
                    "since": datetime.fromtimestamp(since, UTC).isoformat(timespec="milliseconds"),
                    "for_s": round(mono - h.since, 3),
                }
            )
        return {
            "gateway": {
                "url": self.url,
                "region_header": self.settings.region_header,
                "health_interval_s": self.settings.health_interval_s,
                "health_timeout_s": self.settings.health_timeout_s,
                "unhealthy_after": self.settings.unhealthy_after,
            },
            "regions": regions,
        }

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _healthz(self, request: web.Request) -> web.Response:
        up = self.board.up()
        body = {"status": "SERVING" if up else "NOT_SERVING", "regions_up": up}
        return web.json_response(body, status=200 if up else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
