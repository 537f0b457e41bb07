"""Meridian's one configuration file.

A TOML file declares the regions, the ports every listener uses, the WAN
latency matrix of the sandbox, the agent's timings and the telemetry exporter.
Later capabilities (keyspaces, services) add their own tables here.

Loading validates everything at once and raises a single :class:`ConfigError`
that lists every problem, each naming the field as a dotted path and saying how
to fix it. Nothing is started from a configuration that failed validation.

The environment is an injectable mapping:

- ``MERIDIAN_CONFIG``: the file to load when none is given;
- ``MERIDIAN_NATS_SERVER``: the ``nats-server`` binary, overriding the file;
- ``MERIDIAN_INSECURE=1``: plaintext listeners (``--insecure``), overriding
  ``[security] mode``.
"""

from meridian.config.loader import (
    MAX_VALUE_BYTES,
    SERVED_LOCALITIES,
    load_config,
    parse_config,
)
from meridian.config.model import (
    DEFAULT_BASE_PORT,
    DEFAULT_KEYSPACES,
    DEFAULT_LINKS,
    DEFAULT_REGIONS,
    EXPORTERS,
    GLOBAL_CLUSTER,
    REGION_NAME,
    REGION_PORT_STRIDE,
    AgentConfig,
    AuditConfig,
    IdempotencyConfig,
    MeridianConfig,
    NatsPorts,
    PolicyConfig,
    RegionConfig,
    SandboxConfig,
    SecurityConfig,
    TelemetryConfig,
    WanConfig,
    WanLink,
    default_config_text,
    proxy_ports,
)

__all__ = [
    "DEFAULT_BASE_PORT",
    "DEFAULT_KEYSPACES",
    "DEFAULT_LINKS",
    "DEFAULT_REGIONS",
    "EXPORTERS",
    "GLOBAL_CLUSTER",
    "MAX_VALUE_BYTES",
    "REGION_NAME",
    "REGION_PORT_STRIDE",
    "SERVED_LOCALITIES",
    "AgentConfig",
    "AuditConfig",
    "IdempotencyConfig",
    "MeridianConfig",
    "NatsPorts",
    "PolicyConfig",
    "RegionConfig",
    "SandboxConfig",
    "SecurityConfig",
    "TelemetryConfig",
    "WanConfig",
    "WanLink",
    "default_config_text",
    "load_config",
    "parse_config",
    "proxy_ports",
]
