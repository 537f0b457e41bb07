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
monotonic time and outcomes, and does the I/O (aiohttp, grpc.aio, NATS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import aiohttp
import grpc
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from meridian._pb.meridian.v1 import invocation_pb2 as pb
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
from meridian.core.resilience.deadline import outgoing_headers
from meridian.core.resilience.outlier import (
    CallOutcome,
    OutlierDetector,
    OutlierEvent,
    classify_grpc,
    classify_http,
)
from meridian.core.resilience.overrides import PolicySet
from meridian.core.resilience.policy import ResiliencePolicy
from meridian.core.resilience.retry import (
    attempt_deadline,
    decide,
    grpc_request_retryable,
    http_request_retryable,
    outcome_retryable,
)
from meridian.observability.metrics import AgentMetrics

log = logging.getLogger(__name__)

FORWARD_SUBJECT = "mg.invoke"
FORWARD_QUEUE = "mg-invoke"
#: Re-routes of attempts that never reached an instance, per call.
MAX_REROUTES = 8
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


def forward_subject(region: str) -> str:
    return f"{FORWARD_SUBJECT}.{region}"


@dataclass(frozen=True)
class Call:
    """One invocation as the router sees it, whichever transport it came by."""

    service: str
    #: HTTP: the path after the service name; gRPC: /package.Service/Method.
    route: str
    protocol: str  # "http" | "grpc"
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    verb: str = "POST"
    query: str = ""
    has_idempotency_key: bool = False


@dataclass
class Reply:
    """What the serving instance answered."""

    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200  # HTTP status (200 for any gRPC reply)
    grpc_code: str = ""  # "" for HTTP, "OK" or the code name for gRPC
    grpc_details: str = ""
    region: str = ""
    instance_id: str = ""
    attempts: int = 1
    fallback: bool = False

    def outcome(self) -> CallOutcome:
        return classify_grpc(self.grpc_code) if self.grpc_code else classify_http(self.status)


class _AttemptFailed(Exception):
    """No answer from the target: refused, reset, timed out, or nothing to call."""

    def __init__(self, reason: str, *, not_sent: bool, region: str, instance_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.not_sent = not_sent
        self.region = region
        self.instance_id = instance_id


class _NoRoute(Exception):
    """No region has a usable instance whose breaker grants a call."""


def _clean(headers: Mapping[str, str] | list[tuple[str, str]]) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v) for k, v in items if k.lower() not in HOP_BY_HOP]


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
        self._session: aiohttp.ClientSession | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._served: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def run(self) -> None:
        # Serve calls forwarded by other regions' agents once NATS is up; nats-py
        # keeps the subscription across reconnects.
        await self.conn.wait_connected()
        self._sub = await self.conn.nc.subscribe(
            forward_subject(self.region), queue=FORWARD_QUEUE, cb=self._on_forwarded
        )

    async def stop(self, grace_s: float) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        if self._served:
            await asyncio.wait(self._served, timeout=grace_s)
        if self._session is not None:
            await self._session.close()
        for channel in self._channels.values():
            await channel.close()

    # -- the call -------------------------------------------------------------

    def policy(self, call: Call) -> ResiliencePolicy:
        return self.policies.resolve(call.service, call.route)

    async def invoke(self, call: Call, deadline: float) -> Reply:
        """Route ``call`` until ``deadline`` (monotonic); see the module docstring."""
        policy = self.policy(call)
        bulkhead = self.bulkheads.get(call.service)
        lease = bulkhead.try_acquire()
        if lease is None:
            self.metrics.bulkhead_rejected.labels(self.region, call.service).inc()
            self.metrics.invocations.labels(self.region, call.service, "", "rejected").inc()
            raise ResourceExhaustedError(
                f"bulkhead of service {call.service!r} is full: {bulkhead.limit} calls in "
                "flight; the call was not sent"
            )
        in_flight = self.metrics.bulkhead_in_flight.labels(self.region, call.service)
        in_flight.set(bulkhead.in_flight)
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
            in_flight.set(bulkhead.in_flight)
            self.metrics.invocations.labels(self.region, call.service, served_by, outcome).inc()
            self.metrics.invocation_seconds.labels(self.region, call.service).observe(
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
            self.metrics.invocation_attempts.labels(self.region, call.service, kind).inc()
            try:
                reply = await self._attempt(
                    call, policy, deadline, avoid_instances, avoid_regions, local_only=False
                )
            except _AttemptFailed as failed:
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
            except _NoRoute as exc:
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
            rtts = self.peer_rtts()
            views: dict[str, RegionView] = {}
            for v in every:
                usable = v.healthy and v.instance_id not in avoid_instances
                if v.region == self.region:
                    usable = usable and v.instance_id not in ejected
                prev = views.get(v.region) or RegionView(v.region, 0, 0, rtts.get(v.region))
                views[v.region] = replace(
                    prev, usable=prev.usable + int(usable), total=prev.total + 1
                )
            order = [
                r
                for r in region_order(self.region, views.values(), policy.balancer)
                if r not in avoid_regions
            ]
        refused: list[str] = []
        for region in order:
            breaker = self.breakers.get(call.service, region)
            permit = breaker.allow(now)
            if permit is None:
                refused.append(region)
                continue
            self.metrics.breaker_state.labels(self.region, call.service, region).set(
                _BREAKER_GAUGE[breaker.state]
            )
            try:
                if region == self.region:
                    reply = await self._call_local(call, policy, deadline, local, ejected, detector)
                else:
                    reply = await self._forward(region, call, policy, deadline)
            except _AttemptFailed:
                breaker.record(permit, False, time.monotonic())
                raise
            except BaseException:
                breaker.release(permit, time.monotonic())
                raise
            breaker.record(permit, reply.outcome() is CallOutcome.SUCCESS, time.monotonic())
            return reply
        if refused:
            raise _NoRoute(
                f"no instance of {call.service!r} can be called: circuit breakers open for "
                f"{', '.join(refused)}"
            )
        if local_only:
            raise _AttemptFailed(
                f"no healthy instance of {call.service!r} in {self.region}",
                not_sent=True,
                region=self.region,
            )
        raise _NoRoute(f"no healthy instance of service {call.service!r} in any region")

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
            raise _AttemptFailed(
                f"no healthy instance of {call.service!r} in {self.region}",
                not_sent=True,
                region=self.region,
            )
        view = next(v for v in local if v.instance_id == chosen.instance)
        iid = view.instance_id
        self._outstanding[iid] += 1
        try:
            if call.protocol == "grpc":
                reply = await self._grpc_local(call, policy, deadline, view)
            else:
                reply = await self._http_local(call, policy, deadline, view)
        except _AttemptFailed as failed:
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

    async def _http_local(
        self, call: Call, policy: ResiliencePolicy, deadline: float, view: InstanceView
    ) -> Reply:
        assert self._session is not None
        now = time.monotonic()
        until = attempt_deadline(policy.retry, now, deadline) or deadline
        url = f"http://{view.endpoint}/{call.route}"
        if call.query:
            url += f"?{call.query}"
        headers = list(call.headers)
        headers.extend(outgoing_headers(deadline, now, grpc=False).items())
        headers.append(("Host", view.endpoint))
        limit = self.config.max_body_bytes
        try:
            async with asyncio.timeout(until - now):
                async with self._session.request(
                    call.verb,
                    url,
                    data=call.body or None,
                    headers=headers,
                    allow_redirects=False,
                ) as resp:
                    body = await resp.content.read(limit + 1)
                    if len(body) > limit:
                        raise _AttemptFailed(
                            f"instance {view.instance_id} answered more than {limit} bytes",
                            not_sent=False,
                            region=self.region,
                            instance_id=view.instance_id,
                        )
                    return Reply(
                        body=body, headers=_clean(list(resp.headers.items())), status=resp.status
                    )
        except aiohttp.ClientConnectorError as exc:
            raise _AttemptFailed(
                f"instance {view.instance_id} refused the connection ({exc.os_error})",
                not_sent=True,
                region=self.region,
                instance_id=view.instance_id,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _AttemptFailed(
                f"instance {view.instance_id} failed: {exc}",
                not_sent=False,
                region=self.region,
                instance_id=view.instance_id,
            ) from None
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"calling {call.service!r}: the deadline passed waiting for {view.instance_id}"
                ) from None
            raise _AttemptFailed(
                f"instance {view.instance_id} did not answer within the per-try timeout",
                not_sent=False,
                region=self.region,
                instance_id=view.instance_id,
            ) from None

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = grpc.aio.insecure_channel(endpoint)
        return channel

    async def _grpc_local(
        self, call: Call, policy: ResiliencePolicy, deadline: float, view: InstanceView
    ) -> Reply:
        now = time.monotonic()
        until = attempt_deadline(policy.retry, now, deadline) or deadline
        if until <= now:
            raise DeadlineExceededError(f"calling {call.service!r}: the deadline passed")
        method = self._channel(view.endpoint).unary_unary(call.route)
        rpc = method(call.body, metadata=list(call.headers), timeout=until - now)
        try:
            body = await rpc
            initial = await rpc.initial_metadata()
            trailing = await rpc.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            details = exc.details() or ""
            if code == "UNAVAILABLE" and (
                "connect" in details.lower() or "refused" in details.lower()
            ):
                raise _AttemptFailed(
                    f"instance {view.instance_id} refused the connection ({details})",
                    not_sent=True,
                    region=self.region,
                    instance_id=view.instance_id,
                ) from None
            if code == "DEADLINE_EXCEEDED" and time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"calling {call.service!r}: the deadline passed waiting for {view.instance_id}"
                ) from None
            md = [(k, str(v)) for k, v in (exc.trailing_metadata() or ())]
            return Reply(body=b"", headers=md, grpc_code=code, grpc_details=details)
        md = [(k, str(v)) for k, v in list(initial or ()) + list(trailing or ())]
        return Reply(body=body, headers=md, grpc_code="OK")

    # -- across regions -------------------------------------------------------

    async def _forward(
        self, region: str, call: Call, policy: ResiliencePolicy, deadline: float
    ) -> Reply:
        now = time.monotonic()
        until = attempt_deadline(policy.retry, now, deadline) or deadline
        left = until - now
        if left <= 0:
            raise DeadlineExceededError(f"calling {call.service!r}: the deadline passed")
        fc = pb.ForwardedCall(origin_region=self.region, timeout_ms=max(1, int(left * 1000)))
        headers = [pb.Header(name=k, value=v) for k, v in call.headers]
        if call.protocol == "grpc":
            fc.grpc.CopyFrom(
                pb.GrpcCall(
                    service=call.service,
                    full_method=call.route,
                    metadata=headers,
                    request=call.body,
                )
            )
        else:
            fc.http.CopyFrom(
                pb.InvokeRequest(
                    service=call.service,
                    method=call.route,
                    http_verb=call.verb,
                    query=call.query,
                    headers=headers,
                    body=call.body,
                )
            )
        payload = fc.SerializeToString()
        if len(payload) > self.conn.nc.max_payload:
            raise _AttemptFailed(
                f"the call is too large to forward to {region} "
                f"({len(payload)} bytes; NATS max_payload is {self.conn.nc.max_payload})",
                not_sent=True,
                region=region,
            )
        try:
            msg = await self.conn.nc.request(forward_subject(region), payload, timeout=left)
        except nats.errors.NoRespondersError:
            raise _AttemptFailed(
                f"no agent of {region} answers", not_sent=True, region=region
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            if time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"calling {call.service!r}: the deadline passed waiting for {region}"
                ) from None
            raise _AttemptFailed(
                f"{region}'s agent did not answer in time", not_sent=False, region=region
            ) from None
        except nats.errors.Error as exc:
            raise _AttemptFailed(
                f"cannot reach {region}: {exc}", not_sent=True, region=region
            ) from None
        result = pb.ForwardedResult.FromString(msg.data)
        which = result.WhichOneof("result")
        if which == "error":
            err = result.error
            if err.code == "DEADLINE_EXCEEDED":
                raise DeadlineExceededError(f"{region}: {err.message}")
            raise _AttemptFailed(f"{region}: {err.message}", not_sent=err.not_sent, region=region)
        if which == "grpc":
            g = result.grpc
            return Reply(
                body=g.response,
                headers=[(h.name, h.value) for h in g.metadata],
                grpc_code=g.code,
                grpc_details=g.details,
                region=g.region,
                instance_id=g.instance_id,
            )
        h = result.http
        return Reply(
            body=h.body,
            headers=[(x.name, x.value) for x in h.headers],
            status=h.status,
            region=h.region,
            instance_id=h.instance_id,
        )

    async def _on_forwarded(self, msg: Msg) -> None:
        # nats-py runs a subscription's callbacks one at a time: serve each call
        # in its own task so a slow instance does not hold up the others.
        task = asyncio.create_task(self._serve_forwarded(msg))
        self._served.add(task)
        task.add_done_callback(self._served.discard)

    async def _serve_forwarded(self, msg: Msg) -> None:
        result = pb.ForwardedResult()
        try:
            fc = pb.ForwardedCall.FromString(msg.data)
            if fc.WhichOneof("call") == "grpc":
                g = fc.grpc
                call = Call(
                    service=g.service,
                    route=g.full_method,
                    protocol="grpc",
                    body=g.request,
                    headers=tuple((h.name, h.value) for h in g.metadata),
                )
            else:
                r = fc.http
                call = Call(
                    service=r.service,
                    route=r.method,
                    protocol="http",
                    body=r.body,
                    headers=tuple((h.name, h.value) for h in r.headers),
                    verb=r.http_verb or "POST",
                    query=r.query,
                )
            policy = self.policy(call)
            timeout = fc.timeout_ms / 1000 if fc.timeout_ms else policy.timeout.default_s
            deadline = time.monotonic() + min(timeout, policy.timeout.max_s)
            reply = await self._serve_locally(call, policy, deadline)
            if call.protocol == "grpc":
                result.grpc.CopyFrom(
                    pb.GrpcResult(
                        code=reply.grpc_code,
                        details=reply.grpc_details,
                        response=reply.body,
                        metadata=[pb.Header(name=k, value=v) for k, v in reply.headers],
                        region=reply.region,
                        instance_id=reply.instance_id,
                    )
                )
            else:
                result.http.CopyFrom(
                    pb.InvokeResponse(
                        status=reply.status,
                        headers=[pb.Header(name=k, value=v) for k, v in reply.headers],
                        body=reply.body,
                        region=reply.region,
                        instance_id=reply.instance_id,
                    )
                )
        except _AttemptFailed as failed:
            result.error.CopyFrom(
                pb.ForwardError(code="UNAVAILABLE", message=failed.reason, not_sent=failed.not_sent)
            )
        except _NoRoute as exc:
            result.error.CopyFrom(
                pb.ForwardError(code="UNAVAILABLE", message=str(exc), not_sent=True)
            )
        except ResourceExhaustedError as exc:
            result.error.CopyFrom(
                pb.ForwardError(code=exc.code.value, message=exc.message, not_sent=True)
            )
        except MeridianError as exc:
            result.error.CopyFrom(pb.ForwardError(code=exc.code.value, message=exc.message))
        except Exception as exc:
            log.exception("serving a forwarded call failed")
            result.error.CopyFrom(pb.ForwardError(code="INTERNAL", message=str(exc)[:500]))
        try:
            await msg.respond(result.SerializeToString())
        except nats.errors.Error as exc:
            log.info("cannot answer a forwarded call: %s", exc)

    async def _serve_locally(self, call: Call, policy: ResiliencePolicy, deadline: float) -> Reply:
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
        try:
            for _ in range(MAX_REROUTES):
                try:
                    return await self._attempt(
                        call, policy, deadline, avoid, set(), local_only=True
                    )
                except _AttemptFailed as failed:
                    if not failed.not_sent or not failed.instance_id:
                        raise
                    avoid.add(failed.instance_id)
            raise _AttemptFailed(
                f"no instance of {call.service!r} in {self.region} accepted the call",
                not_sent=True,
                region=self.region,
            )
        finally:
            lease.release()
