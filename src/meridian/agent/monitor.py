"""The agent's background observation of its region and the others.

Every ``status_interval_s`` the monitor refreshes one
:class:`~meridian.core.status.AgentObservation`: the NATS connection, JetStream,
the `global` quorum (a real quorum write) and each peer region (a real ping).
The Status and Health APIs read the latest observation and never wait on the
network themselves.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime

import aiohttp
from opentelemetry import trace

from meridian.backbone.connection import NATS_FAILURES, BackboneConnection, reraise_if_cancelling
from meridian.backbone.probes import GlobalProbe, PeerPinger, describe_nats_error
from meridian.core.hlc import Clock, SkewMonitor
from meridian.core.redact import redact
from meridian.core.status import (
    AgentObservation,
    GlobalObservation,
    JetStreamObservation,
    NatsObservation,
    PeerObservation,
)
from meridian.observability.metrics import AgentMetrics

log = logging.getLogger(__name__)


class StatusMonitor:
    """Keeps :attr:`latest` fresh until cancelled."""

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        agent_id: str,
        version: str,
        peers: list[str],
        monitor_url: str | None,
        interval_s: float,
        peer_timeout_s: float,
        quorum_timeout_s: float,
        global_replicas: int,
        metrics: AgentMetrics,
        tracer: trace.Tracer,
        clock: Clock,
        skew: SkewMonitor,
    ) -> None:
        self.skew = skew
        self.conn = conn
        self.region = region
        self.monitor_url = monitor_url
        self.interval_s = interval_s
        self.metrics = metrics
        self.tracer = tracer
        self.probe = GlobalProbe(conn, region, replicas=global_replicas, timeout_s=quorum_timeout_s)
        self.pinger = PeerPinger(
            conn, region, agent_id, peers, timeout_s=peer_timeout_s, clock=clock, skew=skew
        )
        now = datetime.now(UTC)
        self.latest = AgentObservation(
            region=region,
            agent_id=agent_id,
            version=version,
            started_at=now,
            observed_at=now,
            peers=tuple(PeerObservation(region=p) for p in peers),
        )
        self.rounds = 0
        self._round_done = asyncio.Event()

    async def run(self) -> None:
        """Observe forever. Cancel to stop."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            answering = False
            try:
                while True:
                    if not answering and self.conn.connected:
                        await self.pinger.serve()
                        answering = True
                    with self.tracer.start_as_current_span("agent.status.observe"):
                        await self._round(http)
                    reraise_if_cancelling()
                    await asyncio.sleep(self.interval_s)
            finally:
                await self.pinger.stop()

    async def wait_round(self) -> None:
        """Wait for the next completed observation round."""
        self._round_done.clear()
        await self._round_done.wait()

    async def _round(self, http: aiohttp.ClientSession) -> None:
        nats_obs = await self._observe_nats()
        if nats_obs.connected:
            js_obs, global_obs, peers = await asyncio.gather(
                self._observe_jetstream(http), self.probe.observe(), self.pinger.observe()
            )
        else:
            why = f"no NATS connection: {nats_obs.reason}"
            js_obs = JetStreamObservation(reason=why)
            global_obs = GlobalObservation(reason=why)
            peers = tuple(
                PeerObservation(region=p.region, reason=why, last_seen=p.last_seen)
                for p in self.latest.peers
            )
        self.latest = replace(
            self.latest,
            observed_at=datetime.now(UTC),
            nats=nats_obs,
            jetstream=js_obs,
            global_=global_obs,
            peers=peers,
            clock_skew=self.skew.check() or "",
        )
        self._record_metrics()
        self._log_changes()
        self.rounds += 1
        self._round_done.set()

    async def _observe_nats(self) -> NatsObservation:
        if not self.conn.connected:
            return NatsObservation(
                connected=False, reason=self.conn.last_error or "not connected to NATS"
            )
        server = self.conn.server
        try:
            rtt = await self.conn.rtt_ms(timeout_s=2.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return NatsObservation(connected=False, server_url=server.url, reason=redact(str(exc)))
        return NatsObservation(
            connected=True,
            server_url=server.url,
            server_name=server.name,
            cluster=server.cluster,
            server_version=server.version,
            rtt_ms=rtt,
            reason="",
        )

    async def _observe_jetstream(self, http: aiohttp.ClientSession) -> JetStreamObservation:
        leader, size, current, meta_reason = "", 0, 0, ""
        if self.monitor_url:
            try:
                async with http.get(f"{self.monitor_url}/jsz") as resp:
                    jsz = await resp.json(content_type=None)
                meta = jsz.get("meta_cluster") or {}
                leader = meta.get("leader") or ""
                size = int(meta.get("cluster_size") or 0)
                replicas = meta.get("replicas") or []
                current = sum(1 for r in replicas if r.get("current") and not r.get("offline"))
                current += 1 if leader else 0
                if not leader:
                    meta_reason = (
                        f"no JetStream meta leader visible from {self.conn.server.name}"
                        f" ({current} of {size} meta peers current)"
                    )
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                meta_reason = f"monitoring endpoint {self.monitor_url} unreachable: {exc}"
        try:
            await self.conn.jetstream(2.0).account_info()
        except asyncio.CancelledError:
            raise
        except NATS_FAILURES as exc:
            reason = f"JetStream account info failed: {describe_nats_error(exc)}"
            if meta_reason:
                reason += f"; {meta_reason}"
            return JetStreamObservation(
                available=False,
                meta_leader=leader,
                meta_cluster_size=size,
                meta_peers_current=current,
                reason=reason,
            )
        return JetStreamObservation(
            available=True,
            meta_leader=leader,
            meta_cluster_size=size,
            meta_peers_current=current,
            reason=meta_reason,
        )

    def _record_metrics(self) -> None:
        m, r, obs = self.metrics, self.region, self.latest
        m.nats_connected.labels(r).set(1 if obs.nats.connected else 0)
        m.global_quorum.labels(r).set(1 if obs.global_.quorum_reachable else 0)
        if obs.global_.quorum_reachable:
            m.global_write_seconds.labels(r).observe(obs.global_.write_rtt_ms / 1000)
        for p in obs.peers:
            m.peer_reachable.labels(r, p.region).set(1 if p.reachable else 0)
            if p.reachable:
                m.peer_rtt.labels(r, p.region).set(p.rtt_ms / 1000)
                m.clock_offset.labels(r, p.region).set(p.clock_offset_ms / 1000)

    _last_summary: tuple[object, ...] = ()

    def _log_changes(self) -> None:
        obs = self.latest
        summary = (
            obs.nats.connected,
            obs.jetstream.available,
            obs.global_.quorum_reachable,
            tuple((p.region, p.reachable) for p in obs.peers),
        )
        if summary == self._last_summary:
            return
        self._last_summary = summary
        log.info(
            "status changed",
            extra={
                "nats_connected": obs.nats.connected,
                "jetstream_available": obs.jetstream.available,
                "global_quorum": obs.global_.quorum_reachable,
                "global_reason": obs.global_.reason,
                "peers": {p.region: p.reachable for p in obs.peers},
            },
        )
