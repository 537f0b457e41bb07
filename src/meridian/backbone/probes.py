"""Probes that tell an agent what it can reach: the `global` quorum and peer regions.

- :class:`GlobalProbe` writes to a small R3 stream placed in the `global`
  cluster. A JetStream publish ack means a quorum of `global` replicas
  committed the write, so a successful probe *is* the proof that a quorum is
  reachable from here; a failed one says why (timeout, no responders, error).
- :class:`PeerPinger` asks each peer region's agent for a reply over NATS, so a
  reply proves the gateways between the two regions carry traffic both ways.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from meridian.backbone.connection import NATS_FAILURES, BackboneConnection, add_stream_if_missing
from meridian.config import GLOBAL_CLUSTER
from meridian.core.hlc import Clock, SkewMonitor
from meridian.core.status import GlobalObservation, PeerObservation, ReplicaObservation

log = logging.getLogger(__name__)

PROBE_STREAM = "MERIDIAN_PROBE"
PROBE_SUBJECT = "meridian.probe"


def ping_subject(region: str) -> str:
    return f"meridian.v1.agent.{region}.ping"


def describe_nats_error(exc: BaseException) -> str:
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, nats.errors.NoRespondersError):
        return "no responders"
    if isinstance(exc, nats.js.errors.APIError):
        return f"JetStream error {exc.err_code or exc.code}: {exc.description}"
    return f"{type(exc).__name__}: {exc}"


class GlobalProbe:
    """Checks that a quorum of the `global` cluster accepts writes from this region."""

    def __init__(
        self, conn: BackboneConnection, region: str, *, replicas: int, timeout_s: float
    ) -> None:
        self.conn = conn
        self.region = region
        self.replicas = replicas
        self.timeout_s = timeout_s
        self._stream_ready = False

    async def _ensure_stream(self) -> None:
        js = self.conn.jetstream(self.timeout_s)
        config = api.StreamConfig(
            name=PROBE_STREAM,
            description="Meridian agents' quorum probe of the global cluster",
            subjects=[f"{PROBE_SUBJECT}.>"],
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            max_msgs_per_subject=1,
            placement=api.Placement(cluster=GLOBAL_CLUSTER),
        )
        await add_stream_if_missing(js, config)
        self._stream_ready = True

    async def observe(self) -> GlobalObservation:
        """One probe round. Never raises for network trouble: the reason is in the result."""
        start = time.perf_counter()
        try:
            if not self._stream_ready:
                await self._ensure_stream()
            js = self.conn.jetstream(self.timeout_s)
            await js.publish(
                f"{PROBE_SUBJECT}.{self.region}",
                datetime.now(UTC).isoformat().encode(),
                timeout=self.timeout_s,
            )
        except asyncio.CancelledError:
            raise
        except NATS_FAILURES as exc:
            if isinstance(exc, nats.errors.NoRespondersError):
                self._stream_ready = False  # the stream may be gone; recreate next round
            return GlobalObservation(
                quorum_reachable=False,
                reason=(
                    f"quorum write to stream {PROBE_STREAM} in cluster {GLOBAL_CLUSTER} "
                    f"failed after {time.perf_counter() - start:.1f}s: {describe_nats_error(exc)}; "
                    "no quorum of global replicas is reachable from this region"
                ),
                leader=await self._leader_hint(),
            )
        rtt = (time.perf_counter() - start) * 1000
        leader = ""
        replicas: tuple[ReplicaObservation, ...] = ()
        try:
            info = await self.conn.jetstream(self.timeout_s).stream_info(PROBE_STREAM)
            if info.cluster is not None:
                leader = info.cluster.leader or ""
                replicas = tuple(
                    ReplicaObservation(
                        server=p.name or "",
                        current=bool(p.current),
                        active_ms=(p.active or 0) / 1e6,
                        lag=int(p.lag or 0),
                        offline=bool(p.offline),
                    )
                    for p in info.cluster.replicas or []
                )
        except asyncio.CancelledError:
            raise
        except NATS_FAILURES as exc:
            log.debug("probe stream info failed: %s", describe_nats_error(exc))
        return GlobalObservation(
            quorum_reachable=True,
            leader=leader,
            replicas=replicas,
            write_rtt_ms=rtt,
            reason="",
        )

    async def _leader_hint(self) -> str:
        try:
            js = self.conn.jetstream(min(self.timeout_s, 0.5))
            info = await js.stream_info(PROBE_STREAM)
        except asyncio.CancelledError:
            raise
        except NATS_FAILURES:
            return ""
        return (info.cluster.leader or "") if info.cluster else ""


class PeerPinger:
    """Answers pings for this region and pings the agents of the other regions."""

    def __init__(
        self,
        conn: BackboneConnection,
        region: str,
        agent_id: str,
        peers: list[str],
        *,
        timeout_s: float,
        clock: Clock,
        skew: SkewMonitor,
    ) -> None:
        self.conn = conn
        self.region = region
        self.agent_id = agent_id
        self.peers = peers
        self.timeout_s = timeout_s
        self.clock = clock
        self.skew = skew
        self._sub: Subscription | None = None
        self._last_seen: dict[str, datetime] = {}

    async def serve(self) -> None:
        """Start answering pings addressed to this region (a queue group: any agent here)."""

        async def answer(msg: Msg) -> None:
            body = json.dumps(
                {"region": self.region, "agent_id": self.agent_id, "now_ms": self.clock.now_ms()}
            ).encode()
            await msg.respond(body)

        self._sub = await self.conn.nc.subscribe(
            ping_subject(self.region), queue="meridian-agents", cb=answer
        )

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("unsubscribe ping responder: %s", exc)

    async def observe(self) -> tuple[PeerObservation, ...]:
        """Ping every peer concurrently; each result carries the RTT or the reason."""
        results = await asyncio.gather(*(self._ping(p) for p in self.peers))
        return tuple(results)

    async def _ping(self, peer: str) -> PeerObservation:
        start = time.perf_counter()
        sent_ms = self.clock.now_ms()
        try:
            msg = await self.conn.nc.request(ping_subject(peer), b"", timeout=self.timeout_s)
            reply = json.loads(msg.data)
            if reply.get("region") != peer:
                raise ValueError(f"answer came from region {reply.get('region')!r}")
            peer_ms = reply.get("now_ms")
            if isinstance(peer_ms, int) and not isinstance(peer_ms, bool):
                # Cristian's estimate: the peer read its clock halfway through the round trip.
                offset = peer_ms - (sent_ms + self.clock.now_ms()) / 2
                self.skew.observe(peer, offset)
        except asyncio.CancelledError:
            raise
        except (nats.errors.Error, OSError, TimeoutError, ValueError) as exc:
            return PeerObservation(
                region=peer,
                reachable=False,
                reason=(
                    f"agent in {peer} did not answer a ping within {self.timeout_s:g}s "
                    f"({describe_nats_error(exc)}); the gateway to {peer} may be down"
                ),
                last_seen=self._last_seen.get(peer),
            )
        now = datetime.now(UTC)
        self._last_seen[peer] = now
        return PeerObservation(
            region=peer,
            reachable=True,
            rtt_ms=(time.perf_counter() - start) * 1000,
            reason="",
            last_seen=now,
            clock_offset_ms=self.skew.offsets.get(peer, 0.0),
        )
