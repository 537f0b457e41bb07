"""The agent's API, once, for both transports.

Each public method takes a request proto and returns a response proto. The
transports call :meth:`AgentApi.call`, which wraps every call in an
OpenTelemetry server span (a child of the caller's W3C ``traceparent`` when one
is sent), records the request metrics and turns unexpected exceptions into
``INTERNAL`` errors. Handlers in ``grpc/`` and ``http/`` hold no logic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import Token
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from meridian._pb.meridian.v1 import health_pb2, status_pb2
from meridian.core.calls import CALLER, NO_CALLER, Caller
from meridian.core.errors import ErrorCode, InternalError, MeridianError
from meridian.core.status import AgentObservation, Health, judge_health
from meridian.observability.metrics import AgentMetrics
from meridian.observability.tracing import extract_context

if TYPE_CHECKING:
    from meridian.events.service import EventsApi
    from meridian.flags.service import FlagApi
    from meridian.idempotency.service import IdempotencyApi
    from meridian.invocation.service import InvocationApi, RegistryApi
    from meridian.policy import Guard
    from meridian.policy.service import PolicyApi
    from meridian.rollouts.service import RolloutApi
    from meridian.state.service import StateApi

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class ObservationSource(Protocol):
    """Where the API reads the agent's latest observation (the status monitor)."""

    @property
    def latest(self) -> AgentObservation: ...


@dataclass(frozen=True)
class _CallSeries:
    count: Any
    latency: Any

    def record(self, seconds: float) -> None:
        self.count.inc()
        self.latency.observe(seconds)


@dataclass(frozen=True)
class _CallMeta:
    name: str
    attributes: Mapping[str, str]


#: The parent context when the caller sends no ``traceparent``: what extract_context
#: returns then (an empty Context), without copying the carrier first.
_NO_PARENT = Context()


def _parent_context(carrier: Mapping[str, str]) -> Context:
    for k in carrier:
        if k.lower() == "traceparent":
            return extract_context(carrier)
    return _NO_PARENT


def _traceparent(span: trace.Span) -> str:
    """``current_traceparent()`` for the span just made current, formatted directly
    (the W3C form the propagator injects) instead of through a carrier dict."""
    ctx = span.get_span_context()
    if ctx == trace.INVALID_SPAN_CONTEXT:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


@dataclass(frozen=True)
class Services:
    """The service APIs both transports serve, beside AgentApi's Status and Health."""

    state: StateApi
    idempotency: IdempotencyApi
    events: EventsApi
    registry: RegistryApi
    invocation: InvocationApi
    policy: PolicyApi
    flags: FlagApi
    rollouts: RolloutApi
    #: Authorizes every call (meridian.policy.guard).
    guard: Guard

    def implementations(self, api: AgentApi) -> dict[str, tuple[object, ...]]:
        """Each contract service's implementations, for :func:`build_routes`."""
        return {
            "StatusService": (api,),
            "HealthService": (api,),
            "StateService": (self.state,),
            "IdempotencyService": (self.idempotency,),
            "EventService": (self.events,),
            "RegistryService": (self.registry,),
            "InvocationService": (self.invocation,),
            "PolicyService": (self.policy,),
            "FlagService": (self.flags,),
            "RolloutService": (self.rollouts,),
        }


@dataclass(frozen=True)
class CallResult:
    response: Message | None
    error: MeridianError | None
    traceparent: str


class AgentApi:
    """The services the agent exposes: Health and Status (more plug in as they land)."""

    def __init__(
        self,
        region: str,
        source: ObservationSource,
        *,
        metrics: AgentMetrics,
        tracer: trace.Tracer,
    ) -> None:
        self.region = region
        self.source = source
        self.metrics = metrics
        self.tracer = tracer
        self._call_series: dict[tuple[str, str, str, str], _CallSeries] = {}
        self._call_meta: dict[tuple[str, str, str], _CallMeta] = {}

    # -- the services ---------------------------------------------------

    async def get_status(
        self, request: status_pb2.GetStatusRequest
    ) -> status_pb2.GetStatusResponse:
        return status_pb2.GetStatusResponse(status=observation_to_proto(self.source.latest))

    async def check(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        health, reasons = judge_health(self.source.latest)
        return health_pb2.HealthCheckResponse(
            status=_HEALTH[health], region=self.region, reasons=list(reasons)
        )

    # -- the shared call path --------------------------------------------

    def _series(self, service: str, method: str, transport: str, code: str) -> _CallSeries:
        """The metric children of one (service, method, transport, code), made once."""
        key = (service, method, transport, code)
        series = self._call_series.get(key)
        if series is None:
            series = _CallSeries(
                self.metrics.requests.labels(self.region, service, method, transport, code),
                self.metrics.latency.labels(self.region, service, method, transport),
            )
            self._call_series[key] = series
        return series

    def _meta(self, service: str, method: str, transport: str) -> _CallMeta:
        """The span name and attributes of one (service, method, transport), made once."""
        key = (service, method, transport)
        meta = self._call_meta.get(key)
        if meta is None:
            meta = _CallMeta(
                f"meridian.v1.{service}/{method}",
                MappingProxyType(
                    {
                        "rpc.system": "grpc" if transport == "grpc" else "http",
                        "rpc.service": f"meridian.v1.{service}",
                        "rpc.method": method,
                        "cloud.region": self.region,
                    }
                ),
            )
            self._call_meta[key] = meta
        return meta

    def serving(
        self,
        service: str,
        method: str,
        transport: str,
        carrier: Mapping[str, str],
        caller: Caller = NO_CALLER,
    ) -> _Served:
        """One traced, measured API call (unary or streaming), as a context
        manager that gives the call's ``traceparent``; see :class:`_Served`."""
        return _Served(self, service, method, transport, carrier, caller)

    async def call(
        self,
        service: str,
        method: str,
        transport: str,
        carrier: Mapping[str, str],
        handler: Callable[[Req], Awaitable[Resp]],
        request: Req,
        caller: Caller = NO_CALLER,
    ) -> CallResult:
        """Run ``handler(request)`` as one :meth:`serving` call. Never raises a
        MeridianError: it comes back in the result for the transport to map."""
        served = _Served(self, service, method, transport, carrier, caller)
        try:
            with served:
                return CallResult(await handler(request), None, served.traceparent)
        except MeridianError as exc:
            return CallResult(None, exc, served.traceparent)


class _Served:
    """One traced, measured API call: ``with api.serving(...) as traceparent:``.

    The server span continues the caller's W3C trace context from ``carrier``
    and is current inside the block, as is the caller's ``timeout``
    (:data:`~meridian.core.calls.CALLER`). A MeridianError raised inside is recorded
    (span status, the metric's code) and re-raised; any other exception is
    logged and re-raised as INTERNAL, so transports only ever map
    MeridianErrors. Cancellation passes through.

    A class rather than ``contextlib`` generators or ``start_as_current_span``:
    this runs on every API call, and those showed up in profiles of the read
    and invocation paths. The span and its context are the SDK's own.
    """

    __slots__ = (
        "_api",
        "_caller",
        "_caller_token",
        "_carrier",
        "_key",
        "_span",
        "_start",
        "_token",
        "traceparent",
    )

    def __init__(
        self,
        api: AgentApi,
        service: str,
        method: str,
        transport: str,
        carrier: Mapping[str, str],
        caller: Caller = NO_CALLER,
    ) -> None:
        self._api = api
        self._key = (service, method, transport)
        self._carrier = carrier
        self._caller = caller
        self._caller_token: Token[Caller] | None = None
        self.traceparent = ""

    def __enter__(self) -> str:
        self._start = time.perf_counter()
        meta = self._api._meta(*self._key)
        span = self._span = self._api.tracer.start_span(
            meta.name,
            context=_parent_context(self._carrier),
            kind=SpanKind.SERVER,
            attributes=meta.attributes,
        )
        self._token = otel_context.attach(trace.set_span_in_context(span))
        if self._caller is not NO_CALLER:
            self._caller_token = CALLER.set(self._caller)
            if self._caller.identity:
                span.set_attribute("enduser.id", self._caller.identity)
        self.traceparent = _traceparent(span)
        return self.traceparent

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        span = self._span
        code = "OK"
        try:
            if isinstance(exc, MeridianError):
                code = exc.code.value
                span.set_status(Status(StatusCode.ERROR, exc.message))
            elif isinstance(exc, asyncio.CancelledError):
                code = "CANCELLED"
            elif isinstance(exc, Exception):
                code = ErrorCode.INTERNAL.value
                name = self._api._meta(*self._key).name
                log.error("unhandled error in %s", name, exc_info=exc)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise InternalError(f"internal error in {name}") from exc
        finally:
            if self._caller_token is not None:
                CALLER.reset(self._caller_token)
            otel_context.detach(self._token)
            span.end()
            self._api._series(*self._key, code).record(time.perf_counter() - self._start)


_HEALTH = {
    Health.SERVING: health_pb2.HealthCheckResponse.SERVING_STATUS_SERVING,
    Health.DEGRADED: health_pb2.HealthCheckResponse.SERVING_STATUS_DEGRADED,
    Health.NOT_SERVING: health_pb2.HealthCheckResponse.SERVING_STATUS_NOT_SERVING,
}


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def observation_to_proto(obs: AgentObservation) -> status_pb2.AgentStatus:
    """The domain observation as the wire message."""
    return status_pb2.AgentStatus(
        region=obs.region,
        agent_id=obs.agent_id,
        version=obs.version,
        started_at=_ts(obs.started_at),
        observed_at=_ts(obs.observed_at),
        nats=status_pb2.NatsStatus(
            connected=obs.nats.connected,
            server_url=obs.nats.server_url,
            server_name=obs.nats.server_name,
            cluster=obs.nats.cluster,
            server_version=obs.nats.server_version,
            rtt_ms=obs.nats.rtt_ms,
            reason=obs.nats.reason,
        ),
        jetstream=status_pb2.JetStreamStatus(
            available=obs.jetstream.available,
            meta_leader=obs.jetstream.meta_leader,
            meta_cluster_size=obs.jetstream.meta_cluster_size,
            meta_peers_current=obs.jetstream.meta_peers_current,
            reason=obs.jetstream.reason,
        ),
        **{
            "global": status_pb2.GlobalStatus(
                quorum_reachable=obs.global_.quorum_reachable,
                leader=obs.global_.leader,
                replicas=[
                    status_pb2.ReplicaStatus(
                        server=r.server,
                        current=r.current,
                        active_ms=r.active_ms,
                        lag=r.lag,
                        offline=r.offline,
                    )
                    for r in obs.global_.replicas
                ],
                write_rtt_ms=obs.global_.write_rtt_ms,
                reason=obs.global_.reason,
            )
        },
        peers=[
            status_pb2.PeerRegionStatus(
                region=p.region,
                reachable=p.reachable,
                rtt_ms=p.rtt_ms,
                reason=p.reason,
                last_seen=_ts(p.last_seen),
                clock_offset_ms=p.clock_offset_ms,
            )
            for p in obs.peers
        ],
        clock_skew=obs.clock_skew,
    )
