"""Health-aware invocation: choosing an instance or a region, resilience, and
failover through peer agents (DESIGN §5).

One call (:meth:`Invoker.invoke`) goes:

1. through the target service's **bulkhead** (full: RESOURCE_EXHAUSTED at once);
2. to a **region**: the local one while it has a healthy, non-ejected instance,
   else the others by measured RTT (``core.resilience.balancer``); each
   region's **circuit breaker** per (service, region) must grant a permit;
3. in the local region to the healthy instance with the fewest outstanding
   requests, outside **outlier ejection**; in another region to that region's
   agents over NATS (``mg.invoke.<region>``, a queue group), which pick one of
   their own instances and never forward further;
4. on failure, maybe again: an attempt that never reached an instance
   (connection refused, no agent answering, no instance there) is re-routed at
   once, since it cannot run twice; any other failure is **retried** only for
   idempotent verbs or requests with an ``Idempotency-Key``, within the
   deadline and the service's **retry budget** (``core.resilience.retry``);
5. when every attempt failed, the configured **fallback**, if any.

The state machines are in ``core.resilience``; this module feeds them
monotonic time and outcomes. The I/O is in :mod:`.upstream` (this region's
instances) and :mod:`.forward` (other regions' agents).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from meridian.agent.calls import AttemptFailed, Call, NoRoute, Reply
from meridian.agent.forward import PeerForwarder
from meridian.agent.registry import RegistryComponent
from meridian.backbone.connection import BackboneConnection
from meridian.config.model import InvocationConfig
from meridian.core.errors import (
    DeadlineExceededError,
    MeridianError,
    ResourceExhaustedError,
    UnavailableError,
)
from meridian.core.registry import InstanceView
from meridian.core.resilience.balancer import Candidate, RegionView, pick_instance, region_order
from meridian.core.resilience.breaker import BreakerRegistry, BreakerState, Transition
from meridian.core.resilience.budget import RetryBudget
from meridian.core.resilience.bulkhead import BulkheadRegistry
from meridian.core.resilience.outlier import CallOutcome, OutlierDetector, OutlierEvent
from meridian.core.resilience.overrides import PolicySet
from meridian.core.resilience.policy import ResiliencePolicy
from meridian.core.resilience.retry import (
    decide,
    grpc_request_retryable,
    http_request_retryable,
    outcome_retryable,
)
from meridian.observability.metrics import AgentMetrics

MAX_REROUTES = 8
log = logging.getLogger(__name__)

_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


class Invoker:
    """The agent's router. A Component (start/run/stop)."""

    name = "invoker"

    def __init__(
        self,
        conn: BackboneConnection,
        registry: RegistryComponent,
        policies: PolicySet,
        *,
        region: str,
        config: InvocationConfig,
        metrics: AgentMetrics,
        peer_rtts: Callable[[], Mapping[str, float | None]],
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.conn = conn
        self.registry = registry
        self.policies = policies
        self.region = region
        self.config = config
        self.metrics = metrics
        self.peer_rtts = peer_rtts
        self.rand = rand
        self.breakers = BreakerRegistry(
            lambda service: policies.resolve(service).breaker, on_transition=self._on_transition
        )
        self.bulkheads = BulkheadRegistry(lambda service: policies.resolve(service).bulkhead)
        self._budgets: dict[str, RetryBudget] = {}
        self._outliers: dict[str, OutlierDetector] = {}
        self._outstanding: Counter[str] = Counter()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._gauged: set[str] = set()
        self.upstream = registry.upstream  # owned (started, closed) by the registry
        self.forwarder = PeerForwarder(
            conn,
            region=region,
            peer_rtts=peer_rtts,
            policy_for=self.policy,
            serve_locally=self._serve_locally,
        )

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to start: the registry starts the connections to instances."""

    async def run(self) -> None:
        await self.forwarder.run()

    async def stop(self, grace_s: float) -> None:
        await self.forwarder.stop(grace_s)

    # -- the call -------------------------------------------------------------

    def policy(self, call: Call) -> ResiliencePolicy:
        return self.policies.resolve(call.service, call.route)

    async def invoke(
        self, call: Call, deadline: float, policy: ResiliencePolicy | None = None
    ) -> Reply:
        """Route ``call`` until ``deadline`` (monotonic); see the module docstring.
        ``policy``: the call's policy if the caller resolved it already."""
        policy = policy or self.policy(call)
        bulkhead = self.bulkheads.get(call.service)
        lease = bulkhead.try_acquire()
        if lease is None:
            self.metrics.bulkhead_rejected.labels(self.region, call.service).inc()
            self.metrics.invocations.labels(self.region, call.service, "", "rejected").inc()
            raise ResourceExhaustedError(
                f"bulkhead of service {call.service!r} is full: {bulkhead.limit} calls in "
                "flight; the call was not sent"
            )
        if call.service not in self._gauged:
            # Read when scraped, not set on every call (a Gauge.set takes a lock).
            self._gauged.add(call.service)
            self._child(self.metrics.bulkhead_in_flight, call.service).set_function(
                lambda service=call.service: self.bulkheads.get(service).in_flight
            )
        start = time.perf_counter()
        outcome, served_by = "ok", ""
        try:
            reply = await self._with_retries(call, policy, deadline)
            served_by = reply.region
            outcome = "http_5xx" if reply.outcome() is not CallOutcome.SUCCESS else "ok"
            return reply
        except MeridianError as exc:
            outcome = "deadline" if isinstance(exc, DeadlineExceededError) else "unavailable"
            fb = policy.fallback
            if not fb.enabled:
                raise
            outcome = "fallback"
            return Reply(
                body=fb.body.encode(),
                headers=[("Content-Type", fb.content_type), ("Meridian-Fallback", "1")],
                status=fb.http_status,
                grpc_code=fb.grpc_code if call.protocol == "grpc" else "",
                grpc_details=exc.message if call.protocol == "grpc" else "",
                region=self.region,
                fallback=True,
            )
        finally:
            lease.release()
            self._child(self.metrics.invocations, call.service, served_by, outcome).inc()
            self._child(self.metrics.invocation_seconds, call.service).observe(
                time.perf_counter() - start
            )

    async def _with_retries(self, call: Call, policy: ResiliencePolicy, deadline: float) -> Reply:
        budget = self._budget(call.service, policy)
        budget.deposit(time.monotonic())
        if call.protocol == "grpc":
            retryable = grpc_request_retryable(has_idempotency_key=call.has_idempotency_key)
        else:
            retryable = http_request_retryable(
                call.verb, has_idempotency_key=call.has_idempotency_key
            )
        avoid_instances: set[str] = set()
        avoid_regions: set[str] = set()
        attempts = reroutes = 0
        while True:
            attempts += 1
            kind = "first" if attempts == 1 else "retry"
            self._child(self.metrics.invocation_attempts, call.service, kind).inc()
            try:
                reply = await self._attempt(
                    call, policy, deadline, avoid_instances, avoid_regions, local_only=False
                )
            except AttemptFailed as failed:
                if failed.instance_id:
                    avoid_instances.add(failed.instance_id)
                elif failed.region != self.region:
                    avoid_regions.add(failed.region)
                if failed.not_sent and reroutes < MAX_REROUTES:
                    reroutes += 1
                    attempts -= 1
                    continue
                last: Reply | UnavailableError = UnavailableError(
                    f"calling {call.service!r}: {failed.reason}"
                )
                again = outcome_retryable(policy.retry, transport_failure=True)
            except NoRoute as exc:
                raise UnavailableError(str(exc)) from None
            else:
                reply.attempts = attempts
                if reply.grpc_code:
                    again = outcome_retryable(policy.retry, grpc_code=reply.grpc_code)
                else:
                    again = outcome_retryable(policy.retry, http_status=reply.status)
                if not again:
                    return reply
                last = reply
            now = time.monotonic()
            decision = decide(
                policy.retry,
                attempts_made=attempts,
                request_retryable=retryable,
                outcome_retryable=again,
                now=now,
                deadline=deadline,
                rand=self.rand,
                budget=budget,
            )
            self.metrics.retry_decisions.labels(
                self.region, call.service, decision.verdict.value
            ).inc()
            if not decision.retry:
                if isinstance(last, Reply):
                    return last
                if now >= deadline:
                    raise DeadlineExceededError(f"calling {call.service!r}: the deadline passed")
                raise last
            await asyncio.sleep(decision.delay_s)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(region, *labels)``, made once: prometheus_client's
        labels() showed up in profiles of the call path."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.region, *labels)
        return child

    def _budget(self, service: str, policy: ResiliencePolicy) -> RetryBudget:
        budget = self._budgets.get(service)
        if budget is None or budget.policy != policy.budget:
            budget = self._budgets[service] = RetryBudget(policy.budget)
        return budget

    def _outlier(self, service: str, policy: ResiliencePolicy) -> OutlierDetector:
        detector = self._outliers.get(service)
        if detector is None or detector.policy != policy.outlier:

            def report(event: OutlierEvent) -> None:
                log.info(
                    "outlier %s: %s %s (%s)", service, event.instance, event.kind, event.reason
                )
                self.metrics.outlier_events.labels(
                    self.region, service, event.instance, event.kind.value
                ).inc()

            detector = self._outliers[service] = OutlierDetector(policy.outlier, on_event=report)
        return detector

    def _on_transition(self, service: str, region: str, t: Transition) -> None:
        log.info("breaker %s/%s: %s -> %s (%s)", service, region, t.source, t.target, t.reason)
        m = self.metrics
        m.breaker_state.labels(self.region, service, region).set(_BREAKER_GAUGE[t.target])
        m.breaker_transitions.labels(
            self.region, service, region, t.source.value, t.target.value
        ).inc()

    async def _attempt(
        self,
        call: Call,
        policy: ResiliencePolicy,
        deadline: float,
        avoid_instances: set[str],
        avoid_regions: set[str],
        *,
        local_only: bool,
    ) -> Reply:
        now = time.monotonic()
        every = [v for v in self.registry.instances(call.service) if v.protocol == call.protocol]
        detector = self._outlier(call.service, policy)
        detector.set_instances([v.instance_id for v in every if v.region == self.region], now)
        ejected = detector.ejected(now)
        local = [
            v for v in every if v.region == self.region and v.instance_id not in avoid_instances
        ]
        if local_only:
            order = [self.region]
        else:
            counts: dict[str, list[int]] = {}
            for v in every:
                usable = v.healthy and v.instance_id not in avoid_instances
                if v.region == self.region:
                    usable = usable and v.instance_id not in ejected
                c = counts.setdefault(v.region, [0, 0])
                c[0] += usable
                c[1] += 1
            rtts = self.peer_rtts() if len(counts) > 1 or self.region not in counts else {}
            views = [RegionView(r, u, t, rtts.get(r)) for r, (u, t) in counts.items()]
            order = [
                r
                for r in region_order(self.region, views, policy.balancer)
                if r not in avoid_regions
            ]
        refused: list[str] = []
        for region in order:
            breaker = self.breakers.get(call.service, region)
            permit = breaker.allow(now)
            if permit is None:
                refused.append(region)
                continue
            try:
                if region == self.region:
                    reply = await self._call_local(call, policy, deadline, local, ejected, detector)
                else:
                    reply = await self.forwarder.forward(region, call, policy, deadline)
            except AttemptFailed:
                breaker.record(permit, False, time.monotonic())
                raise
            except BaseException:
                breaker.release(permit, time.monotonic())
                raise
            breaker.record(permit, reply.outcome() is CallOutcome.SUCCESS, time.monotonic())
            return reply
        if refused:
            raise NoRoute(
                f"no instance of {call.service!r} can be called: circuit breakers open for "
                f"{', '.join(refused)}"
            )
        if local_only:
            raise AttemptFailed(
                f"no healthy instance of {call.service!r} in {self.region}",
                not_sent=True,
                region=self.region,
            )
        raise NoRoute(f"no healthy instance of service {call.service!r} in any region")

    async def _call_local(
        self,
        call: Call,
        policy: ResiliencePolicy,
        deadline: float,
        local: list[InstanceView],
        ejected: frozenset[str],
        detector: OutlierDetector,
    ) -> Reply:
        candidates = [
            Candidate(v.instance_id, v.healthy, self._outstanding[v.instance_id]) for v in local
        ]
        chosen = pick_instance(candidates, ejected=ejected, rand=self.rand)
        if chosen is None:
            raise AttemptFailed(
                f"no healthy instance of {call.service!r} in {self.region}",
                not_sent=True,
                region=self.region,
            )
        view = next(v for v in local if v.instance_id == chosen.instance)
        iid = view.instance_id
        self._outstanding[iid] += 1
        try:
            reply = await self.upstream.call(call, policy, deadline, view)
        except AttemptFailed as failed:
            detector.record(iid, CallOutcome.GATEWAY_ERROR, time.monotonic())
            if failed.not_sent:
                self.registry.report_unreachable(iid)
            raise
        finally:
            self._outstanding[iid] -= 1
            if self._outstanding[iid] <= 0:
                del self._outstanding[iid]
        detector.record(iid, reply.outcome(), time.monotonic())
        reply.region, reply.instance_id = self.region, iid
        return reply

    async def _serve_locally(self, call: Call, deadline: float) -> Reply:
        """A call forwarded by another region's agent: one of our own instances,
        re-routed among them if one refuses; never forwarded again."""
        bulkhead = self.bulkheads.get(call.service)
        lease = bulkhead.try_acquire()
        if lease is None:
            self.metrics.bulkhead_rejected.labels(self.region, call.service).inc()
            raise ResourceExhaustedError(
                f"bulkhead of service {call.service!r} in {self.region} is full"
            )
        avoid: set[str] = set()
        policy = self.policy(call)
        try:
            for _ in range(MAX_REROUTES):
                try:
                    return await self._attempt(
                        call, policy, deadline, avoid, set(), local_only=True
                    )
                except AttemptFailed as failed:
                    if not failed.not_sent or not failed.instance_id:
                        raise
                    avoid.add(failed.instance_id)
            raise AttemptFailed(
                f"no instance of {call.service!r} in {self.region} accepted the call",
                not_sent=True,
                region=self.region,
            )
        finally:
            lease.release()
