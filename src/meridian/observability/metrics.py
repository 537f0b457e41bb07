"""Prometheus metrics of one agent, in a registry of its own (no global state).

Every series carries the agent's ``region`` label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class AgentMetrics:
    """The agent's series. One instance per agent; pass it to what records."""

    def __init__(self, region: str, registry: CollectorRegistry | None = None) -> None:
        self.region = region
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "meridian_api_requests",
            "API calls handled, by service, method, transport and result code.",
            ["region", "service", "method", "transport", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "meridian_api_request_duration_seconds",
            "API call latency inside the agent.",
            ["region", "service", "method", "transport"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.nats_connected = Gauge(
            "meridian_nats_connected",
            "1 when connected to the region's NATS.",
            ["region"],
            registry=r,
        )
        self.global_quorum = Gauge(
            "meridian_global_quorum_reachable",
            "1 when a write to the global cluster was committed by a quorum.",
            ["region"],
            registry=r,
        )
        self.global_write_seconds = Histogram(
            "meridian_global_probe_write_seconds",
            "Round trip of the global quorum probe write.",
            ["region"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5),
            registry=r,
        )
        self.peer_reachable = Gauge(
            "meridian_peer_region_reachable",
            "1 when the peer region's agent answered the last ping.",
            ["region", "peer"],
            registry=r,
        )
        self.peer_rtt = Gauge(
            "meridian_peer_region_rtt_seconds",
            "Round trip of the last ping to the peer region's agent.",
            ["region", "peer"],
            registry=r,
        )

        self.clock_offset = Gauge(
            "meridian_hlc_peer_offset_seconds",
            "The peer region's clock minus this agent's, estimated from pings.",
            ["region", "peer"],
            registry=r,
        )
        self.hlc_rejected = Counter(
            "meridian_hlc_rejected",
            "Peer HLC timestamps more than max_offset ahead of this agent's clock.",
            ["region"],
            registry=r,
        )
        self.cache_lag = Histogram(
            "meridian_cache_invalidation_lag_seconds",
            "From a write's HLC time to its arrival in this agent's cache (the change feed); "
            "an observation across clocks, off by their offset, never a bound.",
            ["region", "keyspace"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.state_staleness = Gauge(
            "meridian_state_staleness_bound_seconds",
            "How stale this agent's view of a keyspace may be now, as proven by quorum "
            "commits (global) or by every writing region's own stream (replicated); "
            "BOUNDED reads with a larger max_staleness are served from it. +Inf while "
            "nothing is proven.",
            ["region", "keyspace"],
            registry=r,
        )
        self.state_served = Counter(
            "meridian_state_reads",
            "State reads by requested and served consistency.",
            ["region", "keyspace", "requested", "served"],
            registry=r,
        )
        lag_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 30)
        self.events_published = Counter(
            "meridian_events_published",
            "Events published in this region: stored, or dropped as a duplicate event id.",
            ["region", "result"],
            registry=r,
        )
        self.events_delivered = Counter(
            "meridian_events_delivered",
            "Event deliveries to subscribers, and what became of them: delivered, acked, "
            "nacked, duplicate (absorbed by the group's inbox), dead_lettered.",
            ["region", "group", "result"],
            registry=r,
        )
        self.event_lag = Histogram(
            "meridian_event_delivery_lag_seconds",
            "From an event's publication in its origin region to its delivery here.",
            ["region", "origin"],
            buckets=lag_buckets,
            registry=r,
        )
        self.invalidation_lag = Histogram(
            "meridian_invalidation_lag_seconds",
            "From a cache invalidation's publication in its origin region to its delivery here.",
            ["region", "origin"],
            buckets=lag_buckets,
            registry=r,
        )
        self.idempotency = Counter(
            "meridian_idempotency_outcomes",
            "Idempotency store outcomes. Begin: new, took_over, in_progress, completed (a "
            "replay), mismatch. Complete: stored. Abort: aborted. Either: fenced.",
            ["region", "outcome"],
            registry=r,
        )

        self.invocations = Counter(
            "meridian_invocations",
            "Service invocations through this agent, by target service, serving region, "
            "the version that served ('' when none did) and outcome (ok, http_5xx, "
            "unavailable, rejected, deadline, fallback).",
            ["region", "service", "target_region", "version", "outcome"],
            registry=r,
        )
        self.invocation_seconds = Histogram(
            "meridian_invocation_duration_seconds",
            "Invocation latency inside the agent, attempts and failover included, by "
            "the version that served.",
            ["region", "service", "version"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.invocation_attempts = Counter(
            "meridian_invocation_attempts",
            "Attempts sent to instances or peer agents, first tries and retries.",
            ["region", "service", "kind"],
            registry=r,
        )
        self.retry_decisions = Counter(
            "meridian_invocation_retry_decisions",
            "Why a failed attempt was or was not retried.",
            ["region", "service", "verdict"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "meridian_circuit_breaker_state",
            "Circuit breaker per (service, region): 0 closed, 1 open, 2 half-open.",
            ["region", "service", "target_region"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "meridian_circuit_breaker_transitions",
            "Circuit breaker transitions per (service, region).",
            ["region", "service", "target_region", "from_state", "to_state"],
            registry=r,
        )
        self.outlier_events = Counter(
            "meridian_outlier_events",
            "Outlier ejections and readmissions of local instances.",
            ["region", "service", "instance", "event"],
            registry=r,
        )
        self.bulkhead_rejected = Counter(
            "meridian_bulkhead_rejected",
            "Calls refused at once because the target's bulkhead was full.",
            ["region", "service"],
            registry=r,
        )
        self.bulkhead_in_flight = Gauge(
            "meridian_bulkhead_in_flight",
            "Calls in flight per target service.",
            ["region", "service"],
            registry=r,
        )
        self.registry_instances = Gauge(
            "meridian_registry_instances",
            "Instances this agent's registry replica knows, by service, region and health.",
            ["region", "service", "instance_region", "health"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
