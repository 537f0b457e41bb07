"""The agent's state component: one store and one cached view per declared keyspace.

For each ``global`` keyspace the component makes sure the bucket exists, then
follows its change feed into a :class:`~meridian.core.view.KeyspaceView` that
serves EVENTUAL and BOUNDED reads. It restarts a feed that fails (NATS
reconnects, leader changes) with a short backoff, and it never blocks agent
start-up: until a keyspace is ready, its calls fail with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import time

from meridian.backbone.connection import BackboneConnection, reraise_if_cancelling
from meridian.backbone.kv import GlobalKeyspaceStore
from meridian.core.errors import MeridianError, UnavailableError
from meridian.core.hlc import HybridLogicalClock
from meridian.core.keyspace import Keyspace
from meridian.core.view import KeyspaceView
from meridian.observability.metrics import AgentMetrics

log = logging.getLogger(__name__)

FRESHNESS_INTERVAL_S = 0.1
RETRY_S = 1.0


class KeyspaceReplica:
    """A keyspace's store, its local view, and a way to wait for the view to catch up."""

    def __init__(self, store: GlobalKeyspaceStore, metrics: AgentMetrics, region: str) -> None:
        self.store = store
        self.keyspace = store.keyspace
        self.view = KeyspaceView()
        self.ready = False
        self._changed = asyncio.Condition()
        self._metrics = metrics
        self._region = region

    def require_ready(self) -> None:
        if not self.ready:
            raise UnavailableError(
                f"keyspace {self.keyspace.name!r} is not ready yet in this region "
                "(its bucket or change feed is still being set up)"
            )

    async def wait_applied(self, seq: int, timeout_s: float) -> None:
        """Return once the view has applied stream sequence ``seq``."""
        async with asyncio.timeout(timeout_s):
            async with self._changed:
                await self._changed.wait_for(lambda: self.view.applied_seq >= seq)

    async def on_applied(self, hlc_wall_ms: int) -> None:
        """Export the write→cache lag and wake readers waiting for the view."""
        if hlc_wall_ms:
            lag = max(0.0, time.time() - hlc_wall_ms / 1000)
            self._metrics.cache_lag.labels(self._region, self.keyspace.name).observe(lag)
        async with self._changed:
            self._changed.notify_all()

    async def keep_following(self) -> None:
        """Ensure the bucket, then follow the change feed forever, restarting on failure."""
        while True:
            try:
                await self.store.conn.wait_connected()
                await self.store.ensure()
                self.view = KeyspaceView()
                self.ready = True
                log.info("keyspace ready", extra={"keyspace": self.keyspace.name})
                await self.store.follow(self.view, FRESHNESS_INTERVAL_S, self.on_applied)
            except asyncio.CancelledError:
                raise
            except (MeridianError, Exception) as exc:  # a feed must never kill the agent
                log.warning(
                    "keyspace %s feed stopped (%s); retrying in %.1fs",
                    self.keyspace.name,
                    exc,
                    RETRY_S,
                )
            reraise_if_cancelling()
            await asyncio.sleep(RETRY_S)


class StateComponent:
    """Agent component serving the declared keyspaces."""

    name = "state"

    def __init__(
        self,
        conn: BackboneConnection,
        keyspaces: tuple[Keyspace, ...],
        *,
        region: str,
        replicas: int,
        timeout_s: float,
        hlc: HybridLogicalClock,
        metrics: AgentMetrics,
    ) -> None:
        self.replicas: dict[str, KeyspaceReplica] = {}
        for ks in keyspaces:
            store = GlobalKeyspaceStore(
                conn, ks, region=region, replicas=replicas, timeout_s=timeout_s, clock_now=hlc.now
            )
            self.replicas[ks.name] = KeyspaceReplica(store, metrics, region)

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for replica in self.replicas.values():
                tg.create_task(replica.keep_following(), name=f"keyspace-{replica.keyspace.name}")

    async def stop(self, grace_s: float) -> None:
        return None
