"""A ``regional`` keyspace in one agent: its partitions, found and followed.

Every few seconds the agent lists the keyspace's partition buckets
(:func:`~meridian.state.regional_store.stream_names`) and starts following the
ones it has not seen, each into its own view (a :class:`PartitionReplica`,
read and written as a ``global`` keyspace is). A partition the agent has not
listed yet is looked up on demand, and made on a first write.

In a region outside the keyspace's residency the agent follows nothing and
keeps no copy: with ``forward = true`` it reads (STRONG only) and writes the
home region's bucket directly; without, every call is RESIDENCY_VIOLATION.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

from meridian.backbone.connection import BackboneConnection, reraise_if_cancelling
from meridian.core.errors import MeridianError, QuorumUnavailableError, UnavailableError
from meridian.core.hlc import HybridLogicalClock
from meridian.core.keyspace import Keyspace
from meridian.core.residency import refuse
from meridian.observability.metrics import AgentMetrics
from meridian.state.model import regional
from meridian.state.regional_store import (
    PartitionStore,
    create_partition,
    rehome,
    stream_cluster,
    stream_names,
)
from meridian.state.replicas import GlobalReplica

log = logging.getLogger(__name__)

#: How often the agent lists the keyspace's partitions.
DISCOVER_S = 2.0


class PartitionReplica(GlobalReplica):
    """One partition's bucket and its view in this region."""

    store: PartitionStore


class RegionalReplica:
    """Every partition of one regional keyspace that this agent knows of."""

    def __init__(
        self,
        conn: BackboneConnection,
        keyspace: Keyspace,
        *,
        region: str,
        regions: Sequence[str],
        replicas: int,
        timeout_s: float,
        hlc: HybridLogicalClock,
        metrics: AgentMetrics,
        freshness_interval_s: float,
    ) -> None:
        self.conn = conn
        self.keyspace = keyspace
        self.region = region
        self.regions = tuple(regions)
        self.replicas = replicas
        self.timeout_s = timeout_s
        self.hlc = hlc
        self.metrics = metrics
        self.freshness_interval_s = freshness_interval_s
        #: Whether this region may hold the keyspace's data (and so follows it).
        self.resident = keyspace.allowed(region)
        self.partitions: dict[str, PartitionReplica] = {}
        self._listed = asyncio.Event()
        self._following: asyncio.TaskGroup | None = None
        self._lock = asyncio.Lock()
        metrics.state_staleness.labels(region, keyspace.name).set_function(self._exported_bound)

    # -- what the service asks ----------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._listed.is_set()

    async def wait_ready(self) -> None:
        await self._listed.wait()

    def require_ready(self) -> None:
        if not self.ready:
            raise UnavailableError(
                f"keyspace {self.keyspace.name!r} is not ready yet in this region "
                "(its partitions are still being listed)"
            )

    def require_served(self, *, forwardable: bool) -> None:
        """RESIDENCY_VIOLATION unless this region may serve the call: it is in the
        residency, or the keyspace forwards and the call can be forwarded."""
        if self.resident or (forwardable and self.keyspace.forward):
            return
        what = f"keyspace {self.keyspace.name!r}"
        if self.keyspace.forward:
            what += " (only Get, Put, Create and Delete are forwarded)"
        raise refuse(what, self.region, self.keyspace.residency)

    async def partition(self, key: str, *, create: bool) -> PartitionReplica | None:
        """The replica of ``key``'s partition; None if it does not exist and
        ``create`` is false (then the key does not exist either)."""
        name = regional.partition_of(key)
        found = self.partitions.get(name)
        if found is not None:
            return found
        async with self._lock:
            found = self.partitions.get(name)
            if found is not None:
                return found
            home = await stream_cluster(
                self.conn, regional.stream(self.keyspace.name, name), self.timeout_s
            )
            if home is not None:
                return self._add(name, home)
            if not create:
                return None
            home = await create_partition(
                self.conn,
                self.keyspace,
                name,
                home=regional.home_for_new(
                    self.region, self.keyspace.residency, self.keyspace.home
                ),
                regions=self.regions,
                replicas=self.replicas,
                timeout_s=self.timeout_s,
            )
            made = self._add(name, home)
            await self._reachable(made.store)
            return made

    async def _reachable(self, store: PartitionStore) -> None:
        """Wait until a new bucket takes writes from here: right after it is made,
        its leader may not be elected, or the gateways may not carry its subjects
        yet ("no responders": nothing was written). A barrier is a write no one reads."""
        deadline = time.monotonic() + 4 * self.timeout_s
        while True:
            try:
                await store.barrier()
                return
            except QuorumUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    def matching(self, prefix: str) -> list[PartitionReplica]:
        """The known partitions a scan of ``prefix`` may find keys in, by name."""
        head, dot, _ = prefix.partition(".")
        return [
            p
            for name, p in sorted(self.partitions.items())
            if (name == head if dot else name.startswith(head))
        ]

    async def rehome(self, partition: str, to: str) -> tuple[str, int]:
        """Move ``partition`` to home ``to`` (see :func:`regional_store.rehome`)."""
        previous, revision = await rehome(
            self.conn,
            self.keyspace,
            partition,
            to,
            regions=self.regions,
            replicas=self.replicas,
            timeout_s=self.timeout_s,
        )
        known = self.partitions.get(partition)
        if known is not None:
            known.store.cluster = to
        return previous, revision

    def staleness(self, now: float) -> float | None:
        """The worst proven staleness over the followed partitions."""
        worst = 0.0
        for p in self.partitions.values():
            bound = p.staleness(now)
            if bound is None:
                return None
            worst = max(worst, bound)
        return worst

    def _exported_bound(self) -> float:
        bound = self.staleness(time.monotonic())
        return math.inf if bound is None else bound

    # -- following ----------------------------------------------------------------

    def _add(self, name: str, home: str) -> PartitionReplica:
        store = PartitionStore(
            self.conn,
            self.keyspace,
            name,
            region=self.region,
            home=home,
            replicas=self.replicas,
            timeout_s=self.timeout_s,
            clock_now=self.hlc.now,
        )
        replica = PartitionReplica(
            store, self.metrics, self.region, self.freshness_interval_s, export=False
        )
        self.partitions[name] = replica
        if self.resident and self._following is not None:
            self._following.create_task(
                replica.keep_following(), name=f"partition-{self.keyspace.name}-{name}"
            )
        return replica

    async def keep_following(self) -> None:
        """List the partitions every DISCOVER_S and follow each new one; runs until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._following = tg
            for replica in self.partitions.values():
                if self.resident:
                    tg.create_task(replica.keep_following())
            while True:
                try:
                    await self._discover()
                    if not self._listed.is_set():
                        self._listed.set()
                        log.info(
                            "keyspace ready",
                            extra={
                                "keyspace": self.keyspace.name,
                                "partitions": len(self.partitions),
                            },
                        )
                except MeridianError as exc:
                    log.warning("cannot list %s's partitions: %s", self.keyspace.name, exc)
                reraise_if_cancelling()
                await asyncio.sleep(DISCOVER_S)

    async def _discover(self) -> None:
        for name in await stream_names(self.conn, self.timeout_s):
            parsed = regional.parse(name)
            if (
                parsed is None
                or parsed.mirror_region is not None
                or parsed.keyspace != self.keyspace.name
                or parsed.partition in self.partitions
            ):
                continue
            async with self._lock:
                if parsed.partition not in self.partitions:
                    # The home is found when the partition's feed starts (ensure).
                    self._add(parsed.partition, "")
