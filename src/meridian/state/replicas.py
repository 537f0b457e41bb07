"""The agent's state component: one store and one cached view per declared keyspace.

For each keyspace the component makes sure its streams exist, then follows its
change feed into a :class:`~meridian.state.model.view.KeyspaceView`:

- ``global``: the KV bucket's stream; the view serves EVENTUAL and BOUNDED reads;
- ``replicated``: this region's aggregate of every region's stream; the view
  holds the merged CRDT state of each key and serves every read.

A feed that fails (NATS reconnects, leader changes) restarts with a short
backoff. Until a keyspace is ready its calls fail with UNAVAILABLE; the
component serves (and the agent reports ready) once every keyspace is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from meridian.backbone.connection import (
    BackboneConnection,
    ensure_until_done,
    reraise_if_cancelling,
)
from meridian.core.errors import UnavailableError
from meridian.core.keyspace import Keyspace
from meridian.observability.metrics import AgentMetrics
from meridian.state.global_store import GlobalKeyspaceStore
from meridian.state.model.replicated import ReplicatedEntry
from meridian.state.model.view import KeyspaceView, StoredEntry
from meridian.state.replicated_store import ReplicatedKeyspaceStore

log = logging.getLogger(__name__)

RETRY_S = 1.0

E = TypeVar("E", StoredEntry, ReplicatedEntry)


class _Store(Protocol):
    """What a replica needs of its store (GlobalKeyspaceStore, ReplicatedKeyspaceStore)."""

    conn: BackboneConnection

    async def ensure(self) -> None: ...

    async def follow(
        self,
        view: Any,
        freshness_interval_s: float,
        on_applied: Callable[[int], Awaitable[None]],
    ) -> None: ...


class KeyspaceReplica(Generic[E]):
    """A keyspace's store, its local view, and a way to wait for the view to catch up."""

    def __init__(
        self,
        keyspace: Keyspace,
        store: _Store,
        metrics: AgentMetrics,
        region: str,
        freshness_interval_s: float,
        *,
        export: bool = True,
    ) -> None:
        """``export``: set the keyspace's staleness gauge from this replica
        (false for one partition of many: the keyspace exports their worst)."""
        self.keyspace = keyspace
        self._freshness_interval_s = freshness_interval_s
        self._store = store
        self.view: KeyspaceView[E] = KeyspaceView()
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._metrics = metrics
        self._region = region
        if export:
            metrics.state_staleness.labels(region, keyspace.name).set_function(self._exported_bound)

    def staleness(self, now: float) -> float | None:
        """How stale the view may be at ``now``, as proven; None when nothing is."""
        return self.view.staleness(now)

    def _exported_bound(self) -> float:
        bound = self.staleness(time.monotonic())
        return math.inf if bound is None else bound

    @property
    def ready(self) -> bool:
        """Whether its streams exist and its change feed has been followed once."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def require_ready(self) -> None:
        if not self.ready:
            raise UnavailableError(
                f"keyspace {self.keyspace.name!r} is not ready yet in this region "
                "(its streams or change feed are still being set up)"
            )

    async def wait_applied(self, seq: int, timeout_s: float) -> None:
        """Return once the view holds the effect of every message up to stream
        sequence ``seq`` (complete, not only applied: see :mod:`meridian.state.model.view`);
        UNAVAILABLE if it does not within ``timeout_s`` (say, its change feed is
        restarting after the stream's leader moved)."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: self.view.complete_seq >= seq)
        except TimeoutError:
            raise UnavailableError(
                f"keyspace {self.keyspace.name!r}: this region's change feed did not reach "
                f"revision {seq} within {timeout_s:g}s (it may be catching up after a "
                "leader change); retry"
            ) from None

    async def on_applied(self, hlc_wall_ms: int) -> None:
        """Export the write→view lag and wake readers waiting for the view."""
        if hlc_wall_ms:
            lag = max(0.0, time.time() - hlc_wall_ms / 1000)
            self._metrics.cache_lag.labels(self._region, self.keyspace.name).observe(lag)
        async with self._changed:
            self._changed.notify_all()

    async def keep_following(self) -> None:
        """Ensure the streams, then follow the change feed forever, restarting on failure."""
        while True:
            await ensure_until_done(
                self._store.conn, self._store.ensure, f"keyspace {self.keyspace.name}"
            )
            self.view = KeyspaceView()
            self._ready.set()
            log.info("keyspace ready", extra={"keyspace": self.keyspace.name})
            try:
                await self._store.follow(self.view, self._freshness_interval_s, self.on_applied)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a feed must never kill the agent
                log.warning(
                    "keyspace %s feed stopped (%s); retrying in %.1fs",
                    self.keyspace.name,
                    exc,
                    RETRY_S,
                )
            reraise_if_cancelling()
            await asyncio.sleep(RETRY_S)


class GlobalReplica(KeyspaceReplica[StoredEntry]):
    def __init__(
        self,
        store: GlobalKeyspaceStore,
        metrics: AgentMetrics,
        region: str,
        freshness_interval_s: float,
        *,
        export: bool = True,
    ) -> None:
        super().__init__(
            store.keyspace, store, metrics, region, freshness_interval_s, export=export
        )
        self.store = store


class ReplicatedReplica(KeyspaceReplica[ReplicatedEntry]):
    def __init__(
        self,
        store: ReplicatedKeyspaceStore,
        metrics: AgentMetrics,
        region: str,
        freshness_interval_s: float,
    ) -> None:
        self.store = store
        super().__init__(store.keyspace, store, metrics, region, freshness_interval_s)

    def staleness(self, now: float) -> float | None:
        """The oldest proof among the writing regions (see ReplicatedKeyspaceStore)."""
        return self.store.staleness(self.view, now)[0]
