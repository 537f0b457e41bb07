"""The test harness's ports: never the kernel's source ports, never twice, and a
cluster that loses a port to another listener still starts."""

from __future__ import annotations

import socket
from pathlib import Path

from meridian.testing.nats_server import NatsCluster
from meridian.testing.ports import free_port


def test_ports_come_from_below_the_ephemeral_range_and_are_never_repeated() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert all(p < low for p in ports)


def test_a_span_is_consecutive_and_does_not_overlap_other_ports() -> None:
    first = free_port(span=16)
    later = {free_port() for _ in range(200)}
    assert not later & set(range(first, first + 16))


def test_a_cluster_whose_route_port_was_taken_starts_on_fresh_ports() -> None:
    cluster = NatsCluster("global", ["us-east", "eu-west"])
    taken = cluster.servers[1].cluster_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with cluster:
            assert cluster.servers[1].cluster_port != taken
            assert all(s.running() for s in cluster.servers)
