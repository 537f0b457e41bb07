"""The agent's composition root.

One :class:`Agent` serves one region. It owns a NATS connection to that
region's cluster and a list of :class:`Component` s that share it. Today the
components are the status monitor and the two transports; state, events and
routing plug in as further components without changing this file's shape.

Lifecycle (trio's ``task_status.started()`` discipline):

1. every component's ``start()`` returns only once it is bound and serving;
2. all ``run()`` bodies live in one ``asyncio.TaskGroup``;
3. on SIGTERM/SIGINT (or :meth:`Agent.request_stop`) shutdown runs in order
   under ``agent.shutdown_grace_s``: mark NOT_SERVING, stop intake (transports),
   cancel background work, drain NATS, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from typing import Protocol

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

import meridian
from meridian.agent.events import EventsComponent
from meridian.agent.idempotency import IdempotencyComponent
from meridian.agent.invoke import Invoker
from meridian.agent.monitor import StatusMonitor
from meridian.agent.registry import RegistryComponent
from meridian.agent.state import StateComponent
from meridian.api.events import EventsApi
from meridian.api.grpc.server import GrpcTransport
from meridian.api.http.server import HttpTransport
from meridian.api.idempotency import IdempotencyApi
from meridian.api.invocation import InvocationApi, RegistryApi
from meridian.api.push import PushDeliveries
from meridian.api.service import AgentApi, Services
from meridian.api.state import StateApi
from meridian.backbone.connection import BackboneConnection
from meridian.config import MeridianConfig
from meridian.core.hlc import Clock, HybridLogicalClock, SkewMonitor, SystemClock
from meridian.observability.metrics import AgentMetrics
from meridian.observability.tracing import build_tracer_provider

log = logging.getLogger(__name__)


class Component(Protocol):
    """A part of the agent with a lifecycle."""

    name: str

    async def start(self) -> None:
        """Return once bound and serving."""

    async def run(self) -> None:
        """Background work until cancelled; may return at once if there is none."""

    async def stop(self, grace_s: float) -> None:
        """Stop taking new work, finish what is in flight within ``grace_s``."""


class _Transports:
    name = "transports"

    def __init__(self, grpc: GrpcTransport, http: HttpTransport) -> None:
        self.grpc = grpc
        self.http = http

    async def start(self) -> None:
        await self.grpc.start()
        await self.http.start()
        await self.grpc.set_serving(True)

    async def run(self) -> None:
        return None

    async def stop(self, grace_s: float) -> None:
        await self.grpc.set_serving(False)
        await asyncio.gather(self.grpc.stop(grace_s), self.http.stop())


class _Monitor:
    name = "status-monitor"

    def __init__(self, monitor: StatusMonitor) -> None:
        self.monitor = monitor

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        await self.monitor.run()

    async def stop(self, grace_s: float) -> None:
        return None


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
        self.conn = BackboneConnection(
            self.region_config.agent_nats_urls, name=f"meridian-agent-{self.agent_id}"
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
        )
        self.api = AgentApi(region, self.monitor, metrics=self.metrics, tracer=self.tracer)
        self.state_api = StateApi(
            region,
            self.state.replicas,
            hlc=self.hlc,
            skew=self.skew,
            metrics=self.metrics,
            strong_timeout_s=config.agent.quorum_timeout_s,
        )
        events_api = EventsApi(
            self.events,
            region=region,
            keyspaces={ks.name: ks for ks in config.keyspaces},
            clock=self.clock,
            metrics=self.metrics,
            tracer=self.tracer,
        )
        self.push = PushDeliveries(
            events_api, region=region, replicas=config.agent.regional_replicas
        )
        self.registry = RegistryComponent(
            self.conn,
            config.invocation,
            region=region,
            regions=config.region_names,
            replicas=config.agent.regional_replicas,
            timeout_s=config.agent.quorum_timeout_s,
            metrics=self.metrics,
        )
        self.invoker = Invoker(
            self.conn,
            self.registry,
            config.resilience,
            region=region,
            config=config.invocation,
            metrics=self.metrics,
            peer_rtts=self._peer_rtts,
        )
        self.services = Services(
            state=self.state_api,
            idempotency=IdempotencyApi(self.idempotency, skew=self.skew),
            events=events_api,
            push=self.push,
            registry=RegistryApi(self.registry, config.invocation),
            invocation=InvocationApi(self.invoker, config.invocation),
        )
        rc = self.region_config
        # Order matters: components start in this order and stop in reverse, so
        # the transports (intake) stop first and the state feeds last.
        self.components: list[Component] = [
            _Monitor(self.monitor),
            self.state,
            self.idempotency,
            self.events,
            self.push,
            self.registry,
            self.invoker,
            _Transports(
                GrpcTransport(self.api, self.services, rc.listen_host, rc.grpc_port),
                HttpTransport(self.api, self.services, rc.listen_host, rc.http_port),
            ),
        ]
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()

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
        started: list[Component] = []
        try:
            async with asyncio.TaskGroup() as tg:
                background = [tg.create_task(self.conn.connect_forever(), name="nats-connect")]
                # However the agent ends (asked to stop, cancelled, a component
                # failing), every component it started is stopped: a skipped stop
                # leaves ports bound and sessions and channels open.
                try:
                    for component in self.components:
                        await component.start()
                        started.append(component)
                        background.append(tg.create_task(component.run(), name=component.name))
                    rc = self.region_config
                    log.info(
                        "agent ready",
                        extra={
                            "agent_id": self.agent_id,
                            "grpc": rc.grpc_address,
                            "http": rc.http_url,
                            "nats": list(rc.agent_nats_urls),
                        },
                    )
                    self.ready.set()
                    await self._stop.wait()
                    log.info("agent stopping")
                finally:
                    await self._shutdown(started, background)
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await self.conn.aclose()
            self.tracer_provider.shutdown()
            log.info("agent stopped")

    async def _shutdown(
        self, started: list[Component], background: list[asyncio.Task[None]]
    ) -> None:
        grace = self.config.agent.shutdown_grace_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace + 1
        for component in reversed(started):
            # Each component gets its stop even after an earlier one overran the
            # grace period (then briefly), so none is left running.
            try:
                async with asyncio.timeout_at(max(deadline, loop.time() + 0.5)):
                    await component.stop(grace)
            except TimeoutError:
                log.warning("component %s did not stop within %.1fs", component.name, grace)
            except Exception:
                log.exception("component %s failed to stop", component.name)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.conn.drain()
