"""The tables for calls between services and commands: ``[invocation]``,
``[gateway]``, ``[resilience]``, ``[idempotency]``, ``[policy]`` and ``[audit]`` (see
:mod:`meridian.config`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meridian.config.model import (
    BUILTIN_POLICIES,
    GATEWAY_PORT_OFFSET,
    AuditConfig,
    GatewayConfig,
    IdempotencyConfig,
    InvocationConfig,
    PolicyConfig,
)
from meridian.config.reader import Reader, residency_tables
from meridian.config.security import folder
from meridian.core.endpoints import network_violations
from meridian.core.errors import ConfigError
from meridian.core.paths import allow_violations
from meridian.idempotency.model import SCOPE as SCOPE_NAME
from meridian.invocation.resilience.overrides import PolicySet

IDEMPOTENCY_STORAGE = ("global", "regional")


def invocation_section(rd: Reader, raw: Mapping[str, Any]) -> InvocationConfig:
    keys = {
        "announce_interval_s",
        "stale_after_s",
        "default_ttl_s",
        "max_ttl_s",
        "health_timeout_s",
        "max_body_bytes",
        "loopback_endpoints",
        "allowed_networks",
        "max_instances_per_identity",
    }
    rd.known(raw, keys, "invocation")
    loopback = rd.string(raw, "loopback_endpoints", "invocation.loopback_endpoints", "sandbox")
    if loopback not in ("sandbox", "allow", "refuse"):
        rd.bad(
            "invocation.loopback_endpoints", f"must be sandbox, allow or refuse; got {loopback!r}"
        )
        loopback = "sandbox"
    networks = raw.get("allowed_networks", [])
    _, bad = network_violations(networks, "invocation.allowed_networks")
    rd.violations.extend(bad)
    d = InvocationConfig()
    announce = rd.number(
        raw,
        "announce_interval_s",
        "invocation.announce_interval_s",
        d.announce_interval_s,
        low=0.05,
        high=60,
    )
    stale = rd.number(
        raw, "stale_after_s", "invocation.stale_after_s", d.stale_after_s, low=0.1, high=600
    )
    if stale < 2 * announce:
        rd.bad("invocation.stale_after_s", "must be at least twice invocation.announce_interval_s")
    default_ttl = rd.number(
        raw, "default_ttl_s", "invocation.default_ttl_s", d.default_ttl_s, low=1, high=3600
    )
    max_ttl = rd.number(raw, "max_ttl_s", "invocation.max_ttl_s", d.max_ttl_s, low=1, high=86_400)
    if default_ttl > max_ttl:
        rd.bad("invocation.default_ttl_s", "must be at most invocation.max_ttl_s")
    return InvocationConfig(
        announce_interval_s=float(announce),
        stale_after_s=float(stale),
        default_ttl_s=float(default_ttl),
        max_ttl_s=float(max_ttl),
        health_timeout_s=float(
            rd.number(
                raw,
                "health_timeout_s",
                "invocation.health_timeout_s",
                d.health_timeout_s,
                low=0.01,
                high=60,
            )
        ),
        max_body_bytes=rd.integer(
            raw,
            "max_body_bytes",
            "invocation.max_body_bytes",
            d.max_body_bytes,
            low=1024,
            high=64 << 20,
        ),
        loopback_endpoints=loopback,
        allowed_networks=() if bad else tuple(networks),
        max_instances_per_identity=rd.integer(
            raw,
            "max_instances_per_identity",
            "invocation.max_instances_per_identity",
            d.max_instances_per_identity,
            low=1,
            high=1_000_000,
        ),
    )


def gateway_section(
    rd: Reader, raw: Mapping[str, Any], base_port: int, base_dir: Path
) -> GatewayConfig:
    keys = {
        "tls_dir",
        "allow",
        "host",
        "port",
        "health_interval_s",
        "health_timeout_s",
        "unhealthy_after",
        "region_header",
    }
    rd.known(raw, keys, "gateway")
    d = GatewayConfig()
    header = rd.string(raw, "region_header", "gateway.region_header", d.region_header)
    if not header or not all(c.isalnum() or c == "-" for c in header):
        rd.bad("gateway.region_header", "must be a header name: letters, digits and '-'")
        header = d.region_header
    return GatewayConfig(
        host=rd.string(raw, "host", "gateway.host", d.host),
        port=rd.port(raw, "port", "gateway.port", base_port + GATEWAY_PORT_OFFSET),
        health_interval_s=float(
            rd.number(
                raw,
                "health_interval_s",
                "gateway.health_interval_s",
                d.health_interval_s,
                low=0.05,
                high=60,
            )
        ),
        health_timeout_s=float(
            rd.number(
                raw,
                "health_timeout_s",
                "gateway.health_timeout_s",
                d.health_timeout_s,
                low=0.01,
                high=60,
            )
        ),
        unhealthy_after=rd.integer(
            raw, "unhealthy_after", "gateway.unhealthy_after", d.unhealthy_after, low=1, high=100
        ),
        region_header=header,
        tls_dir=folder(rd, raw, "tls_dir", "gateway.tls_dir", base_dir),
        allow=_allow(rd, raw, d.allow),
    )


def _allow(rd: Reader, raw: Mapping[str, Any], default: tuple[str, ...]) -> tuple[str, ...]:
    if "allow" not in raw:
        return default
    violations = allow_violations(raw["allow"], "gateway.allow")
    rd.violations.extend(violations)
    return default if violations else tuple(raw["allow"])


def resilience_section(rd: Reader, raw: Mapping[str, Any]) -> PolicySet:
    try:
        return PolicySet.from_mapping(raw)
    except ConfigError as exc:
        rd.violations.extend(exc.violations)
        return PolicySet()


def idempotency_section(
    rd: Reader, raw: Mapping[str, Any], regions: Sequence[str] = ()
) -> IdempotencyConfig:
    rd.known(
        raw, {"storage", "retention_s", "default_lease_s", "max_lease_s", "scope"}, "idempotency"
    )
    storage = rd.string(raw, "storage", "idempotency.storage", "global")
    if storage not in IDEMPOTENCY_STORAGE:
        rd.bad("idempotency.storage", f"must be global or regional; got {storage!r}")
        storage = "global"
    retention = rd.number(
        raw, "retention_s", "idempotency.retention_s", 86_400.0, low=1, high=30 * 86_400
    )
    default_lease = rd.number(
        raw, "default_lease_s", "idempotency.default_lease_s", 30.0, low=0.1, high=86_400
    )
    max_lease = rd.number(
        raw, "max_lease_s", "idempotency.max_lease_s", 300.0, low=0.1, high=86_400
    )
    if default_lease > max_lease:
        rd.bad("idempotency.default_lease_s", "must be at most idempotency.max_lease_s")
    if max_lease > retention:
        rd.bad("idempotency.max_lease_s", "must be at most idempotency.retention_s")
    return IdempotencyConfig(
        storage=storage,
        retention_s=float(retention),
        default_lease_s=float(default_lease),
        max_lease_s=float(max_lease),
        scopes=tuple(
            residency_tables(
                rd,
                raw.get("scope", []),
                "idempotency.scope",
                regions,
                lambda name: (
                    None
                    if isinstance(name, str) and SCOPE_NAME.fullmatch(name)
                    else f"not a valid idempotency scope; got {name!r:.80}"
                ),
            )
        ),
    )


def policy_section(rd: Reader, raw: Mapping[str, Any], base_dir: Path) -> PolicyConfig:
    rd.known(raw, {"initial", "decision_log_sample"}, "policy")
    d = PolicyConfig()
    initial = d.initial
    if "initial" in raw:
        text = rd.string(raw, "initial", "policy.initial", "")
        if text in BUILTIN_POLICIES:
            initial = text
        elif not text or "\x00" in text or not text.endswith(".cedar"):
            rd.bad(
                "policy.initial",
                f"must be {' or '.join(BUILTIN_POLICIES)}, or a path to a .cedar file; "
                f"got {text[:80]!r}",
            )
        else:
            path = Path(text) if Path(text).is_absolute() else base_dir / text
            if not path.is_file():
                rd.bad("policy.initial", f"no such file: {path}")
            initial = str(path)
    sample = rd.number(
        raw,
        "decision_log_sample",
        "policy.decision_log_sample",
        d.decision_log_sample,
        low=0.0,
        high=1.0,
    )
    return PolicyConfig(initial=initial, decision_log_sample=float(sample))


def audit_section(rd: Reader, raw: Mapping[str, Any], base_dir: Path) -> AuditConfig:
    rd.known(raw, {"checkpoint_interval_s", "keys_dir"}, "audit")
    d = AuditConfig()
    interval = rd.number(
        raw,
        "checkpoint_interval_s",
        "audit.checkpoint_interval_s",
        d.checkpoint_interval_s,
        low=0.1,
        high=3600,
    )
    return AuditConfig(
        checkpoint_interval_s=float(interval),
        keys_dir=folder(rd, raw, "keys_dir", "audit.keys_dir", base_dir),
    )
