"""The benchmark's own sandbox, driven through the real ``meridian`` CLI.

It has its own configuration file, its own ports (``base_port``, 16000 by
default, away from the demo's 14000 and the e2e tests' 24000) and its own
workdir in a temporary directory, so it never touches a sandbox someone else is
running.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from meridian.config import MeridianConfig, RegionConfig, load_config
from meridian.core.keyspace import Keyspace

KEYSPACE = "bench"
#: Figure 5's keyspace: one stream per region, sourced into every region.
REPLICATED_KEYSPACE = "benchrep"
#: The default WAN matrix: one-way milliseconds, both directions.
LINKS = (("us-east", "eu-west", 35), ("us-east", "ap-south", 100), ("eu-west", "ap-south", 65))
REGIONS = ("us-east", "eu-west", "ap-south")


def config_text(base_port: int) -> str:
    links = "".join(
        f'\n[[wan.link]]\na = "{a}"\nb = "{b}"\nlatency_ms = {ms}\n' for a, b, ms in LINKS
    )
    regions = "".join(f'\n[[region]]\nname = "{r}"\n' for r in REGIONS)
    return (
        f'[sandbox]\nworkdir = "sandbox"\nbase_port = {base_port}\n'
        f"\n[wan]\njitter_ms = 1.0\n{links}{regions}"
        f'\n[[keyspace]]\nname = "{KEYSPACE}"\nlocality = "global"\n'
        f'\n[[keyspace]]\nname = "{REPLICATED_KEYSPACE}"\nlocality = "replicated"\n'
        'conflict = "lww"\n'
        # Plaintext: these figures compare against baselines measured before mutual
        # TLS, and a baseline agent of an older tree cannot serve TLS. What mTLS costs
        # is its own bench (docs/security.md).
        '\n[security]\nmode = "insecure"\n'
        # The gateway bench reads /v1/status through the gateway.
        '\n[gateway]\nallow = ["/v1/invoke/*", "/v1/health", "/v1/status"]\n'
    )


class SandboxError(RuntimeError):
    """The sandbox could not be brought up (or torn down)."""


class BenchSandbox:
    """A three-region sandbox in a temporary directory. ``up()``, use, ``down()``."""

    def __init__(self, base_port: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="meridian-bench-"))
        self.config_path = self.root / "meridian.toml"
        self.config_path.write_text(config_text(base_port))
        self.config: MeridianConfig = load_config(self.config_path, env={})
        self.keyspace = self._declared(KEYSPACE)
        self.replicated = self._declared(REPLICATED_KEYSPACE)

    def _declared(self, name: str) -> Keyspace:
        ks = self.config.keyspace(name)
        if ks is None:
            raise SandboxError(f"the bench config declares no keyspace {name!r}")
        return ks

    # -- lifecycle ---------------------------------------------------------

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meridian.cli.main", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check_ports_free(self) -> None:
        busy = [p for p in self._ports() if _listening(p)]
        if busy:
            raise SandboxError(
                f"ports {busy[:6]} are already in use; stop whatever listens there or "
                "pass --base-port with a free block of ports"
            )

    def _ports(self) -> list[int]:
        ports = [self.config.wan.control_port]
        for r in self.config.regions:
            ports += [r.grpc_port, r.http_port, r.regional.client, r.global_.client]
        return ports

    def up(self) -> str:
        self.check_ports_free()
        proc = self.cli("sandbox", "up")
        if proc.returncode != 0:
            raise SandboxError(
                f"meridian sandbox up exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n"
                f"logs are under {self.workdir}"
            )
        return proc.stdout

    def down(self, *, keep_workdir: bool = False) -> str:
        """Stop everything and purge JetStream data; remove the temp dir unless asked not to."""
        proc = self.cli("sandbox", "down", "--purge")
        if not keep_workdir and proc.returncode == 0:
            shutil.rmtree(self.root, ignore_errors=True)
        if proc.returncode != 0:
            return f"sandbox down exited {proc.returncode}: {proc.stdout}{proc.stderr}".strip()
        return ""

    # -- where things are --------------------------------------------------

    @property
    def workdir(self) -> Path:
        return self.config.sandbox.workdir

    def region(self, name: str) -> RegionConfig:
        return self.config.region(name)

    def nats_url(self, region: str) -> str:
        return self.region(region).agent_nats_urls[0]

    def pids(self) -> dict[str, int]:
        """Every sandbox process by name (``agent:us-east``, ``nats:global-us-east``, ``wan``)."""
        raw = json.loads((self.workdir / "sandbox.json").read_text())
        return {p["name"]: int(p["pid"]) for p in raw["processes"]}

    def one_way_ms(self, src: str, dst: str) -> float:
        return 0.0 if src == dst else self.config.latency(src, dst)

    def rtt_ms(self, a: str, b: str) -> float:
        return self.one_way_ms(a, b) + self.one_way_ms(b, a)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
