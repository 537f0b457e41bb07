"""Pure tests of the configuration loader: defaults, a valid file, where the file comes from.

The rules it enforces are in test_config_rules.py, hostile input and properties in
test_config_hostile.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meridian.config import (
    DEFAULT_BASE_PORT,
    REGION_PORT_STRIDE,
    load_config,
    proxy_ports,
)
from meridian.core.errors import ConfigError
from tests.unit.config_harness import (
    NO_LINKS,
    REGIONS,
    assert_violation,
    load_text,
    regions_toml,
)

# -- defaults ----------------------------------------------------------------------


def test_defaults_declare_three_regions_in_order() -> None:
    config = load_config(None, env={})
    assert config.region_names == REGIONS
    assert [r.index for r in config.regions] == [0, 1, 2]
    assert config.source == "<defaults>"


@pytest.mark.parametrize(
    ("a", "b", "ms"),
    [("us-east", "eu-west", 35.0), ("us-east", "ap-south", 100.0), ("eu-west", "ap-south", 65.0)],
)
def test_default_latency_is_symmetric(a: str, b: str, ms: float) -> None:
    config = load_config(None, env={})
    assert config.latency(a, b) == ms
    assert config.latency(b, a) == ms


def test_default_wan_has_every_ordered_pair_with_jitter_one() -> None:
    config = load_config(None, env={})
    pairs = {(link.src, link.dst) for link in config.wan.links}
    assert pairs == {(s, d) for s in REGIONS for d in REGIONS if s != d}
    assert all(link.jitter_ms == 1.0 for link in config.wan.links)
    assert config.latency("us-east", "us-east") == 0.0


def test_default_ports_follow_base_port_and_stride() -> None:
    config = load_config(None, env={})
    assert config.sandbox.base_port == DEFAULT_BASE_PORT == 14000
    assert REGION_PORT_STRIDE == 100
    for i, r in enumerate(config.regions):
        block = 14000 + 100 * i
        assert (r.regional.client, r.regional.cluster) == (block, block + 1)
        assert (r.regional.gateway, r.regional.monitor) == (block + 2, block + 3)
        assert (r.global_.client, r.global_.cluster) == (block + 10, block + 11)
        assert (r.global_.gateway, r.global_.monitor) == (block + 12, block + 13)
        assert (r.grpc_port, r.http_port) == (block + 20, block + 21)
        assert r.agent_nats_urls == (f"nats://127.0.0.1:{block}",)
        assert r.agent_monitor_url == f"http://127.0.0.1:{block + 3}"
    assert config.wan.control_port == 14990
    assert config.wan.proxy_base_port == 14900


def test_default_agent_telemetry_and_sandbox_settings() -> None:
    config = load_config(None, env={})
    assert config.agent.log_level == "info"
    assert config.agent.status_interval_s == 1.0
    assert config.agent.freshness_interval_s == 0.1
    assert config.telemetry.exporter == "none"
    assert config.sandbox.nats_server is None
    assert config.sandbox.workdir.is_absolute()


# -- a valid custom file -------------------------------------------------------------


def test_valid_custom_file(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "nats-server"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    config = load_text(
        tmp_path,
        """
[sandbox]
workdir = "state"
base_port = 20000
nats_server = "bin/nats-server"
ready_timeout_s = 30

[wan]
control_port = 21999
proxy_base_port = 21000
jitter_ms = 0.5

[[wan.link]]
a = "alpha"
b = "beta"
latency_ms = 40
one_way = true

[[wan.link]]
a = "beta"
b = "alpha"
latency_ms = 45
jitter_ms = 3
one_way = true

[agent]
status_interval_s = 0.25
peer_timeout_s = 2
quorum_timeout_s = 3.5
shutdown_grace_s = 0
log_level = "DEBUG"
freshness_interval_s = 0.05

[telemetry]
exporter = "otlp"
otlp_endpoint = "http://collector:4317"

[[region]]
name = "alpha"
grpc_port = 30001
http_port = 30002
ports = { client = 30010, cluster = 30011, gateway = 30012, monitor = 30013 }

[[region]]
name = "beta"
ports = { global_client = 30110, global_monitor = 30113 }
nats_urls = ["nats://10.0.0.1:4222", "tls://10.0.0.2:4222"]
monitor_url = "http://10.0.0.1:8222"
""",
    )
    assert config.region_names == ("alpha", "beta")
    assert config.source == str(tmp_path / "meridian.toml")
    alpha, beta = config.regions
    assert (alpha.regional.client, alpha.regional.cluster) == (30010, 30011)
    assert (alpha.regional.gateway, alpha.regional.monitor) == (30012, 30013)
    assert alpha.global_.client == 20010  # not given: derived from base_port
    assert (alpha.grpc_port, alpha.http_port) == (30001, 30002)
    assert alpha.grpc_address == "127.0.0.1:30001"
    assert alpha.http_url == "https://127.0.0.1:30002"  # mutual TLS unless insecure
    assert (beta.grpc_port, beta.http_port) == (20120, 20121)
    assert alpha.agent_nats_urls == ("nats://127.0.0.1:30010",)
    assert (beta.global_.client, beta.global_.monitor) == (30110, 30113)
    assert beta.regional.client == 20100
    assert beta.agent_nats_urls == ("nats://10.0.0.1:4222", "tls://10.0.0.2:4222")
    assert beta.agent_monitor_url == "http://10.0.0.1:8222"
    assert config.wan.control_port == 21999
    assert config.wan.control_url == "http://127.0.0.1:21999"
    assert sorted(proxy_ports(config.regions, config.wan).values()) == [21000, 21001, 21002, 21003]
    # Two one-way links: an asymmetric pair.
    assert config.latency("alpha", "beta") == 40
    assert config.latency("beta", "alpha") == 45
    jitter = {(link.src, link.dst): link.jitter_ms for link in config.wan.links}
    assert jitter == {("alpha", "beta"): 0.5, ("beta", "alpha"): 3.0}
    assert config.agent.status_interval_s == 0.25
    assert config.agent.peer_timeout_s == 2.0
    assert config.agent.quorum_timeout_s == 3.5
    assert config.agent.shutdown_grace_s == 0.0
    assert config.agent.log_level == "debug"
    assert config.agent.freshness_interval_s == 0.05
    assert config.telemetry.exporter == "otlp"
    assert config.telemetry.otlp_endpoint == "http://collector:4317"
    assert config.sandbox.ready_timeout_s == 30
    # Relative paths are relative to the file, not to the working directory.
    assert config.sandbox.workdir == tmp_path.resolve() / "state"
    assert config.sandbox.nats_server == tmp_path.resolve() / "bin" / "nats-server"


def test_region_grpc_and_http_ports_are_honoured(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, NO_LINKS + '[[region]]\nname = "alpha"\ngrpc_port = 30001\nhttp_port = 30002\n'
    )
    region = config.region("alpha")
    assert (region.grpc_port, region.http_port) == (30001, 30002)


def test_one_way_link_leaves_reverse_direction_undelayed(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        regions_toml(*REGIONS)
        + '[[wan.link]]\na = "us-east"\nb = "eu-west"\nlatency_ms = 12\none_way = true\n',
    )
    assert config.latency("us-east", "eu-west") == 12
    assert config.latency("eu-west", "us-east") == 0.0
    assert config.latency("eu-west", "ap-south") == 0.0
    assert len(config.wan.links) == 6


def test_keyspaces_are_declared_with_locality_and_limits(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[[keyspace]]\nname = "orders"\nlocality = "global"\nkey_max_bytes = 64\n'
        "value_max_bytes = 4096\n",
    )
    ks = config.keyspace("orders")
    assert ks is not None
    assert (ks.locality.value, ks.key_max_bytes, ks.value_max_bytes) == ("global", 64, 4096)
    assert ks.bucket == "mg_orders"
    assert config.keyspace("nope") is None


def test_default_config_declares_global_keyspaces() -> None:
    config = load_config(None, env={})
    assert [k.name for k in config.keyspaces] == ["accounts", "inventory"]


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ('name = "Orders"', "keyspace[0].name", "starting with a letter"),
        ('name = "o"\nlocality = "mars"', "keyspace[0].locality", "global, replicated or regional"),
        ('name = "o"\nlocality = "regional"\nconflict = "counter"', "keyspace[0].conflict", "lww"),
        (
            'name = "o"\nlocality = "regional"\nresidency = ["mars"]',
            "keyspace[0].residency",
            "'mars'",
        ),
        ('name = "o"\nlocality = "regional"\nresidency = []', "keyspace[0].residency", "non-empty"),
        ('name = "o"\nlocality = "regional"\nresidency = [1]', "keyspace[0].residency", "names"),
        (
            'name = "o"\nlocality = "regional"\nresidency = ["eu-west", "eu-west"]',
            "keyspace[0].residency",
            "twice",
        ),
        ('name = "o"\nresidency = ["eu-west"]', "keyspace[0].residency", "replica in every region"),
        ('name = "o"\nlocality = "replicated"\nhome = "eu-west"', "keyspace[0].home", "only a"),
        (
            'name = "o"\nlocality = "regional"\nresidency = ["eu-west"]\nhome = "us-east"',
            "keyspace[0].home",
            "one of the keyspace's regions (eu-west)",
        ),
        ('name = "o"\nlocality = "regional"\nforward = "yes"', "keyspace[0].forward", "true or"),
        ('name = "o"\nlocality = "replicated"\nforward = true', "keyspace[0].forward", "only a"),
        ('name = "o"\nconflict = "newest"', "keyspace[0].conflict", "lww, counter"),
        ('name = "o"\nvalue_max_bytes = 99999999999', "keyspace[0].value_max_bytes", "between"),
        ('name = "o"\nkey_max_bytes = 0', "keyspace[0].key_max_bytes", "between"),
        ('name = "o"\ncolour = "red"', "keyspace[0].colour", "allowed here"),
    ],
)
def test_bad_keyspace_declarations(tmp_path: Path, body: str, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, f"[[keyspace]]\n{body}\n")
    assert any(v.field == field and hint in v.rule for v in err.value.violations), err.value


def test_residency_of_keyspaces_topics_and_idempotency_scopes(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
[[keyspace]]
name = "profiles"
locality = "regional"
residency = ["eu-west", "us-east"]
home = "us-east"
forward = true

[[topic]]
name = "eu-orders"
residency = ["eu-west"]

[[idempotency.scope]]
name = "eu-payments"
residency = ["eu-west"]
""",
    )
    ks = config.keyspace("profiles")
    assert ks is not None
    assert (ks.residency, ks.home, ks.forward) == (("eu-west", "us-east"), "us-east", True)
    assert ks.allowed("eu-west") and not ks.allowed("ap-south")
    assert [(t.name, t.residency) for t in config.topics] == [("eu-orders", ("eu-west",))]
    scope = config.idempotency.scope_residency("eu-payments")
    assert scope is not None and scope.allowed("eu-west") and not scope.allowed("us-east")
    assert config.idempotency.scope_residency("other") is None


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ('[[topic]]\nname = "Orders"\nresidency = ["eu-west"]', "topic[0].name", "first token"),
        ('[[topic]]\nname = "o"', "topic[0].residency", "is required"),
        ('[[topic]]\nname = "_state"\nresidency = ["eu-west"]', "topic[0].name", "Meridian's own"),
        ('[[topic]]\nname = "o"\nresidency = ["mars"]', "topic[0].residency", "not declared"),
        (
            '[[topic]]\nname = "o"\nresidency = ["eu-west"]\n'
            '[[topic]]\nname = "o"\nresidency = ["eu-west"]',
            "topic[1].name",
            "already declared",
        ),
        (
            '[[topic]]\nname = "o"\nresidency = ["eu-west"]\ncolour = 1',
            "topic[0].colour",
            "allowed",
        ),
        ("topic = 3", "topic", "array"),
        (
            '[[idempotency.scope]]\nname = "a b"\nresidency = ["eu-west"]',
            "idempotency.scope[0].name",
            "not a valid",
        ),
        (
            '[[idempotency.scope]]\nname = "a"\nresidency = "eu-west"',
            "idempotency.scope[0].residency",
            "array",
        ),
    ],
)
def test_bad_residency_declarations(tmp_path: Path, body: str, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, body + "\n")
    assert any(v.field == field and hint in v.rule for v in err.value.violations), err.value


def test_duplicate_keyspace_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, '[[keyspace]]\nname = "a"\n[[keyspace]]\nname = "a"\n')
    assert any(v.field == "keyspace[1].name" for v in err.value.violations)


def test_meridian_config_env_selects_the_file(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text("[wan]\njitter_ms = 7\n")
    config = load_config(None, env={"MERIDIAN_CONFIG": str(path)})
    assert config.source == str(path)
    assert all(link.jitter_ms == 7 for link in config.wan.links)


def test_explicit_path_wins_over_meridian_config_env(tmp_path: Path) -> None:
    (tmp_path / "env.toml").write_text("[wan]\njitter_ms = 7\n")
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("[wan]\njitter_ms = 2\n")
    config = load_config(explicit, env={"MERIDIAN_CONFIG": str(tmp_path / "env.toml")})
    assert config.source == str(explicit)
    assert config.wan.links[0].jitter_ms == 2


def test_meridian_config_env_naming_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"MERIDIAN_CONFIG": str(tmp_path / "absent.toml")})
    assert_violation(info.value, "config", "does not exist", "pass an existing TOML file")


def test_executable_nats_server_from_env_overrides_the_file(tmp_path: Path) -> None:
    binary = tmp_path / "nats-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    config = load_text(
        tmp_path,
        '[sandbox]\nnats_server = "/does/not/exist"\n',
        env={"MERIDIAN_NATS_SERVER": str(binary)},
    )
    assert config.sandbox.nats_server == binary


# -- MeridianConfig.region and proxy_ports -----------------------------------------------


def test_region_lookup_and_unknown_region_lists_known_ones() -> None:
    config = load_config(None, env={})
    assert config.region("eu-west").index == 1
    with pytest.raises(ConfigError) as info:
        config.region("nope")
    assert_violation(info.value, "region", "'nope'", "us-east, eu-west, ap-south")


def test_proxy_ports_are_distinct_for_every_ordered_pair_and_kind() -> None:
    config = load_config(None, env={})
    ports = proxy_ports(config.regions, config.wan)
    expected = {(k, s, d) for k in ("route", "gateway") for s in REGIONS for d in REGIONS if s != d}
    assert set(ports) == expected
    assert len(ports) == 12
    assert len(set(ports.values())) == 12
    listeners = {
        p
        for r in config.regions
        for p in (r.grpc_port, r.http_port, *vars(r.regional).values(), *vars(r.global_).values())
    }
    assert listeners.isdisjoint(ports.values())
    assert config.wan.control_port not in ports.values()


def test_proxy_ports_are_the_same_for_the_same_file() -> None:
    a, b = load_config(None, env={}), load_config(None, env={})
    assert proxy_ports(a.regions, a.wan) == proxy_ports(b.regions, b.wan)


# -- invocation, gateway and resilience ---------------------------------------------


def test_invocation_gateway_and_resilience_sections(tmp_path: Path) -> None:
    path = tmp_path / "meridian.toml"
    path.write_text(
        "[invocation]\nannounce_interval_s = 0.5\n"
        "[gateway]\nport = 19999\nunhealthy_after = 3\n"
        "[resilience.service.orders]\nbulkhead.max_concurrent = 4\n"
    )
    cfg = load_config(path)
    assert cfg.invocation.announce_interval_s == 0.5
    assert (cfg.gateway.port, cfg.gateway.unhealthy_after) == (19999, 3)
    assert cfg.resilience.resolve("orders").bulkhead.max_concurrent == 4
    assert cfg.resilience.resolve("other").bulkhead.max_concurrent == 100
