"""The agent's connection to its own region's NATS cluster.

:func:`translate_nats_errors` is the one place nats-py exceptions become
Meridian errors (httpx's ``map_httpcore_exceptions`` is the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from meridian.core.errors import DeadlineExceededError, MeridianError, UnavailableError
from meridian.core.redact import redact

log = logging.getLogger(__name__)

__all__ = [
    "NATS_FAILURES",
    "BackboneConnection",
    "Msg",
    "PubAck",
    "connect_once",
    "ensure_until_done",
    "translate_nats_errors",
]

#: What a call to NATS can fail with when the server or the path to it is not
#: well: callers that only report the failure catch these, not nats-py's tree.
NATS_FAILURES: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError)


def reraise_if_cancelling() -> None:
    """Raise CancelledError if the current task has a cancellation pending.

    nats-py awaits ``asyncio.wait_for`` internally, and on Python 3.11 that can
    swallow a cancellation that races with the reply. Loops that call nats-py
    check this after each call so that shutdown can't be lost.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def ensure_until_done(
    conn: BackboneConnection,
    ensure: Callable[[], Awaitable[object]],
    what: str,
    *,
    retry_s: float = 1.0,
) -> None:
    """Wait for NATS, then call ``ensure`` until it succeeds.

    Components whose streams or buckets must exist before they serve (events,
    the registry, idempotency, keyspaces) retry until JetStream can make them;
    until then their calls fail UNAVAILABLE. Each failure is logged once per try.
    """
    while True:
        try:
            await conn.wait_connected()
            await ensure()
            reraise_if_cancelling()  # a cancellation the last request swallowed
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # JetStream not there yet: tried again
            reraise_if_cancelling()
            log.warning("%s not ready (%s); retrying in %.1fs", what, exc, retry_s)
            await asyncio.sleep(retry_s)


async def retry_forever(
    what: str, step: Callable[[], Awaitable[object]], *, retry_s: float = 1.0
) -> None:
    """Run ``step`` again, ``retry_s`` after each failure, until cancelled: the
    loop of a component's feed or follower, which must never kill the agent.
    Each failure is logged as a warning naming ``what``."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # NATS or the quorum is away: try again
            reraise_if_cancelling()
            log.warning("%s stopped (%s); retrying in %.1fs", what, exc, retry_s)
        await asyncio.sleep(retry_s)


@contextlib.contextmanager
def translate_nats_errors(
    what: str,
    *,
    unreachable: type[MeridianError] = UnavailableError,
    timeout: type[MeridianError] = DeadlineExceededError,
) -> Iterator[None]:
    """Re-raise nats-py failures during ``what`` as Meridian errors, chained to the original.

    ``unreachable`` is raised when no JetStream leader answers (no responders, 503)
    and ``timeout`` when nothing answers in time; a ``global`` keyspace passes
    QuorumUnavailableError for both. A lost NATS connection is always
    UnavailableError. Other JetStream API errors (a lost compare-and-set, a
    missing message) pass through for the caller, who knows what they mean.
    """
    try:
        yield
    except MeridianError:
        raise
    except (TimeoutError, nats.errors.TimeoutError, nats.js.errors.FetchTimeoutError) as exc:
        raise timeout(
            f"{what}: no answer in time; a write may or may not have been applied"
        ) from exc
    except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
        raise unreachable(f"{what}: no JetStream leader is reachable") from exc
    except nats.js.errors.ServiceUnavailableError as exc:
        raise unreachable(f"{what}: JetStream is temporarily unavailable") from exc
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.NoServersError,
        nats.errors.StaleConnectionError,
        nats.errors.OutboundBufferLimitError,
    ) as exc:
        raise UnavailableError(
            f"{what}: NATS connection unavailable ({type(exc).__name__})"
        ) from exc
    except OSError as exc:
        raise UnavailableError(f"{what}: {exc}") from exc


#: JetStream's "stream name already in use" (a stream of that name exists).
STREAM_NAME_IN_USE = 10058


async def add_stream_if_missing(js: JetStreamContext, config: Any) -> bool:
    """Create the stream ``config`` describes unless one of that name exists
    (whatever its configuration); whether this call made it."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        return False
    return True


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: without one it logs every failed attempt with a
    traceback; the failure that matters is the one ``connect`` raises."""


async def connect_once(
    urls: Sequence[str], *, tls: ssl.SSLContext | None, timeout_s: float = 5.0
) -> Client:
    """A tool's connection: each server tried once, within ``2 * timeout_s``.

    nats-py 2.16 retries a refused first connect for ever with
    ``max_reconnect_attempts=0`` (``meridian audit verify`` hung with NATS
    down); 1 gives up with NoServersError, and the deadline bounds the rest.
    Raises what nats-py raises, or TimeoutError."""
    async with asyncio.timeout(2 * timeout_s):
        return await nats.connect(
            servers=list(urls),
            tls=tls,
            connect_timeout=timeout_s,
            max_reconnect_attempts=1,
            allow_reconnect=False,
            error_cb=_quiet,
        )


@dataclass(frozen=True)
class ServerIdentity:
    url: str
    name: str
    cluster: str
    version: str


class BackboneConnection:
    """A reconnecting NATS connection. Use as an async context manager.

    ``connect()`` waits for the first connection up to ``connect_timeout_s``
    and raises :class:`UnavailableError` naming the URLs if there is none.
    Afterwards nats-py reconnects forever; ``connected`` says how it is now.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        name: str,
        connect_timeout_s: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: the context for servers that require TLS (our certificate for
        verify_and_map, their chain checked against the bundle); nats-py upgrades
        a connection only when the server asks for it."""
        self.urls = list(urls)
        self.tls = tls
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self._nc: Client | None = None
        self.last_error = ""
        self._closed = False
        self._connected = asyncio.Event()
        self._js: dict[float, JetStreamContext] = {}
        self._js_nc: Client | None = None

    def use_tls(self, context: ssl.SSLContext) -> None:
        """Handshake with ``context`` from the next (re)connect on: a renewed
        certificate, a bundle that gained or lost a root. nats-py reads the
        context from its options at every connect."""
        self.tls = context
        for nc in {id(c): c for c in (self._nc, self._js_nc) if c is not None}.values():
            nc.options["tls"] = context

    async def connect(self) -> None:
        """Connect once; raise :class:`UnavailableError` naming the URLs on failure."""

        async def on_error(exc: Exception) -> None:
            self.last_error = redact(f"{type(exc).__name__}: {exc}")
            log.warning("nats error: %s", self.last_error)

        async def on_disconnect() -> None:
            self.last_error = "disconnected from NATS; reconnecting"
            log.warning(self.last_error)

        async def on_reconnect() -> None:
            self.last_error = ""
            log.info("reconnected to NATS at %s", self.server.url)

        try:
            async with asyncio.timeout(self.connect_timeout_s):
                self._nc = await nats.connect(
                    self.urls,
                    name=self.name,
                    connect_timeout=2,
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    ping_interval=5,
                    max_outstanding_pings=2,
                    allow_reconnect=True,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    tls=self.tls,
                )
        except NATS_FAILURES as exc:
            self.last_error = redact(f"cannot connect to NATS at {', '.join(self.urls)}: {exc!r}")
            raise UnavailableError(self.last_error) from exc
        self.last_error = ""
        self._connected.set()

    async def connect_forever(self, *, backoff_s: float = 1.0) -> None:
        """Retry :meth:`connect` until it succeeds (the region's servers may still be
        starting); nats-py reconnects by itself after the first success."""
        while not self._closed:
            try:
                await self.connect()
                return
            except UnavailableError as exc:
                log.warning("%s; retrying in %.1fs", exc.message, backoff_s)
                await asyncio.sleep(backoff_s)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise UnavailableError("NATS connection not established")
        return self._nc

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def server(self) -> ServerIdentity:
        nc = self.nc
        info: dict[str, Any] = getattr(nc, "_server_info", {}) or {}
        url = redact(nc.connected_url.geturl()) if nc.connected_url else ""
        return ServerIdentity(
            url=url,
            name=str(info.get("server_name", "")),
            cluster=str(info.get("cluster", "")),
            version=str(info.get("version", "")),
        )

    def jetstream(self, timeout_s: float) -> JetStreamContext:
        """A JetStream context with this default timeout, made once per timeout."""
        nc = self.nc
        js = self._js.get(timeout_s)
        if js is None or self._js_nc is not nc:
            if self._js_nc is not nc:
                self._js.clear()
                self._js_nc = nc
            js = self._js[timeout_s] = nc.jetstream(timeout=timeout_s)
        return js

    async def rtt_ms(self, timeout_s: float) -> float:
        """Round trip to the connected server (a PING/PONG flush)."""
        start = time.perf_counter()
        with translate_nats_errors("NATS flush"):
            await self.nc.flush(timeout=max(1, round(timeout_s)))
        return (time.perf_counter() - start) * 1000

    async def drain(self) -> None:
        """Stop taking new messages and let subscriptions finish what they hold."""
        if self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await self._nc.drain()

    async def aclose(self) -> None:
        """Close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.close()

    async def __aenter__(self) -> BackboneConnection:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
