"""A ``global`` keyspace of the agent's own (flags, routing weights and
rollouts) followed into a view kept for the agent's life.

Readers read :attr:`FollowedKeyspace.view` and never leave the region;
while the global quorum can't be reached (a partition, an election) they
keep the last view. Until the view has caught up once, :attr:`loaded` is
False. A writer that must read its own write here right after waits for it
with :meth:`wait_applied`.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from meridian.backbone.connection import (
    BackboneConnection,
    ensure_until_done,
    reraise_if_cancelling,
    retry_forever,
)
from meridian.backbone.lifecycle import Background
from meridian.config import GLOBAL_CLUSTER
from meridian.core.errors import UnavailableError
from meridian.core.hlc import HybridLogicalClock
from meridian.core.keyspace import Keyspace
from meridian.observability.metrics import AgentMetrics
from meridian.state.global_store import GlobalKeyspaceStore
from meridian.state.model.view import KeyspaceView, StoredEntry

#: Between attempts to follow the store after a failure.
RETRY_S = 1.0
#: How often the view's freshness is proven with a barrier (these views need
#: no bounded reads; the barrier only marks an empty keyspace as caught up).
FRESHNESS_INTERVAL_S = 30.0


class FollowedKeyspace(Background):
    """Follows one global keyspace into :attr:`view`; see the module docstring."""

    #: The keyspace followed (each subclass names its own).
    KEYSPACE: ClassVar[Keyspace]

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        replicas: int,
        timeout_s: float,
        hlc: HybridLogicalClock,
        metrics: AgentMetrics,
    ) -> None:
        super().__init__()
        self.region = region
        self.hlc = hlc
        self.metrics = metrics
        self.keyspace = keyspace = self.KEYSPACE
        self.store = GlobalKeyspaceStore(
            conn,
            keyspace,
            region=region,
            replicas=replicas,
            timeout_s=timeout_s,
            clock_now=hlc.now,
            cluster=GLOBAL_CLUSTER,
        )
        self.view: KeyspaceView[StoredEntry] = KeyspaceView()
        self._changed = asyncio.Condition()

    @property
    def loaded(self) -> bool:
        """Whether the view has caught up with the store at least once."""
        return self.view.complete_seq > 0

    @property
    def revision(self) -> int:
        """The last change applied."""
        return self.view.applied_seq

    async def run(self) -> None:
        # Serve at once: readers see `loaded` False until the view has caught
        # up, and the agent must not wait for the global quorum to start.
        self.serving()
        await ensure_until_done(
            self.store.conn, self.store.ensure, f"{self.keyspace.name} keyspace"
        )
        await retry_forever(f"following {self.keyspace.name}", self._follow, retry_s=RETRY_S)

    async def _follow(self) -> None:
        # The same view across restarts: what was applied is skipped, deletes
        # made meanwhile arrive as their markers.
        await self.store.follow(self.view, FRESHNESS_INTERVAL_S, self._on_applied)
        reraise_if_cancelling()

    async def _on_applied(self, hlc_wall_ms: int) -> None:
        if hlc_wall_ms:
            lag = max(0.0, time.time() - hlc_wall_ms / 1000)
            self.metrics.cache_lag.labels(self.region, self.keyspace.name).observe(lag)
        async with self._changed:
            self._changed.notify_all()

    async def wait_applied(self, revision: int, timeout_s: float | None = None) -> None:
        """Return once the view holds ``revision`` (this agent's own write),
        so a read here right after a change sees it; UNAVAILABLE otherwise."""
        timeout_s = self.store.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: self.view.applied_seq >= revision)
        except TimeoutError:
            raise UnavailableError(
                f"the change at revision {revision} of {self.keyspace.name} is stored but "
                f"this region's feed did not show it within {timeout_s:g}s; it will"
            ) from None
