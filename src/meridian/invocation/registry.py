"""Service discovery in the agent: leases of local instances, their health
checks, their announcement into the replicated registry, and this region's
replica of every region's instances (DESIGN §5).

- A registration is a lease of ``ttl``; Heartbeat renews it. An expired lease
  is withdrawn (a tombstone in the registry) and Heartbeat answers NOT_FOUND.
- Each local instance is health-checked every ``health_check.interval``: an
  HTTP GET of its path (2xx healthy), or grpc.health.v1.Health/Check (SERVING
  healthy). A change is announced at once; every instance is re-announced each
  ``invocation.announce_interval_s`` anyway, which keeps it fresh elsewhere.
- The router also reports instances it could not reach (connection refused):
  such an instance counts as unhealthy until its next successful check.
- The component owns :attr:`RegistryComponent.upstream`, the agent's one set
  of connections to its instances: gRPC health checks and the router's calls
  share its channels, and an endpoint's channel closes with its last lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Self

import aiohttp
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meridian._pb.meridian.v1 import invocation_pb2 as pb
from meridian.backbone.connection import (
    BackboneConnection,
    ensure_until_done,
)
from meridian.backbone.lifecycle import Background
from meridian.backbone.resolve import CheckedResolver
from meridian.config.model import InvocationConfig
from meridian.core.endpoints import SANDBOX, EndpointPolicy
from meridian.core.errors import NotFoundError, PermissionDeniedError, ResourceExhaustedError
from meridian.invocation.model import InstanceView, Registration, RegistryReplica
from meridian.invocation.registry_store import RegistryStreams
from meridian.invocation.upstreams.instances import Upstream
from meridian.observability.metrics import AgentMetrics

log = logging.getLogger(__name__)

HEALTHY = pb.INSTANCE_HEALTH_HEALTHY
UNHEALTHY = pb.INSTANCE_HEALTH_UNHEALTHY
UNKNOWN = pb.INSTANCE_HEALTH_UNKNOWN
#: How long the router's view of a service's instances is reused.
VIEW_CACHE_S = 0.05
PROTOCOL_NAMES = {pb.PROTOCOL_HTTP: "http", pb.PROTOCOL_GRPC: "grpc"}
PROTOCOL_VALUES = {v: k for k, v in PROTOCOL_NAMES.items()}


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


@dataclass
class _Lease:
    reg: Registration
    instance_id: str
    expires_at: float  # monotonic
    #: The identity that registered it ("" in insecure mode); only it may
    #: renew, heartbeat or deregister the lease.
    owner: str = ""
    health: pb.InstanceHealth.ValueType = UNKNOWN
    detail: str = ""
    checked_at: datetime | None = None
    #: Monotonic time until which the router's "unreachable" report holds.
    suspect_until: float = 0.0
    checker: asyncio.Task[None] | None = field(default=None, repr=False)

    def view(self, region: str) -> InstanceView:
        return InstanceView(
            instance_id=self.instance_id,
            service=self.reg.service,
            region=region,
            endpoint=self.reg.endpoint,
            protocol=self.reg.protocol,
            healthy=self.health == HEALTHY and self.suspect_until <= time.monotonic(),
            version=self.reg.version,
        )


def _check_owner(lease: _Lease, owner: str, what: str) -> None:
    """A lease is its registrant's: anyone else is refused, by name."""
    if lease.owner != owner:
        raise PermissionDeniedError(
            f"cannot {what} instance {lease.instance_id!r}: its lease belongs to "
            f"{lease.owner or 'an unauthenticated caller'}, not {owner or 'an unauthenticated caller'}"
        )


class RegistryComponent(Background):
    """The agent's part of the registry; serves once this region's registry streams exist."""

    name = "registry"

    def __init__(
        self,
        conn: BackboneConnection,
        config: InvocationConfig,
        *,
        region: str,
        regions: Sequence[str],
        replicas: int,
        timeout_s: float,
        metrics: AgentMetrics,
        endpoints: EndpointPolicy = SANDBOX,
    ) -> None:
        """``endpoints``: the policy instance addresses must meet when dialled."""
        super().__init__()
        self.config = config
        self.region = region
        self.metrics = metrics
        self.streams = RegistryStreams(
            conn,
            region=region,
            regions=regions,
            replicas=replicas,
            timeout_s=timeout_s,
            max_age_s=max(600.0, config.max_ttl_s * 2),
        )
        self.replica = RegistryReplica(config.stale_after_s)
        self._statuses: dict[str, pb.InstanceStatus] = {}
        self._leases: dict[str, _Lease] = {}
        self._suspects: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        #: Connections to this region's instances, for health checks and calls.
        self.upstream = Upstream(region, config, endpoints)
        self._announce_now = asyncio.Event()
        #: service -> (when, instances): the router's view, briefly cached.
        self._views: dict[str, tuple[float, list[InstanceView]]] = {}
        self._lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.health_timeout_s),
            connector=aiohttp.TCPConnector(
                limit=0, force_close=True, resolver=CheckedResolver(self.upstream.endpoints)
            ),
        )
        return await super().__aenter__()

    async def run(self) -> None:
        await ensure_until_done(self.streams.conn, self.streams.ensure, "registry streams")
        self.serving()
        log.info("registry streams ready")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.streams.follow(self._on_entry), name="registry-follow")
            tg.create_task(self._announce_loop(), name="registry-announce")
            tg.create_task(self.streams.repair.run(), name="registry-repair")

    async def closing(self) -> None:
        for lease in self._leases.values():
            if lease.checker is not None:
                lease.checker.cancel()
        if self._session is not None:
            await self._session.close()
        await self.upstream.close()

    # -- the API --------------------------------------------------------------

    async def register(self, reg: Registration, owner: str = "") -> tuple[str, datetime, float]:
        """Take (or renew) a lease for ``owner`` (the caller's identity); returns
        (instance_id, expires_at, ttl_s). PermissionDeniedError when the
        instance id is another identity's lease."""
        instance_id = reg.instance_id or f"{reg.service}-{self.region}-{uuid.uuid4().hex[:12]}"
        now = time.monotonic()
        lease = self._leases.get(instance_id)
        if lease is not None:
            _check_owner(lease, owner, "register")
        else:
            self._check_quota(owner, now)
        self._views.clear()
        if lease is not None and lease.reg != reg:
            if lease.checker is not None:
                lease.checker.cancel()
            lease = None
        if lease is None:
            lease = _Lease(reg, instance_id, now + reg.ttl_s, owner=owner)
            self._leases[instance_id] = lease
            lease.checker = asyncio.create_task(
                self._check_loop(lease), name=f"check-{instance_id}"
            )
        else:
            lease.expires_at = now + reg.ttl_s
        await self._announce(lease)
        return instance_id, self._wall(lease.expires_at), reg.ttl_s

    def _check_quota(self, owner: str, now: float) -> None:
        """RESOURCE_EXHAUSTED when ``owner`` already holds as many live leases
        here as ``invocation.max_instances_per_identity`` allows."""
        limit = self.config.max_instances_per_identity
        held = sum(1 for le in self._leases.values() if le.owner == owner and le.expires_at > now)
        if held >= limit:
            raise ResourceExhaustedError(
                f"{owner or 'unauthenticated callers'} already hold {held} instance leases "
                f"on this agent (invocation.max_instances_per_identity = {limit}); "
                "deregister one or reuse an instance_id"
            )

    def lease_service(self, instance_id: str) -> str:
        """The service a lease held here was registered for; "" if none is."""
        lease = self._leases.get(instance_id)
        return lease.reg.service if lease is not None else ""

    def heartbeat(self, instance_id: str, owner: str = "") -> datetime:
        lease = self._leases.get(instance_id)
        now = time.monotonic()
        if lease is None or lease.expires_at <= now:
            raise NotFoundError(
                f"no lease for instance {instance_id!r} in {self.region}: it expired or was "
                "never registered here; register again"
            )
        _check_owner(lease, owner, "heartbeat")
        lease.expires_at = now + lease.reg.ttl_s
        return self._wall(lease.expires_at)

    async def deregister(self, instance_id: str, owner: str = "") -> None:
        lease = self._leases.get(instance_id)
        if lease is None:
            raise NotFoundError(f"no lease for instance {instance_id!r} in {self.region}")
        _check_owner(lease, owner, "deregister")
        del self._leases[instance_id]
        # Gone here at once, not only when the tombstone comes back around.
        self._on_entry(instance_id, None)
        await self._withdraw(lease)

    def statuses(self, service: str = "", region: str = "") -> list[pb.InstanceStatus]:
        """Every fresh instance the replica knows (own leases as they are now)."""
        now = time.monotonic()
        out: list[pb.InstanceStatus] = []
        for iid in sorted(set(self._statuses) | set(self._leases)):
            lease = self._leases.get(iid)
            if lease is not None:
                status = self._status(lease)
            else:
                seen = self.replica.seen_at(iid)
                if seen is None or seen < now - self.replica.stale_after_s:
                    continue
                status = self._statuses[iid]
            if (service and status.instance.service != service) or (
                region and status.instance.region != region
            ):
                continue
            out.append(status)
        return out

    # -- for the router -------------------------------------------------------

    def instances(self, service: str) -> list[InstanceView]:
        """Every fresh instance of ``service``: own leases live, the rest from the replica.

        Kept for VIEW_CACHE_S per service (the router asks on every call); any
        change of a lease, a health result, an announcement or an unreachable
        report drops the cache at once."""
        now = time.monotonic()
        cached = self._views.get(service)
        if cached is not None and now - cached[0] < VIEW_CACHE_S:
            return cached[1]
        views: dict[str, InstanceView] = {}
        for v in self.replica.instances(service, now):
            if self._suspects.get(v.instance_id, 0.0) > now and v.healthy:
                v = dataclasses.replace(v, healthy=False)
            views[v.instance_id] = v
        for lease in self._leases.values():
            if lease.reg.service == service and lease.expires_at > now:
                views[lease.instance_id] = lease.view(self.region)
        result = list(views.values())
        self._views[service] = (now, result)
        return result

    def report_unreachable(self, instance_id: str) -> None:
        """The router could not connect: treat the instance as unhealthy until it
        passes a health check again (or, if another agent checks it, for the
        staleness window)."""
        until = time.monotonic() + self.config.stale_after_s
        self._views.clear()
        lease = self._leases.get(instance_id)
        if lease is not None:
            lease.suspect_until = until
            if lease.checker is not None and lease.health == HEALTHY:
                lease.health = UNHEALTHY
                lease.detail = "connection refused by the instance"
                self._announce_now.set()
        else:
            self._suspects[instance_id] = until

    # -- internals ------------------------------------------------------------

    def _wall(self, mono: float) -> datetime:
        return datetime.fromtimestamp(time.time() + (mono - time.monotonic()), UTC)

    def _status(self, lease: _Lease) -> pb.InstanceStatus:
        reg = lease.reg
        st = pb.InstanceStatus(
            instance=pb.Instance(
                instance_id=lease.instance_id,
                service=reg.service,
                version=reg.version,
                region=self.region,
                endpoint=reg.endpoint,
                protocol=PROTOCOL_VALUES[reg.protocol],
                metadata=dict(reg.metadata),
                health_check=pb.HealthCheck(
                    http_path=reg.health_path, grpc_service=reg.grpc_health_service
                ),
            ),
            health=lease.health,
            health_detail=lease.detail,
            lease_expires_at=_ts(self._wall(lease.expires_at)),
            announced_at=_ts(datetime.now(UTC)),
        )
        st.instance.health_check.interval.FromNanoseconds(int(reg.check_interval_s * 1e9))
        if lease.checked_at is not None:
            st.checked_at.CopyFrom(_ts(lease.checked_at))
        return st

    def _on_entry(self, instance_id: str, status: pb.InstanceStatus | None) -> None:
        now = time.monotonic()
        self._views.clear()
        if status is None:
            self._statuses.pop(instance_id, None)
            self.replica.apply(instance_id, None, now)
            return
        inst = status.instance
        self._statuses[instance_id] = status
        self.replica.apply(
            instance_id,
            InstanceView(
                instance_id=instance_id,
                service=inst.service,
                region=inst.region,
                endpoint=inst.endpoint,
                protocol=PROTOCOL_NAMES.get(inst.protocol, "http"),
                healthy=status.health == HEALTHY,
                version=inst.version,
            ),
            now,
        )

    async def _announce(self, lease: _Lease) -> None:
        try:
            await self.streams.announce(self._status(lease))
        except Exception as exc:
            log.info("cannot announce %s: %s", lease.instance_id, exc)

    async def _withdraw(self, lease: _Lease) -> None:
        if lease.checker is not None:
            lease.checker.cancel()
        endpoint = lease.reg.endpoint
        if not any(other.reg.endpoint == endpoint for other in self._leases.values()):
            await self.upstream.forget(endpoint)
        try:
            await self.streams.withdraw(lease.instance_id)
        except Exception as exc:
            log.info("cannot withdraw %s: %s", lease.instance_id, exc)

    async def _announce_loop(self) -> None:
        interval = self.config.announce_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._announce_now.wait()
            self._announce_now.clear()
            now = time.monotonic()
            for iid, lease in list(self._leases.items()):
                if lease.expires_at <= now:
                    log.info("lease of %s expired", iid)
                    self._leases.pop(iid, None)
                    self._views.clear()
                    await self._withdraw(lease)
            await asyncio.gather(*(self._announce(lease) for lease in self._leases.values()))
            self.replica.prune(now)
            for iid in [k for k, until in self._suspects.items() if until <= now]:
                del self._suspects[iid]
            self._export_gauges()

    def _export_gauges(self) -> None:
        counts: dict[tuple[str, str, str], int] = {}
        for st in self.statuses():
            health = pb.InstanceHealth.Name(st.health).removeprefix("INSTANCE_HEALTH_").lower()
            k = (st.instance.service, st.instance.region, health)
            counts[k] = counts.get(k, 0) + 1
        g = self.metrics.registry_instances
        g.clear()
        for (service, region, health), n in counts.items():
            g.labels(self.region, service, region, health).set(n)

    async def _check_loop(self, lease: _Lease) -> None:
        while True:
            healthy, detail = await self._check(lease.reg)
            lease.checked_at = datetime.now(UTC)
            health = HEALTHY if healthy else UNHEALTHY
            if healthy and lease.suspect_until:
                lease.suspect_until = 0.0
                self._views.clear()
            if health != lease.health:
                log.info(
                    "instance %s of %s is %s%s",
                    lease.instance_id,
                    lease.reg.service,
                    "healthy" if healthy else "unhealthy",
                    f": {detail}" if detail else "",
                )
                lease.health, lease.detail = health, detail
                self._views.clear()
                self._announce_now.set()
            lease.detail = detail
            await asyncio.sleep(lease.reg.check_interval_s)

    async def _check(self, reg: Registration) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.config.health_timeout_s):
                if reg.protocol == "grpc":
                    return await self._check_grpc(reg)
                return await self._check_http(reg)
        except TimeoutError:
            return False, f"no answer within {self.config.health_timeout_s:g} s"
        except (aiohttp.ClientError, OSError, grpc.RpcError) as exc:
            return False, str(exc)[:200] or type(exc).__name__

    async def _check_http(self, reg: Registration) -> tuple[bool, str]:
        assert self._session is not None
        async with self._session.get(f"http://{reg.endpoint}{reg.health_path}") as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return True, ""
            return False, f"GET {reg.health_path} answered {resp.status}"

    async def _check_grpc(self, reg: Registration) -> tuple[bool, str]:
        stub = health_pb2_grpc.HealthStub(await self.upstream.channel(reg.endpoint))
        resp = await stub.Check(
            health_pb2.HealthCheckRequest(service=reg.grpc_health_service),
            timeout=self.config.health_timeout_s,
        )
        if resp.status == health_pb2.HealthCheckResponse.SERVING:
            return True, ""
        return (
            False,
            f"grpc health says {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}",
        )
