"""The real `meridian` CLI, as a user runs it, in the cases that must not start a sandbox.

Every bad configuration is refused before anything starts: exit code 2, one
``error:`` message naming the field, no state file and no listener on any of
the configuration's ports.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meridian.config import load_config, proxy_ports

# Far from the e2e sandbox (24000) and the defaults (14000), so a refused start
# is not confused with a sandbox another test left running.
BASE_PORT = 26000

GOOD = f"""
[sandbox]
workdir = "sandbox"
base_port = {BASE_PORT}

[[region]]
name = "us-east"

[[region]]
name = "eu-west"

[[region]]
name = "ap-south"
"""

NO_SUCH_BINARY = "/nope/nats-server"


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``meridian ARGS`` in ``cwd``, with no Meridian settings inherited from this shell."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    return subprocess.run(
        [sys.executable, "-m", "meridian.cli.main", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sandbox_ports(tmp_path: Path) -> set[int]:
    """Every port a sandbox with BASE_PORT and the default three regions listens on."""
    path = tmp_path / "ports-reference.toml"
    path.write_text(GOOD)
    config = load_config(path, env={})
    ports = {config.wan.control_port, *proxy_ports(config.regions, config.wan).values()}
    for r in config.regions:
        ports |= {r.grpc_port, r.http_port, *vars(r.regional).values(), *vars(r.global_).values()}
    return ports


def listening(ports: set[int]) -> list[int]:
    busy = []
    for port in sorted(ports):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def assert_refused(tmp_path: Path, proc: subprocess.CompletedProcess[str], *names: str) -> None:
    """The CLI refused with exit 2 and an error naming ``names``, and started nothing."""
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith("error:"), proc.stderr
    for name in names:
        assert name in proc.stderr, (name, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "sandbox is up" not in proc.stdout
    assert not list(tmp_path.rglob("sandbox.json")), "a state file was written"
    assert listening(sandbox_ports(tmp_path)) == [], "something is listening"


def sandbox_up(
    tmp_path: Path, config_text: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``meridian --config F sandbox up`` on ``config_text``, from a state where nothing runs."""
    # If something already listens there, the "nothing started" checks would mean nothing.
    busy = listening(sandbox_ports(tmp_path))
    assert not busy, f"ports {busy} are in use before the test; free them and rerun"
    config = tmp_path / "meridian.toml"
    config.write_text(config_text)
    return run(tmp_path, "--config", str(config), "sandbox", "up", env=env)


# -- config ----------------------------------------------------------------------


def test_config_check_on_the_defaults(tmp_path: Path) -> None:
    proc = run(tmp_path, "config", "check")
    assert proc.returncode == 0, proc.stderr
    assert "ok (3 regions" in proc.stdout
    for region in ("us-east", "eu-west", "ap-south"):
        assert region in proc.stdout


def test_config_check_of_a_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "meridian.toml"
    config.write_text(GOOD)
    proc = run(tmp_path, "--config", str(config), "config", "check")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(config))
    assert "ok (3 regions" in proc.stdout


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "two.toml"
    config.write_text('[[region]]\nname = "us-east"\n\n[[region]]\nname = "eu-west"\n')
    proc = run(tmp_path, "config", "check", env={"MERIDIAN_CONFIG": str(config)})
    assert proc.returncode == 0, proc.stderr
    assert "ok (2 regions: us-east, eu-west)" in proc.stdout


def test_config_default_is_toml_that_loads_back(tmp_path: Path) -> None:
    proc = run(tmp_path, "config", "default")
    assert proc.returncode == 0, proc.stderr
    parsed = tomllib.loads(proc.stdout)
    assert [r["name"] for r in parsed["region"]] == ["us-east", "eu-west", "ap-south"]
    config = tmp_path / "default.toml"
    config.write_text(proc.stdout)
    check = run(tmp_path, "--config", str(config), "config", "check")
    assert check.returncode == 0, check.stderr
    assert "ok (3 regions: us-east, eu-west, ap-south)" in check.stdout


def test_config_check_of_a_missing_file(tmp_path: Path) -> None:
    proc = run(tmp_path, "--config", str(tmp_path / "absent.toml"), "config", "check")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:")
    assert "absent.toml" in proc.stderr
    assert "does not exist" in proc.stderr


# -- bad configurations start nothing ----------------------------------------------


def test_unknown_region_in_a_wan_link(tmp_path: Path) -> None:
    proc = sandbox_up(
        tmp_path, GOOD + '\n[[wan.link]]\na = "mars"\nb = "eu-west"\nlatency_ms = 5\n'
    )
    assert_refused(tmp_path, proc, "wan.link[0].a", "mars", "us-east, eu-west, ap-south")


def test_port_clash(tmp_path: Path) -> None:
    # The WAN control port lands on us-east's NATS client port.
    proc = sandbox_up(tmp_path, GOOD + f"\n[wan]\ncontrol_port = {BASE_PORT}\n")
    assert_refused(tmp_path, proc, "region[0].ports.client", str(BASE_PORT), "wan.control_port")


def test_missing_nats_server_in_the_file(tmp_path: Path) -> None:
    text = GOOD.replace("[sandbox]\n", f'[sandbox]\nnats_server = "{NO_SUCH_BINARY}"\n')
    proc = sandbox_up(tmp_path, text)
    assert_refused(tmp_path, proc, "sandbox.nats_server", NO_SUCH_BINARY, "does not exist")


def test_missing_nats_server_in_the_environment(tmp_path: Path) -> None:
    proc = sandbox_up(tmp_path, GOOD, env={"MERIDIAN_NATS_SERVER": "/nope"})
    assert_refused(tmp_path, proc, "MERIDIAN_NATS_SERVER", "/nope", "does not exist")


def test_malformed_toml(tmp_path: Path) -> None:
    proc = sandbox_up(tmp_path, GOOD + "\n[wan\njitter_ms = \n")
    assert_refused(tmp_path, proc, "meridian.toml", "config", "not valid TOML", "line")


def test_unknown_key(tmp_path: Path) -> None:
    proc = sandbox_up(tmp_path, GOOD.replace("[sandbox]\n", "[sandbox]\nbase_prot = 26100\n"))
    assert_refused(tmp_path, proc, "sandbox.base_prot", "unknown setting", "base_port")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("[sandbox]\n", "[sandbox]\nbogus = 1\n")
    text += '\n[[wan.link]]\na = "us-east"\nb = "mars"\nlatency_ms = 5\n'
    proc = sandbox_up(tmp_path, text, env={"MERIDIAN_NATS_SERVER": "/nope"})
    assert_refused(tmp_path, proc, "sandbox.bogus", "wan.link[0].b", "MERIDIAN_NATS_SERVER")
    assert len([line for line in proc.stderr.splitlines() if line.startswith("  - ")]) == 3


# -- commands that need a running sandbox ------------------------------------------


def test_wan_show_without_a_sandbox(tmp_path: Path) -> None:
    config = tmp_path / "meridian.toml"
    config.write_text(GOOD)
    proc = run(tmp_path, "--config", str(config), "wan", "show")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:")
    assert "WAN emulator is not running" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sandbox_kill_of_an_unknown_region(tmp_path: Path) -> None:
    config = tmp_path / "meridian.toml"
    config.write_text(GOOD)
    proc = run(tmp_path, "--config", str(config), "sandbox", "kill", "nope")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:")
    assert "'nope'" in proc.stderr
    assert "us-east, eu-west, ap-south" in proc.stderr
    assert not list(tmp_path.rglob("sandbox.json"))


# -- help ----------------------------------------------------------------------------


HELP = {
    "meridian": ((), ("--config", "sandbox", "agent", "wan", "config")),
    "sandbox": (("sandbox",), ("up", "down", "status", "restart", "kill")),
    "wan": (("wan",), ("show", "set", "partition", "heal", "reset", "serve")),
    "agent run": (("agent", "run"), ("--region",)),
    "config": (("config",), ("check", "default")),
}


@pytest.mark.parametrize(("args", "words"), list(HELP.values()), ids=list(HELP))
def test_help(tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]) -> None:
    proc = run(tmp_path, *args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage:")
    listed = proc.stdout.split()
    for word in words:
        assert word in listed, (word, proc.stdout)
