"""Pure tests of the health rule and of the observation's wire form."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from meridian.core.status import (
    AgentObservation,
    GlobalObservation,
    Health,
    JetStreamObservation,
    NatsObservation,
    PeerObservation,
    ReplicaObservation,
    judge_health,
)
from meridian.transport.api import observation_to_proto

STARTED = datetime(2025, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
OBSERVED = datetime(2025, 3, 1, 12, 5, 30, 125_000, tzinfo=UTC)
LAST_SEEN = datetime(2025, 3, 1, 12, 5, 29, 500_000, tzinfo=UTC)


def healthy() -> AgentObservation:
    """An agent of us-east that sees everything it should."""
    return AgentObservation(
        region="us-east",
        agent_id="agent-us-east-7f3a",
        version="0.1.0",
        started_at=STARTED,
        observed_at=OBSERVED,
        nats=NatsObservation(
            connected=True,
            server_url="nats://127.0.0.1:14000",
            server_name="us-east-1",
            cluster="us-east",
            server_version="2.12.1",
            rtt_ms=0.4,
            reason="",
        ),
        jetstream=JetStreamObservation(
            available=True,
            meta_leader="global-us-east",
            meta_cluster_size=3,
            meta_peers_current=3,
            reason="",
        ),
        global_=GlobalObservation(
            quorum_reachable=True,
            leader="global-eu-west",
            replicas=(
                ReplicaObservation("global-us-east", True, 12.5, 0, False),
                ReplicaObservation("global-ap-south", False, 4100.0, 17, True),
            ),
            write_rtt_ms=71.0,
            reason="",
        ),
        peers=(
            PeerObservation("eu-west", reachable=True, rtt_ms=70.2, reason="", last_seen=LAST_SEEN),
            PeerObservation("ap-south", reachable=True, rtt_ms=200.9, reason="", last_seen=None),
        ),
    )


def without_peer(obs: AgentObservation, region: str, reason: str) -> AgentObservation:
    peers = tuple(
        dataclasses.replace(p, reachable=False, reason=reason) if p.region == region else p
        for p in obs.peers
    )
    return dataclasses.replace(obs, peers=peers)


# -- judge_health ----------------------------------------------------------------


def test_everything_answering_is_serving_without_reasons() -> None:
    assert judge_health(healthy()) == (Health.SERVING, ())


def test_no_peers_configured_is_still_serving() -> None:
    assert judge_health(dataclasses.replace(healthy(), peers=())) == (Health.SERVING, ())


def test_without_nats_not_serving_with_the_nats_reason() -> None:
    obs = dataclasses.replace(
        healthy(), nats=NatsObservation(connected=False, reason="connection refused")
    )
    health, reasons = judge_health(obs)
    assert health is Health.NOT_SERVING
    assert reasons == ("NATS: connection refused",)


def test_without_nats_the_other_failures_are_not_listed() -> None:
    # NATS down explains everything else; listing every peer would bury the cause.
    obs = without_peer(healthy(), "eu-west", "no reply in 1.5s")
    obs = dataclasses.replace(
        obs,
        nats=NatsObservation(connected=False, reason="connection refused"),
        jetstream=JetStreamObservation(available=False, reason="no responders"),
        global_=GlobalObservation(quorum_reachable=False, reason="timeout"),
    )
    health, reasons = judge_health(obs)
    assert health is Health.NOT_SERVING
    assert len(reasons) == 1
    assert reasons[0].startswith("NATS:")


def test_default_observation_is_not_serving_because_of_nats() -> None:
    obs = AgentObservation(
        region="us-east",
        agent_id="a",
        version="0.1.0",
        started_at=STARTED,
        observed_at=OBSERVED,
    )
    health, reasons = judge_health(obs)
    assert health is Health.NOT_SERVING
    assert reasons == ("NATS: not connected yet",)


def test_without_jetstream_not_serving_with_the_jetstream_reason() -> None:
    obs = dataclasses.replace(
        healthy(),
        jetstream=JetStreamObservation(available=False, reason="JetStream not enabled"),
        global_=GlobalObservation(quorum_reachable=False, reason="timeout"),
    )
    health, reasons = judge_health(obs)
    assert health is Health.NOT_SERVING
    assert reasons == ("JetStream: JetStream not enabled",)


def test_unreachable_quorum_is_degraded_with_a_global_reason() -> None:
    obs = dataclasses.replace(
        healthy(),
        global_=GlobalObservation(quorum_reachable=False, reason="no quorum write in 2.0s"),
    )
    health, reasons = judge_health(obs)
    assert health is Health.DEGRADED
    assert reasons == ("global: no quorum write in 2.0s",)


def test_each_unreachable_peer_is_listed_by_region() -> None:
    obs = without_peer(healthy(), "eu-west", "no reply in 1.5s")
    obs = without_peer(obs, "ap-south", "no responders")
    health, reasons = judge_health(obs)
    assert health is Health.DEGRADED
    assert reasons == ("peer eu-west: no reply in 1.5s", "peer ap-south: no responders")


def test_reachable_peers_are_not_listed() -> None:
    health, reasons = judge_health(without_peer(healthy(), "ap-south", "no responders"))
    assert health is Health.DEGRADED
    assert reasons == ("peer ap-south: no responders",)


def test_global_reason_comes_before_peer_reasons_in_peer_order() -> None:
    obs = dataclasses.replace(
        healthy(),
        global_=GlobalObservation(quorum_reachable=False, reason="timeout"),
        peers=(
            PeerObservation("ap-south", reason="no responders"),
            PeerObservation("eu-west", reachable=True),
            PeerObservation("sa-east", reason="no reply in 1.5s"),
        ),
    )
    health, reasons = judge_health(obs)
    assert health is Health.DEGRADED
    assert reasons == (
        "global: timeout",
        "peer ap-south: no responders",
        "peer sa-east: no reply in 1.5s",
    )


# -- observation_to_proto --------------------------------------------------------


def test_proto_carries_identity_and_timestamps() -> None:
    obs = healthy()
    msg = observation_to_proto(obs)
    assert msg.region == obs.region
    assert msg.agent_id == obs.agent_id
    assert msg.version == obs.version
    assert msg.HasField("started_at")
    assert msg.HasField("observed_at")
    assert msg.started_at.ToDatetime(tzinfo=UTC) == obs.started_at
    assert msg.observed_at.ToDatetime(tzinfo=UTC) == obs.observed_at


def test_proto_carries_nats() -> None:
    obs = healthy()
    nats = observation_to_proto(obs).nats
    assert nats.connected == obs.nats.connected
    assert nats.server_url == obs.nats.server_url
    assert nats.server_name == obs.nats.server_name
    assert nats.cluster == obs.nats.cluster
    assert nats.server_version == obs.nats.server_version
    assert nats.rtt_ms == pytest.approx(obs.nats.rtt_ms)
    assert nats.reason == obs.nats.reason


def test_proto_carries_an_unconnected_nats_reason() -> None:
    obs = dataclasses.replace(healthy(), nats=NatsObservation(reason="connection refused"))
    nats = observation_to_proto(obs).nats
    assert nats.connected is False
    assert nats.reason == "connection refused"


def test_proto_carries_jetstream() -> None:
    obs = healthy()
    js = observation_to_proto(obs).jetstream
    assert js.available == obs.jetstream.available
    assert js.meta_leader == obs.jetstream.meta_leader
    assert js.meta_cluster_size == obs.jetstream.meta_cluster_size
    assert js.meta_peers_current == obs.jetstream.meta_peers_current
    assert js.reason == obs.jetstream.reason


def test_proto_carries_global_with_every_replica_in_order() -> None:
    obs = healthy()
    # `global` is a Python keyword, so the field is reached with getattr.
    glob = getattr(observation_to_proto(obs), "global")
    assert glob.quorum_reachable == obs.global_.quorum_reachable
    assert glob.leader == obs.global_.leader
    assert glob.write_rtt_ms == pytest.approx(obs.global_.write_rtt_ms)
    assert glob.reason == obs.global_.reason
    got = [(r.server, r.current, r.active_ms, r.lag, r.offline) for r in glob.replicas]
    want = [(r.server, r.current, r.active_ms, r.lag, r.offline) for r in obs.global_.replicas]
    assert got == want


def test_proto_carries_unreachable_global_reason() -> None:
    obs = dataclasses.replace(
        healthy(), global_=GlobalObservation(quorum_reachable=False, reason="timeout")
    )
    glob = getattr(observation_to_proto(obs), "global")
    assert glob.quorum_reachable is False
    assert glob.reason == "timeout"
    assert list(glob.replicas) == []


def test_proto_carries_every_peer_in_order() -> None:
    obs = without_peer(healthy(), "ap-south", "no responders")
    peers = observation_to_proto(obs).peers
    assert [(p.region, p.reachable, p.reason) for p in peers] == [
        (p.region, p.reachable, p.reason) for p in obs.peers
    ]
    for got, want in zip(peers, obs.peers, strict=True):
        assert got.rtt_ms == pytest.approx(want.rtt_ms)


def test_peer_last_seen_set_and_unset() -> None:
    eu, ap = observation_to_proto(healthy()).peers
    assert eu.HasField("last_seen")
    assert eu.last_seen.ToDatetime(tzinfo=UTC) == LAST_SEEN
    # Never seen stays absent on the wire, not the epoch.
    assert not ap.HasField("last_seen")


def test_proto_survives_serialisation() -> None:
    msg = observation_to_proto(healthy())
    again = type(msg).FromString(msg.SerializeToString())
    assert again == msg
