"""The agent's composition root.

One :class:`Agent` serves one region. It owns a NATS connection to that
region's cluster and the components that share it, each an async context
manager that serves while entered (:mod:`meridian.backbone.lifecycle`).

Lifecycle:

1. the status monitor and the two transports are entered first: once bound,
   the agent answers Health and Status (``Agent.listening``), saying why it
   is not serving yet if NATS or JetStream is not there;
2. the data components (state, idempotency, events, push, registry, router)
   are entered together; each entry returns once it serves (keyspaces
   followed, streams ensured, forwarded calls taken). Only then does the
   agent report ready (``Agent.ready``, then the "agent ready" log line);
3. on SIGTERM/SIGINT (or :meth:`Agent.request_stop`) shutdown runs in order
   under ``agent.shutdown_grace_s``: mark NOT_SERVING and stop intake (the
   transports), leave the data components in reverse order, then the
   monitor, drain NATS, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

import meridian
from meridian.agent.monitor import StatusMonitor
from meridian.audit.store import AuditLog
from meridian.backbone.connection import BackboneConnection
from meridian.backbone.lifecycle import Background, Component, enter_together
from meridian.config import MeridianConfig
from meridian.config.model import LOOPBACK_HOSTS
from meridian.core.errors import ConfigError, FieldViolation, MeridianError
from meridian.core.hlc import Clock, HybridLogicalClock, SkewMonitor, SystemClock
from meridian.core.quota import StreamQuota
from meridian.core.redact import redact
from meridian.events.component import EventsComponent
from meridian.events.groups import ConsumerGroups
from meridian.events.push import PushDeliveries
from meridian.events.service import EventsApi
from meridian.flags.service import FlagApi
from meridian.flags.store import FlagsComponent
from meridian.idempotency.service import IdempotencyApi
from meridian.idempotency.store import IdempotencyComponent
from meridian.invocation.registry import RegistryComponent
from meridian.invocation.router import Invoker
from meridian.invocation.service import InvocationApi, RegistryApi
from meridian.observability.metrics import AgentMetrics
from meridian.observability.tracing import build_tracer_provider
from meridian.policy import Guard
from meridian.policy.engine import PolicyEngine
from meridian.policy.service import PolicyApi
from meridian.policy.store import PolicyComponent, initial_policies
from meridian.rollouts.controller import RolloutController
from meridian.rollouts.service import RolloutApi
from meridian.rollouts.store import RolloutsComponent
from meridian.rollouts.traffic import Traffic
from meridian.security.model import Identity, Kind
from meridian.security.tls import (
    Callers,
    ClientTls,
    GrpcServerCredentials,
    ReloadingContext,
    TlsFiles,
    server_context,
)
from meridian.state.component import StateComponent
from meridian.state.service import StateApi
from meridian.transport.api import AgentApi, Services
from meridian.transport.grpc.server import GrpcTransport
from meridian.transport.http.server import HttpTransport

log = logging.getLogger(__name__)


class _Transports:
    """Both transports: entered once bound; :meth:`stop_intake` ends intake early."""

    name = "transports"

    def __init__(self, grpc: GrpcTransport, http: HttpTransport, grace_s: float) -> None:
        self.grpc = grpc
        self.http = http
        self.grace_s = grace_s
        self._open = False

    async def __aenter__(self) -> Self:
        try:
            await self.grpc.start()
            self._open = True
            await self.http.start()
            await self.grpc.set_serving(True)
        except BaseException:
            await self.stop_intake()
            raise
        return self

    async def stop_intake(self) -> None:
        """Mark NOT_SERVING and stop both transports, in-flight calls given the grace."""
        if not self._open:
            return
        self._open = False
        await self.grpc.set_serving(False)
        try:
            # A stream that never ends (a watch, say) must not hold the agent up.
            async with asyncio.timeout(self.grace_s + 1):
                await asyncio.gather(self.grpc.stop(self.grace_s), self.http.stop())
        except TimeoutError:
            log.warning("transports did not stop within %.1fs", self.grace_s)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_intake()


@dataclass(frozen=True)
class _AgentTls:
    files: TlsFiles
    callers: Callers


#: How often the agent looks for a renewed certificate to present to NATS.
NATS_TLS_REFRESH_S = 5.0

#: Who may call an agent: services, people and tools, the gateway, other agents.
CALLER_KINDS = frozenset({Kind.SERVICE, Kind.OPERATOR, Kind.GATEWAY, Kind.AGENT})


def agent_tls(config: MeridianConfig, region: str) -> _AgentTls | None:
    """The agent's certificate and who may call it; None in insecure mode
    (logged as a warning, and refused beyond loopback). ConfigError naming
    the field when the files are missing or name another identity."""
    rc = config.region(region)
    if not config.security.tls:
        if rc.listen_host not in LOOPBACK_HOSTS:
            raise ConfigError(
                FieldViolation(
                    "security.mode",
                    f"insecure, but the agent would listen on {rc.listen_host}: "
                    "a plaintext agent stays on loopback",
                ),
                config.source,
            )
        log.warning(
            "security.mode is insecure: the agent's gRPC and HTTP listeners are "
            "plaintext and anyone who reaches them can call every API",
            extra={"region": region},
        )
        return None
    field = f"region[{rc.index}].tls_dir"
    files = TlsFiles.in_folder(config.agent_tls_dir(region))
    want = Identity(config.security.trust_domain, Kind.AGENT, region)
    try:
        identity = files.identity()
        server_context(files)
    except (OSError, ssl.SSLError, ValueError, MeridianError) as exc:
        raise ConfigError(
            FieldViolation(
                field,
                f"cannot load the agent's certificate from {files.cert.parent} ({exc}); "
                f"run `meridian sandbox up` or `meridian ca issue agent/{region}`, "
                'or set security.mode = "insecure" for a loopback-only plaintext agent',
            ),
            config.source,
        ) from exc
    if identity != want:
        raise ConfigError(
            FieldViolation(field, f"the certificate names {identity}, not {want}"),
            config.source,
        )
    return _AgentTls(files, Callers(config.security.trust_domain, CALLER_KINDS))


class _Monitor(Background):
    """The status monitor: serves once it has made its first observation."""

    name = "status-monitor"

    def __init__(self, monitor: StatusMonitor) -> None:
        super().__init__()
        self.monitor = monitor

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.monitor.run(), name="status-monitor")
            await self.monitor.wait_round()
            self.serving()


class Agent:
    """The daemon for one region. ``await agent.run()`` until stopped."""

    def __init__(
        self,
        config: MeridianConfig,
        region: str,
        *,
        span_exporter: SpanExporter | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.region_config = config.region(region)
        self.region = region
        self.agent_id = f"{region}-{uuid.uuid4().hex[:8]}"
        self.metrics = AgentMetrics(region)
        self.tracer_provider: TracerProvider = build_tracer_provider(
            config.telemetry, service="meridian-agent", region=region, exporter=span_exporter
        )
        self.tracer = self.tracer_provider.get_tracer("meridian.agent")
        tls = agent_tls(config, region)
        #: The agent's certificate towards NATS too (verify_and_map), following the files.
        self.nats_tls = ClientTls(tls.files) if tls else None
        self.conn = BackboneConnection(
            self.region_config.agent_nats_urls,
            name=f"meridian-agent-{self.agent_id}",
            tls=self.nats_tls.current() if self.nats_tls else None,
        )
        peers = [r for r in config.region_names if r != region]
        self.clock = clock or SystemClock()
        self.skew = SkewMonitor(peers=len(peers))
        self.hlc = HybridLogicalClock(self.clock)
        self.monitor = StatusMonitor(
            self.conn,
            region=region,
            agent_id=self.agent_id,
            version=meridian.__version__,
            peers=peers,
            monitor_url=self.region_config.agent_monitor_url,
            interval_s=config.agent.status_interval_s,
            peer_timeout_s=config.agent.peer_timeout_s,
            quorum_timeout_s=config.agent.quorum_timeout_s,
            global_replicas=min(3, len(config.regions)),
            metrics=self.metrics,
            tracer=self.tracer,
            clock=self.clock,
            skew=self.skew,
        )
        self.state = StateComponent(
            self.conn,
            config.keyspaces,
            region=region,
            regions=config.region_names,
            global_replicas=min(3, len(config.regions)),
            regional_replicas=config.agent.regional_replicas,
            timeout_s=config.agent.quorum_timeout_s,
            freshness_interval_s=config.agent.freshness_interval_s,
            hlc=self.hlc,
            metrics=self.metrics,
        )
        self.idempotency = IdempotencyComponent(
            self.conn,
            config.idempotency,
            region=region,
            global_replicas=min(3, len(config.regions)),
            regional_replicas=config.agent.regional_replicas,
            timeout_s=config.agent.quorum_timeout_s,
            hlc=self.hlc,
            clock=self.clock,
            metrics=self.metrics,
        )
        self.events = EventsComponent(
            self.conn,
            region=region,
            regions=config.region_names,
            replicas=config.agent.regional_replicas,
            timeout_s=config.agent.quorum_timeout_s,
            topics=config.topics,
        )
        self.api = AgentApi(region, self.monitor, metrics=self.metrics, tracer=self.tracer)
        #: The audit log: admin changes and denials, checkpoints signed and cosigned.
        self.audit = AuditLog(
            self.conn,
            region=region,
            trust_domain=config.security.trust_domain,
            keys_dir=config.audit_keys_dir if tls else None,
            replicas=min(3, len(config.regions)),
            timeout_s=config.agent.quorum_timeout_s,
            checkpoint_interval_s=config.audit.checkpoint_interval_s,
            hlc=self.hlc,
        )
        # Authorization: the policy set, decided here, kept on the stored one.
        self.policy_engine = PolicyEngine(
            initial_policies(config),
            region=region,
            sample_permits=config.policy.decision_log_sample,
            trail=self.audit,
        )
        self.policy = PolicyComponent(
            self.conn,
            self.policy_engine,
            region=region,
            replicas=min(3, len(config.regions)),
            timeout_s=config.agent.quorum_timeout_s,
            hlc=self.hlc,
        )
        # The agent's own global keyspaces, each followed into a view kept here.
        followed: dict[str, Any] = {
            "region": region,
            "replicas": min(3, len(config.regions)),
            "timeout_s": config.agent.quorum_timeout_s,
            "hlc": self.hlc,
            "metrics": self.metrics,
        }
        # Feature flags: evaluated here.
        self.flags = FlagsComponent(self.conn, **followed)
        # Routing weights and rollouts: read on every call.
        self.rollouts = RolloutsComponent(self.conn, **followed)
        #: What each version of each service served here (rollout analysis).
        self.traffic = Traffic()
        #: One cap on watches and subscriptions per caller identity, across both.
        self.stream_quota = StreamQuota()
        self.state_api = StateApi(
            region,
            self.state.replicas,
            refused=self.state.refused,
            hlc=self.hlc,
            skew=self.skew,
            metrics=self.metrics,
            strong_timeout_s=config.agent.quorum_timeout_s,
            stream_quota=self.stream_quota,
        )
        groups = ConsumerGroups(
            self.events,
            region=region,
            keyspaces={ks.name: ks for ks in config.keyspaces},
            metrics=self.metrics,
            tracer=self.tracer,
        )
        self.push = PushDeliveries(
            groups,
            region=region,
            replicas=config.agent.regional_replicas,
            endpoints=config.endpoint_policy,
        )
        events_api = EventsApi(groups, self.push, clock=self.clock, stream_quota=self.stream_quota)
        self.registry = RegistryComponent(
            self.conn,
            config.invocation,
            region=region,
            regions=config.region_names,
            replicas=config.agent.regional_replicas,
            timeout_s=config.agent.quorum_timeout_s,
            metrics=self.metrics,
            endpoints=config.endpoint_policy,
        )
        self.invoker = Invoker(
            self.conn,
            self.registry,
            config.resilience,
            region=region,
            config=config.invocation,
            metrics=self.metrics,
            peer_rtts=self._peer_rtts,
            shutdown_grace_s=config.agent.shutdown_grace_s,
            weights_for=self.rollouts.weights,
            traffic=self.traffic,
        )
        self.rollout_controller = RolloutController(
            self.conn,
            self.rollouts,
            self.traffic,
            region=region,
            agent_id=self.agent_id,
            identity=Identity(config.security.trust_domain, Kind.AGENT, region).uri,
            trail=self.audit,
            ejected_now=self.invoker.ejected_versions,
        )
        #: Every call is authorized here; in insecure mode there are no
        #: identities to authorize, so nothing is.
        self.guard = Guard(
            self.policy_engine if tls else None,
            region=region,
            instance_service=self.registry.lease_service,
            trail=self.audit,
        )
        self.services = Services(
            state=self.state_api,
            idempotency=IdempotencyApi(self.idempotency, skew=self.skew),
            events=events_api,
            registry=RegistryApi(self.registry, config.invocation, config.endpoint_policy),
            invocation=InvocationApi(self.invoker, config.invocation, self.guard),
            policy=PolicyApi(
                self.policy_engine,
                self.policy,
                trust_domain=config.security.trust_domain,
                trail=self.audit,
            ),
            flags=FlagApi(self.flags, region=region, trail=self.audit),
            rollouts=RolloutApi(
                self.rollouts,
                regions=config.region_names,
                healthy_versions=self._healthy_versions,
                trail=self.audit,
            ),
            guard=self.guard,
        )
        rc = self.region_config
        self.status_monitor = _Monitor(self.monitor)
        callers = tls.callers if tls else None
        self.transports = _Transports(
            GrpcTransport(
                self.api,
                self.services,
                rc.listen_host,
                rc.grpc_port,
                tls=GrpcServerCredentials(tls.files) if tls else None,
                callers=callers,
            ),
            HttpTransport(
                self.api,
                self.services,
                rc.listen_host,
                rc.http_port,
                tls=ReloadingContext(tls.files) if tls else None,
                callers=callers,
            ),
            config.agent.shutdown_grace_s,
        )
        # Entered together; left in reverse order, so the router stops taking
        # forwarded calls before the state feeds stop.
        self.components: list[Component] = [
            self.audit,
            self.policy,
            self.flags,
            self.rollouts,
            self.state,
            self.idempotency,
            self.events,
            self.push,
            self.registry,
            self.invoker,
            self.rollout_controller,
        ]
        self._stop = asyncio.Event()
        #: Set once the transports answer (Health says why the agent isn't serving yet).
        self.listening = asyncio.Event()
        #: Set once every component serves.
        self.ready = asyncio.Event()

    def _healthy_versions(self, service: str) -> dict[str, set[str]]:
        """Region -> the versions of ``service`` with a healthy instance there."""
        out: dict[str, set[str]] = {}
        for v in self.registry.instances(service):
            if v.healthy:
                out.setdefault(v.region, set()).add(v.version)
        return out

    def _peer_rtts(self) -> dict[str, float | None]:
        """Measured round trip to each peer region's agent (None: unreachable)."""
        return {
            p.region: (p.rtt_ms / 1000 if p.reachable else None) for p in self.monitor.latest.peers
        }

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Serve until :meth:`request_stop` or a signal; then shut down in order."""
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        connect = asyncio.create_task(self._connect_and_refresh(), name="nats-connect")
        try:
            # However the agent ends (asked to stop, cancelled, a component
            # failing), every component it entered is left: a skipped exit
            # leaves ports bound and sessions and channels open.
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(self.status_monitor)
                await stack.enter_async_context(self.transports)
                self.listening.set()
                if await self._serve_until_stopped(stack):
                    log.info("agent stopping")
                await self.transports.stop_intake()
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            connect.cancel()
            await asyncio.gather(connect, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.agent.shutdown_grace_s):
                    await self.conn.drain()
            await self.conn.aclose()
            self.tracer_provider.shutdown()
            log.info("agent stopped")

    async def _connect_and_refresh(self) -> None:
        """Connect to NATS; then keep the certificate it presents current, so a
        reconnect after a renewal presents the new one."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.conn.connect_forever())
            while self.nats_tls is not None:
                await asyncio.sleep(NATS_TLS_REFRESH_S)
                context = self.nats_tls.current()
                if context is not self.conn.tls:
                    self.conn.use_tls(context)
                    log.info("reloaded the agent's certificate and bundle for NATS")

    async def _serve_until_stopped(self, stack: AsyncExitStack) -> bool:
        """Enter the components, report ready, and wait for a stop request.
        False when stopped before every component served."""
        stop = asyncio.create_task(self._stop.wait(), name="stop-requested")
        entering = asyncio.create_task(
            enter_together(stack, self.components), name="enter-components"
        )
        try:
            await asyncio.wait({stop, entering}, return_when=asyncio.FIRST_COMPLETED)
            if not entering.done():
                log.info("agent stopping before it was ready")
                return False
            entering.result()
            rc = self.region_config
            log.info(
                "agent ready",
                extra={
                    "agent_id": self.agent_id,
                    "grpc": rc.grpc_address,
                    "http": rc.http_url,
                    "nats": [redact(u) for u in rc.agent_nats_urls],
                },
            )
            self.ready.set()
            await stop
            return True
        finally:
            for task in (stop, entering):
                task.cancel()
            await asyncio.gather(stop, entering, return_exceptions=True)
