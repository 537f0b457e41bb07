"""The agent's state component: one replica per declared keyspace, followed until stopped.

Until every keyspace is ready its calls fail with UNAVAILABLE; the component
serves (and the agent reports ready) once every keyspace is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from meridian.backbone.connection import BackboneConnection
from meridian.backbone.lifecycle import Background
from meridian.core.hlc import HybridLogicalClock
from meridian.core.keyspace import Keyspace, Locality
from meridian.observability.metrics import AgentMetrics
from meridian.state.global_store import GlobalKeyspaceStore
from meridian.state.regional_replica import RegionalReplica
from meridian.state.replicas import GlobalReplica, ReplicatedReplica
from meridian.state.replicated_store import ReplicatedKeyspaceStore


class StateComponent(Background):
    """Agent component serving the declared keyspaces: serves once every keyspace's
    streams exist and its change feed is followed."""

    name = "state"

    def __init__(
        self,
        conn: BackboneConnection,
        keyspaces: tuple[Keyspace, ...],
        *,
        region: str,
        regions: Sequence[str],
        global_replicas: int,
        regional_replicas: int,
        timeout_s: float,
        hlc: HybridLogicalClock,
        metrics: AgentMetrics,
        freshness_interval_s: float,
    ) -> None:
        super().__init__()
        self.replicas: dict[str, GlobalReplica | ReplicatedReplica | RegionalReplica] = {}
        #: Replicated keyspaces this region may not hold (residency): refused.
        self.refused: dict[str, Keyspace] = {}
        for ks in keyspaces:
            if ks.locality is Locality.REGIONAL:
                self.replicas[ks.name] = RegionalReplica(
                    conn,
                    ks,
                    region=region,
                    regions=regions,
                    replicas=regional_replicas,
                    timeout_s=timeout_s,
                    hlc=hlc,
                    metrics=metrics,
                    freshness_interval_s=freshness_interval_s,
                )
            elif ks.locality is Locality.REPLICATED and not ks.allowed(region):
                self.refused[ks.name] = ks
            elif ks.locality is Locality.REPLICATED:
                self.replicas[ks.name] = ReplicatedReplica(
                    ReplicatedKeyspaceStore(
                        conn,
                        ks,
                        region=region,
                        # Only the allowed regions write, and only they are sourced.
                        regions=[r for r in regions if ks.allowed(r)],
                        replicas=regional_replicas,
                        timeout_s=timeout_s,
                        hlc=hlc,
                        on_skewed=metrics.hlc_rejected.labels(region).inc,
                    ),
                    metrics,
                    region,
                    freshness_interval_s,
                )
            else:
                self.replicas[ks.name] = GlobalReplica(
                    GlobalKeyspaceStore(
                        conn,
                        ks,
                        region=region,
                        replicas=global_replicas,
                        timeout_s=timeout_s,
                        clock_now=hlc.now,
                    ),
                    metrics,
                    region,
                    freshness_interval_s,
                )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for replica in self.replicas.values():
                tg.create_task(replica.keep_following(), name=f"keyspace-{replica.keyspace.name}")
            for replica in self.replicas.values():
                await replica.wait_ready()
            self.serving()
