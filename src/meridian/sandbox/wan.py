"""WAN emulator for the local multi-region sandbox.

Every TCP connection between sandbox regions (NATS routes and gateways) is
dialled through a proxy owned by :class:`WanEmulator`. The model follows
Toxiproxy: a *proxy* listens on loopback and forwards to one upstream; the
*upstream* direction is client→server, the *downstream* direction is
server→client. A proxy described by ``ProxySpec(src="us-east", dst="eu-west")``
is dialled by us-east servers and forwards to an eu-west server, so its
upstream direction carries us-east→eu-west traffic and its downstream
direction carries eu-west→us-east traffic.

The pure parts (:class:`LatencyMatrix`, :class:`PartitionTable`,
:class:`DeliverySchedule`) do no I/O and are unit-tested on their own.

Bad arguments raise :class:`WanArgumentError`, which is both a
:class:`meridian.core.errors.InvalidArgumentError` and a :class:`ValueError`;
its message names the field and the rule, and nothing is changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from meridian.sandbox.gossip import GossipFilter
from meridian.sandbox.wan_model import (
    MAX_JITTER_MS,
    MAX_LATENCY_MS,
    DeliverySchedule,
    Direction,
    LatencyMatrix,
    Pair,
    PartitionTable,
    ProxySpec,
    WanArgumentError,
    check_region,
)
from meridian.sandbox.wan_tls import LinkRefused

__all__ = [
    "MAX_JITTER_MS",
    "MAX_LATENCY_MS",
    "DeliverySchedule",
    "Direction",
    "LatencyMatrix",
    "PartitionTable",
    "ProxySpec",
    "WanArgumentError",
    "WanEmulator",
]

_log = logging.getLogger(__name__)

_READ_SIZE: Final = 64 * 1024
# Chunks buffered per direction before the proxy stops reading (at most 16 MiB);
# past that the kernel's TCP window pushes back on the sender.
_QUEUE_CHUNKS: Final = 256
_DIAL_TIMEOUT_S: Final = 5.0

# (due time on the loop clock, chunk); a None chunk is the peer's EOF.
_ChunkQueue = asyncio.Queue[tuple[float, bytes | None]]


class _PipeClosed(Exception):
    """Ends a connection's pumps; ``graceful`` is False for a transport error."""

    def __init__(self, graceful: bool) -> None:
        super().__init__("graceful" if graceful else "error")
        self.graceful = graceful


@dataclass
class _Stats:
    active_connections: int = 0
    total_connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0


class _Proxy:
    def __init__(self, spec: ProxySpec) -> None:
        self.spec = spec
        self.up: Pair = (spec.src, spec.dst)
        self.down: Pair = (spec.dst, spec.src)
        self.stats = _Stats()
        self.server: asyncio.Server | None = None
        self.port: int | None = None

    def touches(self, region: str | None, peer: str | None) -> bool:
        ends = (self.spec.src, self.spec.dst)
        return (region is None or region in ends) and (peer is None or peer in ends)


class _Conn:
    def __init__(self, proxy: _Proxy, client: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.held = False  # accepted while upstream blocked: never dialled
        self.poisoned = False  # bytes (or a FIN) were dropped: the stream is corrupt
        self.dead = False  # kill() was called; the task is finishing

    def kill(self) -> None:
        """Abort both sockets with RST and cancel the pump task. Safe to repeat."""
        self.dead = True
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)
        if self.task is not None:
            self.task.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) where the platform allows, discarding buffers."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class WanEmulator:
    """Asyncio TCP proxies with per-link latency, jitter, partitions and resets.

    Guarantees:

    * Upstream chunks are delayed by ``matrix.latency(src, dst)`` ± jitter,
      downstream chunks by ``matrix.latency(dst, src)`` ± jitter, sampled when
      the chunk arrives (so a change applies to chunks arriving afterwards).
      Bytes are never reordered. A bounded queue per direction and
      ``drain()`` keep TCP backpressure end to end.
    * A blocked direction is a black hole: bytes read are dropped (counted in
      ``dropped_up``/``dropped_down``), chunks already in flight when the
      partition starts are lost too, an EOF or reset is not passed on, and the
      connection stays open.
    * A connection accepted while its proxy's upstream direction is blocked is
      held: accepted, never dialled upstream, its bytes read and dropped.
    * :meth:`heal` resets (RST) every connection that lost data, and every held
      connection, once neither of its directions is blocked any more: their
      byte streams are corrupt, and NATS reconnects by itself.
    * When either side closes cleanly, the other side is closed after what is
      already queued in that direction is delivered. A transport error on one
      side aborts the other.
    * Every task is tracked and cancelled by :meth:`aclose`.

    Raises:
        WanArgumentError: a proxy names an unknown region, links a region to
            itself, repeats a name, or has a port out of range.
    """

    def __init__(
        self,
        matrix: LatencyMatrix,
        proxies: Sequence[ProxySpec],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.matrix = matrix
        self.partitions = PartitionTable(matrix.regions)
        self._rng = rng if rng is not None else random.Random()
        self._proxies: dict[str, _Proxy] = {}
        for i, spec in enumerate(proxies):
            field = f"proxies[{i}]"
            if spec.name in self._proxies:
                raise WanArgumentError(f"{field}.name", f"duplicate proxy name {spec.name!r}")
            src = check_region(matrix.regions, f"{field}.src", spec.src)
            if check_region(matrix.regions, f"{field}.dst", spec.dst) == src:
                raise WanArgumentError(f"{field}.dst", f"must differ from src ({src!r})")
            for attr in ("listen_port", "upstream_port"):
                port = getattr(spec, attr)
                lowest = 0 if attr == "listen_port" else 1
                valid = isinstance(port, int) and not isinstance(port, bool)
                if not valid or not lowest <= port <= 65535:
                    raise WanArgumentError(
                        f"{field}.{attr}", f"must be an integer in [{lowest}, 65535], got {port!r}"
                    )
            self._proxies[spec.name] = _Proxy(spec)
        self._conns: set[_Conn] = set()
        self._state: Literal["new", "started", "closed"] = "new"

    async def __aenter__(self) -> WanEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind every proxy's listener. Returns once all are accepting.

        Raises:
            OSError: a bind failed; the message names the proxy and address.
                Listeners already bound are closed and the emulator is closed.
            RuntimeError: ``start()`` was already called.
        """
        if self._state != "new":
            raise RuntimeError(f"WanEmulator.start() called when {self._state}")
        self._state = "started"
        try:
            for proxy in self._proxies.values():
                await self._listen(proxy)
        except BaseException:
            await self.aclose()
            raise
        _log.info(
            "WAN emulator listening: %s",
            ", ".join(
                f"{p.spec.name}@{p.spec.listen_host}:{p.port}" for p in self._proxies.values()
            ),
        )

    async def _listen(self, proxy: _Proxy) -> None:
        spec = proxy.spec

        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._accept(proxy, reader, writer)

        try:
            server = await asyncio.start_server(accept, spec.listen_host, spec.listen_port)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"WAN proxy {spec.name!r} cannot listen on {spec.listen_host}:{spec.listen_port}: "
                f"{exc.strerror or exc}",
            ) from exc
        proxy.server = server
        proxy.port = int(server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening and reset every live connection. Idempotent.

        Returns once every connection task has finished.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        servers = [p.server for p in self._proxies.values() if p.server is not None]
        for server in servers:
            server.close()
        await self._kill([c for c in self._conns])
        for server in servers:
            await server.wait_closed()

    def bound_port(self, name: str) -> int:
        """The port proxy ``name`` listens on.

        Raises:
            KeyError: no proxy has that name.
            RuntimeError: the proxy is not listening (before ``start()``).
        """
        port = self._proxy(name).port
        if port is None:
            raise RuntimeError(f"WAN proxy {name!r} is not listening (call start() first)")
        return port

    def set_latency(
        self,
        a: str,
        b: str,
        latency_ms: float,
        jitter_ms: float | None = None,
        *,
        one_way: bool = False,
    ) -> None:
        """:meth:`LatencyMatrix.set`; applies to chunks arriving from now on."""
        self.matrix.set(a, b, latency_ms, jitter_ms, one_way=one_way)
        _log.info(
            "WAN latency %s->%s set to %s ms (jitter %s, one_way=%s)",
            a,
            b,
            latency_ms,
            jitter_ms,
            one_way,
        )

    def partition(
        self,
        region: str,
        *,
        peers: Sequence[str] | None = None,
        direction: Direction = "both",
    ) -> None:
        """:meth:`PartitionTable.partition`; takes effect for bytes not yet delivered."""
        self.partitions.partition(region, peers=peers, direction=direction)
        _log.info("WAN partition: %s peers=%s direction=%s", region, peers, direction)

    def heal(self, region: str | None = None) -> int:
        """Unblock pairs touching ``region`` (all when ``None``) and reset poisoned connections.

        Returns how many connections were reset: those that lost data or were
        held, and whose directions are now both unblocked. Their tasks finish
        shortly after (this method does not wait).
        """
        self.partitions.heal(region)
        doomed = [
            c
            for c in self._conns
            if not c.dead
            and (c.poisoned or c.held)
            and not self.partitions.blocked(*c.proxy.up)
            and not self.partitions.blocked(*c.proxy.down)
        ]
        for conn in doomed:
            conn.kill()
        _log.info("WAN heal %s: reset %d poisoned connection(s)", region or "all", len(doomed))
        return len(doomed)

    async def reset(self, region: str | None = None, *, peer: str | None = None) -> int:
        """Abort (TCP RST) live connections on links touching ``region`` (and ``peer``, if given).

        ``region=None`` resets every connection. Returns how many were reset,
        once their tasks have finished.

        Raises:
            WanArgumentError: unknown region or peer, ``peer`` without
                ``region``, or ``peer == region``.
        """
        regions = self.matrix.regions
        if region is not None:
            region = check_region(regions, "region", region)
        if peer is not None:
            if region is None:
                raise WanArgumentError("peer", "requires region to be set")
            if check_region(regions, "peer", peer) == region:
                raise WanArgumentError("peer", f"must differ from region ({region!r})")
        doomed = [c for c in self._conns if not c.dead and c.proxy.touches(region, peer)]
        await self._kill(doomed)
        _log.info("WAN reset region=%s peer=%s: %d connection(s)", region, peer, len(doomed))
        return len(doomed)

    def snapshot(self) -> dict[str, object]:
        """JSON-friendly state: regions, links, partitions and per-proxy stats.

        ``bytes_*`` count bytes delivered, ``dropped_*`` bytes lost to partitions.
        """
        out = self.matrix.as_dict(self.partitions)
        out["partitions"] = self.partitions.as_list()
        out["proxies"] = [
            {
                "name": p.spec.name,
                "src": p.spec.src,
                "dst": p.spec.dst,
                "listen_host": p.spec.listen_host,
                "listen_port": p.port if p.port is not None else p.spec.listen_port,
                "upstream": f"{p.spec.upstream_host}:{p.spec.upstream_port}",
                "active_connections": p.stats.active_connections,
                "total_connections": p.stats.total_connections,
                "bytes_up": p.stats.bytes_up,
                "bytes_down": p.stats.bytes_down,
                "dropped_up": p.stats.dropped_up,
                "dropped_down": p.stats.dropped_down,
            }
            for p in self._proxies.values()
        ]
        return out

    # -- internals -------------------------------------------------------------

    def _proxy(self, name: str) -> _Proxy:
        try:
            return self._proxies[name]
        except KeyError:
            known = ", ".join(self._proxies)
            raise KeyError(f"no WAN proxy named {name!r}; known: {known}") from None

    async def _kill(self, conns: Sequence[_Conn]) -> None:
        for conn in conns:
            conn.kill()
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    def _accept(
        self, proxy: _Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._state != "started":
            _abort(writer)
            return
        conn = _Conn(proxy, writer)
        self._conns.add(conn)
        proxy.stats.active_connections += 1
        proxy.stats.total_connections += 1
        conn.task = asyncio.get_running_loop().create_task(
            self._serve(conn, reader), name=f"wan:{proxy.spec.name}"
        )
        conn.task.add_done_callback(lambda task: self._forget(conn, task))

    def _forget(self, conn: _Conn, task: asyncio.Task[None]) -> None:
        self._conns.discard(conn)
        conn.proxy.stats.active_connections -= 1
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("WAN proxy %s: connection task failed", conn.proxy.spec.name, exc_info=exc)

    async def _serve(self, conn: _Conn, client_reader: asyncio.StreamReader) -> None:
        proxy = conn.proxy
        spec = proxy.spec
        graceful = False
        try:
            if self.partitions.blocked(*proxy.up):
                conn.held = True
                await self._hold(conn, client_reader)
                graceful = True
                return
            up_tls: ssl.SSLContext | None = None
            if spec.tls is not None:
                try:
                    async with asyncio.timeout(_DIAL_TIMEOUT_S):
                        await conn.client.start_tls(spec.tls.accept_context())
                    up_tls = spec.tls.upstream_context(conn.client.get_extra_info("ssl_object"))
                except (OSError, TimeoutError, ssl.SSLError, LinkRefused) as exc:
                    _log.warning("WAN proxy %s: refused a connection: %s", spec.name, exc)
                    return
            try:
                async with asyncio.timeout(_DIAL_TIMEOUT_S):
                    up_reader, up_writer = await asyncio.open_connection(
                        spec.upstream_host, spec.upstream_port, ssl=up_tls
                    )
                conn.upstream = up_writer
                if spec.tls is not None:
                    spec.tls.check_upstream(up_writer.get_extra_info("ssl_object"))
            except (OSError, TimeoutError, ssl.SSLError, LinkRefused) as exc:
                _log.warning(
                    "WAN proxy %s: cannot reach upstream %s:%s: %s",
                    spec.name,
                    spec.upstream_host,
                    spec.upstream_port,
                    exc,
                )
                return
            try:
                async with asyncio.TaskGroup() as tg:
                    for reader, writer, pair, up in (
                        (client_reader, up_writer, proxy.up, True),
                        (up_reader, conn.client, proxy.down, False),
                    ):
                        queue: _ChunkQueue = asyncio.Queue(_QUEUE_CHUNKS)
                        tg.create_task(self._intake(conn, reader, queue, pair, up))
                        tg.create_task(self._deliver(conn, writer, queue, pair, up))
            except* _PipeClosed as group:
                graceful = all(isinstance(e, _PipeClosed) and e.graceful for e in _leaves(group))
        finally:
            for side in (conn.client, conn.upstream):
                if side is None:
                    continue
                if graceful:
                    side.close()
                else:
                    _abort(side)

    async def _hold(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        """Read and drop a held connection's bytes until the client leaves (or heal resets it)."""
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError:
                return
            if not data:
                return
            conn.poisoned = True
            conn.proxy.stats.dropped_up += len(data)

    def _drop(self, conn: _Conn, up: bool, size: int) -> None:
        conn.poisoned = True
        if up:
            conn.proxy.stats.dropped_up += size
        else:
            conn.proxy.stats.dropped_down += size

    async def _intake(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        queue: _ChunkQueue,
        pair: Pair,
        up: bool,
    ) -> None:
        """Read chunks, stamp each with its due time, and queue them (None marks EOF)."""
        loop = asyncio.get_running_loop()
        schedule = DeliverySchedule(self._rng)
        gossip = GossipFilter() if conn.proxy.spec.strip_gossip else None
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError as exc:
                if self.partitions.blocked(*pair):
                    conn.poisoned = True  # the reset is lost in the black hole
                    return
                raise _PipeClosed(graceful=False) from exc
            if self.partitions.blocked(*pair):
                self._drop(conn, up, len(data))
                if not data:
                    return  # the FIN is lost too; this side is finished
                continue
            if gossip is not None and data:
                data = gossip.feed(data)
                if not data:
                    continue  # only part of a protocol line so far
            due = schedule.next(loop.time(), self.matrix.latency(*pair), self.matrix.jitter(*pair))
            await queue.put((due, data or None))
            if not data:
                return

    async def _deliver(
        self,
        conn: _Conn,
        writer: asyncio.StreamWriter,
        queue: _ChunkQueue,
        pair: Pair,
        up: bool,
    ) -> None:
        """Write queued chunks when due; ends the connection after delivering EOF."""
        loop = asyncio.get_running_loop()
        stats = conn.proxy.stats
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.partitions.blocked(*pair):
                self._drop(conn, up, len(data or b""))
                if data is None:
                    return
                continue
            if data is None:
                raise _PipeClosed(graceful=True)
            try:
                writer.write(data)
                await writer.drain()
            except OSError as exc:
                raise _PipeClosed(graceful=False) from exc
            if up:
                stats.bytes_up += len(data)
            else:
                stats.bytes_down += len(data)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
