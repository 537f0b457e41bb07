"""What an agent observes of its region and the others, and how healthy that makes it.

These are plain values; the agent's monitor fills them in and the API layer
turns them into protobuf. :func:`judge_health` is the single rule that decides
SERVING / DEGRADED / NOT_SERVING, used by the Health API and the sandbox alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum


@dataclass(frozen=True)
class NatsObservation:
    connected: bool = False
    server_url: str = ""
    server_name: str = ""
    cluster: str = ""
    server_version: str = ""
    rtt_ms: float = 0.0
    reason: str = "not connected yet"


@dataclass(frozen=True)
class JetStreamObservation:
    available: bool = False
    meta_leader: str = ""
    meta_cluster_size: int = 0
    meta_peers_current: int = 0
    reason: str = "not checked yet"


@dataclass(frozen=True)
class ReplicaObservation:
    server: str
    current: bool
    active_ms: float
    lag: int
    offline: bool


@dataclass(frozen=True)
class GlobalObservation:
    quorum_reachable: bool = False
    leader: str = ""
    replicas: tuple[ReplicaObservation, ...] = ()
    write_rtt_ms: float = 0.0
    reason: str = "not checked yet"


@dataclass(frozen=True)
class PeerObservation:
    region: str
    reachable: bool = False
    rtt_ms: float = 0.0
    reason: str = "not checked yet"
    last_seen: datetime | None = None
    #: The peer's clock minus ours, estimated from the last ping.
    clock_offset_ms: float = 0.0


@dataclass(frozen=True)
class AgentObservation:
    region: str
    agent_id: str
    version: str
    started_at: datetime
    observed_at: datetime
    nats: NatsObservation = field(default_factory=NatsObservation)
    jetstream: JetStreamObservation = field(default_factory=JetStreamObservation)
    global_: GlobalObservation = field(default_factory=GlobalObservation)
    peers: tuple[PeerObservation, ...] = ()
    #: Why this agent refuses writes that need the clock ("" when it doesn't).
    clock_skew: str = ""


class Health(Enum):
    SERVING = "SERVING"
    DEGRADED = "DEGRADED"
    NOT_SERVING = "NOT_SERVING"


def judge_health(obs: AgentObservation) -> tuple[Health, tuple[str, ...]]:
    """SERVING when everything answers; DEGRADED when the agent still serves its region
    but `global` or a peer region is out of reach; NOT_SERVING without NATS or JetStream.
    The reasons say what is wrong, one line each."""
    if not obs.nats.connected:
        return Health.NOT_SERVING, (f"NATS: {obs.nats.reason}",)
    if not obs.jetstream.available:
        return Health.NOT_SERVING, (f"JetStream: {obs.jetstream.reason}",)
    reasons: list[str] = []
    if not obs.global_.quorum_reachable:
        reasons.append(f"global: {obs.global_.reason}")
    reasons.extend(f"peer {p.region}: {p.reason}" for p in obs.peers if not p.reachable)
    if obs.clock_skew:
        reasons.append(f"clock: {obs.clock_skew}")
    if reasons:
        return Health.DEGRADED, tuple(reasons)
    return Health.SERVING, ()
