"""Health-aware invocation: choosing an instance or a region, resilience, and
failover through peer agents (DESIGN §5).

One call (:meth:`Invoker.invoke`) goes:

1. through the target service's **bulkhead** (full: RESOURCE_EXHAUSTED at once);
2. to a **region**: the local one while it has a healthy, non-ejected instance,
   else the others by measured RTT (``invocation.resilience.balancer``); each
   region's **circuit breaker** per (service, region) must grant a permit;
3. in the local region to the healthy instance with the fewest outstanding
   requests, outside **outlier ejection**; in another region to that region's
   agents over NATS (``mg.invoke.<region>``, a queue group), which pick one of
   their own instances and never forward further;
4. on failure, maybe again: an attempt that never reached an instance
   (connection refused, no agent answering, no instance there) is re-routed at
   once, since it cannot run twice; any other failure is **retried** only for
   idempotent verbs or requests with an ``Idempotency-Key``, within the
   deadline and the service's **retry budget** (``invocation.resilience.retry``);
5. when every attempt failed, the configured **fallback**, if any.

The state machines are in ``invocation.resilience``; this module feeds them
monotonic time and outcomes. The I/O is in :mod:`.upstream` (this region's
instances) and :mod:`.forward` (other regions' agents).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from meridian.backbone.connection import BackboneConnection
from meridian.backbone.lifecycle import Background
from meridian.config.model import InvocationConfig
from meridian.core.errors import (
    DeadlineExceededError,
    MeridianError,
    ResourceExhaustedError,
    UnavailableError,
)
from meridian.invocation.calls import AttemptFailed, Call, NoRoute, Reply
from meridian.invocation.forwarding import PeerForwarder
from meridian.invocation.model import InstanceView
from meridian.invocation.registry import RegistryComponent
from meridian.invocation.resilience.balancer import (
    Candidate,
    RegionView,
    local_first,
    pick_instance,
    region_order,
)
from meridian.invocation.resilience.breaker import (
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    Transition,
)
from meridian.invocation.resilience.budget import RetryBudget
from meridian.invocation.resilience.bulkhead import Bulkhead, BulkheadRegistry
from meridian.invocation.resilience.outlier import (
    CallOutcome,
    EventKind,
    OutlierDetector,
    OutlierEvent,
)
from meridian.invocation.resilience.overrides import PolicySet
from meridian.invocation.resilience.policy import ResiliencePolicy
from meridian.invocation.resilience.retry import (
    decide,
    grpc_request_retryable,
    http_request_retryable,
    outcome_retryable,
)
from meridian.invocation.versions import (
    by_weight,
    metric_version,
    pinned_version,
    weighted_views,
)
from meridian.observability.metrics import AgentMetrics
from meridian.rollouts.traffic import Traffic

MAX_REROUTES = 8
log = logging.getLogger(__name__)

_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


class _Pool:
    """The instances of one service and protocol, as of one registry view:
    every region's, this region's, and per region (healthy, total)."""

    __slots__ = ("counts", "every", "local")

    def __init__(self, views: list[InstanceView], protocol: str, region: str) -> None:
        self.every = [v for v in views if v.protocol == protocol]
        self.local = [v for v in self.every if v.region == region]
        counts: dict[str, tuple[int, int]] = {}
        for v in self.every:
            healthy, total = counts.get(v.region, (0, 0))
            counts[v.region] = (healthy + v.healthy, total + 1)
        self.counts = counts


class _Target:
    """One service as this router calls it, made on its first call: its retry
    budget, outlier ejection and metric children (the policy set does not change
    under a running agent, so the service's policy is resolved once, here), and
    its bulkhead and breakers from the agent's registries."""

    def __init__(self, invoker: Invoker, service: str) -> None:
        self.service = service
        policy = invoker.policies.resolve(service)
        self._bulkheads = invoker.bulkheads
        self.budget = RetryBudget(policy.budget)
        self.outlier = OutlierDetector(policy.outlier, on_event=invoker._outlier_reporter(service))
        self._breakers = invoker.breakers
        self._pools: dict[str, _Pool] = {}
        self._views: list[InstanceView] | None = None
        self._weighted: dict[str, tuple[Mapping[str, int], _Pool]] = {}
        m, child = invoker.metrics, invoker._child
        self.first_attempts = child(m.invocation_attempts, service, "first")
        self.retries = child(m.invocation_attempts, service, "retry")
        self._seconds: dict[str, Any] = {}
        self._labels: set[str] = set()
        self._results: dict[tuple[str, str, str], Any] = {}
        self._invocations = m.invocations
        self._invocation_seconds = m.invocation_seconds
        self._child = child
        child(m.bulkhead_in_flight, service).set_function(lambda: self.bulkhead.in_flight)

    @property
    def bulkhead(self) -> Bulkhead:
        return self._bulkheads.get(self.service)

    def breaker(self, region: str) -> CircuitBreaker:
        return self._breakers.get(self.service, region)

    def pool(self, views: list[InstanceView], protocol: str, region: str, now: float) -> _Pool:
        """The pool for ``protocol`` from the registry's current ``views`` (the
        registry hands out the same list until something changes); when they
        changed, outlier ejection tracks this region's instances anew."""
        if views is not self._views:
            self._views = views
            self._pools.clear()
            self._weighted.clear()
            self.outlier.set_instances([v.instance_id for v in views if v.region == region], now)
        pool = self._pools.get(protocol)
        if pool is None:
            pool = self._pools[protocol] = _Pool(views, protocol, region)
        return pool

    def weighted_pool(
        self, views: list[InstanceView], protocol: str, region: str, weights: Mapping[str, int]
    ) -> _Pool:
        """The pool when ``region`` routes by ``weights``: its instances of a
        version without weight there are left out (another region serves
        rather than a version rolled back here); made once per registry view
        and weights (the rollouts' view hands out the same mapping until the
        weights change)."""
        held = self._weighted.get(protocol)
        if held is not None and held[0] is weights:
            return held[1]
        pool = _Pool(weighted_views(views, region, weights), protocol, region)
        self._weighted[protocol] = (weights, pool)
        return pool

    def label(self, version: str) -> str:
        return metric_version(self._labels, version)

    def count(self, served_by: str, version: str, outcome: str) -> Any:
        version = self.label(version)
        key = (served_by, version, outcome)
        counter = self._results.get(key)
        if counter is None:
            counter = self._results[key] = self._child(
                self._invocations, self.service, served_by, version, outcome
            )
        return counter

    def seconds(self, version: str) -> Any:
        version = self.label(version)
        hist = self._seconds.get(version)
        if hist is None:
            hist = self._seconds[version] = self._child(
                self._invocation_seconds, self.service, version
            )
        return hist


class Invoker(Background):
    """The agent's router; serves once it takes calls forwarded from other regions."""

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
        shutdown_grace_s: float = 5.0,
        weights_for: Callable[[str, str], Mapping[str, int] | None] = lambda s, r: None,
        traffic: Traffic | None = None,
    ) -> None:
        super().__init__()
        #: (service, region) -> the weights its versions are routed by there.
        self.weights_for = weights_for
        #: What each version served here, for rollout analysis.
        self.traffic = traffic or Traffic()
        self.shutdown_grace_s = shutdown_grace_s
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
        self._targets: dict[str, _Target] = {}
        self._outstanding: Counter[str] = Counter()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.upstream = registry.upstream  # owned (started, closed) by the registry
        self.forwarder = PeerForwarder(
            conn,
            region=region,
            peer_rtts=peer_rtts,
            policy_for=self.policy,
            serve_locally=self._serve_locally,
            max_body=config.max_body_bytes,
        )

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.forwarder.run(), name="forwarder")
            await self.forwarder.subscribed.wait()
            self.serving()

    async def closing(self) -> None:
        await self.forwarder.stop(self.shutdown_grace_s)

    # -- the call -------------------------------------------------------------

    def policy(self, call: Call) -> ResiliencePolicy:
        return self.policies.resolve(call.service, call.route)

    def _target(self, service: str) -> _Target:
        target = self._targets.get(service)
        if target is None:
            target = self._targets[service] = _Target(self, service)
        return target

    async def invoke(
        self, call: Call, deadline: float, policy: ResiliencePolicy | None = None
    ) -> Reply:
        """Route ``call`` until ``deadline`` (monotonic); see the module docstring.
        ``policy``: the call's policy if the caller resolved it already."""
        policy = policy or self.policy(call)
        target = self._target(call.service)
        bulkhead = target.bulkhead
        lease = bulkhead.try_acquire()
        if lease is None:
            self.metrics.bulkhead_rejected.labels(self.region, call.service).inc()
            target.count("", "", "rejected").inc()
            raise ResourceExhaustedError(
                f"bulkhead of service {call.service!r} is full: {bulkhead.limit} calls "
                "in flight; the call was not sent"
            )
        start = time.perf_counter()
        outcome, served_by, version = "ok", "", ""
        try:
            reply = await self._with_retries(call, target, policy, deadline)
            served_by, version = reply.region, reply.version
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
            target.count(served_by, version, outcome).inc()
            target.seconds(version).observe(time.perf_counter() - start)

    async def _with_retries(
        self, call: Call, target: _Target, policy: ResiliencePolicy, deadline: float
    ) -> Reply:
        budget = target.budget
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
            (target.first_attempts if attempts == 1 else target.retries).inc()
            try:
                reply = await self._attempt(
                    call, target, policy, deadline, avoid_instances, avoid_regions,
                    local_only=False,
                )  # fmt: skip
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

    def _outlier_reporter(self, service: str) -> Callable[[OutlierEvent], None]:
        def report(event: OutlierEvent) -> None:
            log.info("outlier %s: %s %s (%s)", service, event.instance, event.kind, event.reason)
            if event.kind is EventKind.EJECTED:
                for version in self._versions_of(service, {event.instance}):
                    self.traffic.ejected(service, version)
            self.metrics.outlier_events.labels(
                self.region, service, event.instance, event.kind.value
            ).inc()

        return report

    def ejected_versions(self, service: str) -> dict[str, int]:
        """Version -> this region's instances of ``service`` ejected as outliers
        right now (rollout analysis)."""
        target = self._targets.get(service)
        if target is None:
            return {}
        return self._versions_of(service, target.outlier.ejected(time.monotonic()))

    def _versions_of(self, service: str, instances: Collection[str]) -> dict[str, int]:
        """Version -> how many of ``instances`` (this region's) run it."""
        return dict(
            Counter(
                v.version
                for v in self.registry.instances(service)
                if v.region == self.region and v.instance_id in instances
            )
        )

    def _on_transition(self, service: str, region: str, t: Transition) -> None:
        log.info("breaker %s/%s: %s -> %s (%s)", service, region, t.source, t.target, t.reason)
        m = self.metrics
        m.breaker_state.labels(self.region, service, region).set(_BREAKER_GAUGE[t.target])
        m.breaker_transitions.labels(
            self.region, service, region, t.source.value, t.target.value
        ).inc()

    def _regions(
        self,
        pool: _Pool,
        policy: ResiliencePolicy,
        ejected: frozenset[str],
        avoid_instances: set[str],
        avoid_regions: set[str],
    ) -> Iterator[str]:
        """The regions to try, best first (``invocation.resilience.balancer``). The
        common case, a usable local region, is decided from the pool's counts
        alone; the other regions are ordered only if the walk gets that far."""
        counts = pool.counts
        if ejected or avoid_instances:
            counts = {}
            for v in pool.every:
                usable = v.healthy and v.instance_id not in avoid_instances
                if v.region == self.region:
                    usable = usable and v.instance_id not in ejected
                healthy, total = counts.get(v.region, (0, 0))
                counts[v.region] = (healthy + usable, total + 1)
        here = counts.get(self.region)
        led = here is not None and local_first(RegionView(self.region, *here), policy.balancer)
        if led:
            yield self.region
        if len(counts) == 1 and led:
            return
        rtts = self.peer_rtts() if len(counts) > 1 or here is None else {}
        views = [RegionView(r, u, t, rtts.get(r)) for r, (u, t) in counts.items()]
        for r in region_order(self.region, views, policy.balancer):
            if r not in avoid_regions and not (led and r == self.region):
                yield r

    async def _attempt(
        self,
        call: Call,
        target: _Target,
        policy: ResiliencePolicy,
        deadline: float,
        avoid_instances: set[str],
        avoid_regions: set[str],
        *,
        local_only: bool,
    ) -> Reply:
        now = time.monotonic()
        views = self.registry.instances(call.service)
        pin = pinned_version(call.headers)
        weights = None
        if pin is None:
            pool = target.pool(views, call.protocol, self.region, now)
            weights = self.weights_for(call.service, self.region)
            if weights is not None:
                pool = target.weighted_pool(views, call.protocol, self.region, weights)
        else:
            # A call pinned to a version sees only that version's instances,
            # here and in the regions it may go to (they apply the pin too).
            pool = _Pool([v for v in views if v.version == pin], call.protocol, self.region)
        ejected = target.outlier.ejected(now)
        local = pool.local
        if avoid_instances:
            local = [v for v in local if v.instance_id not in avoid_instances]
        if local_only:
            order: Iterator[str] = iter((self.region,))
        else:
            order = self._regions(pool, policy, ejected, avoid_instances, avoid_regions)
        refused: list[str] = []
        for region in order:
            breaker = target.breaker(region)
            permit = breaker.allow(now)
            if permit is None:
                refused.append(region)
                continue
            try:
                if region == self.region:
                    reply = await self._call_local(
                        call, target, policy, deadline, local, ejected, weights
                    )
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
        of = f" at version {pin!r}" if pin is not None else ""
        raise NoRoute(f"no healthy instance of service {call.service!r}{of} in any region")

    async def _call_local(
        self,
        call: Call,
        target: _Target,
        policy: ResiliencePolicy,
        deadline: float,
        local: list[InstanceView],
        ejected: frozenset[str],
        weights: Mapping[str, int] | None,
    ) -> Reply:
        if weights is not None:
            local = by_weight(call.service, call.headers, local, ejected, weights, self.rand)
        outstanding = self._outstanding
        candidates = [
            Candidate(v.instance_id, v.healthy, outstanding[v.instance_id]) for v in local
        ]
        chosen = pick_instance(candidates, ejected=ejected, rand=self.rand)
        if chosen is None:
            raise AttemptFailed(
                f"no healthy instance of {call.service!r} in {self.region}",
                not_sent=True,
                region=self.region,
            )
        view = local[candidates.index(chosen)]
        iid = view.instance_id
        outstanding[iid] += 1
        detector = target.outlier
        traffic = self.traffic
        traffic.started(call.service, view.version)
        start = time.perf_counter()
        try:
            reply = await self.upstream.call(call, policy, deadline, view)
        except AttemptFailed as failed:
            detector.record(iid, CallOutcome.GATEWAY_ERROR, time.monotonic())
            traffic.record(call.service, view.version, False, time.perf_counter() - start)
            if failed.not_sent:
                self.registry.report_unreachable(iid)
            raise
        except BaseException:
            traffic.record(call.service, view.version, False, time.perf_counter() - start)
            raise
        finally:
            outstanding[iid] -= 1
            if outstanding[iid] <= 0:
                del outstanding[iid]
        outcome = reply.outcome()
        traffic.record(
            call.service,
            view.version,
            outcome is CallOutcome.SUCCESS,
            time.perf_counter() - start,
        )
        detector.record(iid, outcome, time.monotonic())
        reply.region, reply.instance_id, reply.version = self.region, iid, view.version
        return reply

    async def _serve_locally(self, call: Call, deadline: float) -> Reply:
        """A call forwarded by another region's agent: one of our own instances,
        re-routed among them if one refuses; never forwarded again."""
        target = self._target(call.service)
        lease = target.bulkhead.try_acquire()
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
                        call, target, policy, deadline, avoid, set(), local_only=True
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
