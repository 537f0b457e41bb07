"""Prometheus metrics of the gateway, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: The ``region`` label of a request no region served (none up, or a bad hint).
NO_REGION = "none"


class GatewayMetrics:
    """The gateway's series. One instance per gateway; ``render()`` for ``/metrics``."""

    def __init__(self, regions: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "meridian_gateway_requests",
            "Requests answered, by the region that served them and the HTTP status.",
            ["region", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "meridian_gateway_request_seconds",
            "From a request's arrival to its response's status and headers being sent back "
            "(a stream's body may go on for longer).",
            ["region"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.region_up = Gauge(
            "meridian_gateway_region_up",
            "1 while the region is in rotation.",
            ["region"],
            registry=r,
        )
        self.region_rtt = Gauge(
            "meridian_gateway_region_rtt_seconds",
            "Moving average of the round trip of the region's health checks.",
            ["region"],
            registry=r,
        )
        self.failovers = Counter(
            "meridian_gateway_failovers",
            "Requests served by another region than the one they were meant for "
            "(the hinted region, or the first choice that could not be connected to).",
            ["from_region", "to_region"],
            registry=r,
        )
        self.health_checks = Counter(
            "meridian_gateway_health_checks",
            "Health checks of each region's agent, by result "
            "(ok, unhealthy: an answer other than 200, timeout, unreachable, error).",
            ["region", "result"],
            registry=r,
        )
        for region in regions:
            self.region_up.labels(region).set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
