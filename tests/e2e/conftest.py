"""A real sandbox for the e2e tier: NATS supercluster, WAN emulator and agents,
driven through the real `meridian` CLI.

One sandbox (base port 24000) is shared by every module whose tests leave it
as they found it (partitions are healed, killed regions restarted): bringing
a sandbox up takes some 20 s. ``test_sandbox.py``, which takes its sandbox
down, has its own (``own_sandbox``, base port 23000)."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from meridian.client import MeridianClient
from meridian.config import MeridianConfig, load_config
from meridian.security.pki import client_ssl, ensure_identity
from tests.conftest import eventually

if TYPE_CHECKING:
    from tests.e2e.services import ServiceFleet

REGIONS = ("us-east", "eu-west", "ap-south")

# MERIDIAN_E2E_BASE_PORT moves the shared sandbox, for two runs side by side.
E2E_BASE_PORT = int(os.environ.get("MERIDIAN_E2E_BASE_PORT", "24000"))
OWN_BASE_PORT = 23000

CONFIG = """
[sandbox]
workdir = "sandbox"
base_port = {base_port}

[agent]
status_interval_s = 0.5
peer_timeout_s = 1.0
quorum_timeout_s = 2.0

[wan]
jitter_ms = 1.0

[[wan.link]]
a = "us-east"
b = "eu-west"
latency_ms = 35

[[wan.link]]
a = "us-east"
b = "ap-south"
latency_ms = 100

[[wan.link]]
a = "eu-west"
b = "ap-south"
latency_ms = 65

[[region]]
name = "us-east"

[[region]]
name = "eu-west"

[[region]]
name = "ap-south"

[[keyspace]]
name = "accounts"
locality = "global"

[[keyspace]]
name = "carts"
locality = "replicated"
conflict = "lww"

[[keyspace]]
name = "stock"
locality = "replicated"
conflict = "counter"

[[keyspace]]
name = "tags"
locality = "replicated"
conflict = "set"

[[keyspace]]
name = "notes"
locality = "replicated"
conflict = "multi_value"

# Regional keyspaces (test_regional.py): homes per partition, residency.
[[keyspace]]
name = "profiles"
locality = "regional"
residency = ["us-east", "eu-west"]

[[keyspace]]
name = "eu-records"
locality = "regional"
residency = ["eu-west"]
forward = true

# Events of topic "eu-orders" stay in eu-west (test_residency_events.py).
[[topic]]
name = "eu-orders"
residency = ["eu-west"]

# Idempotency records of scope "eu-payments" stay in eu-west (test_regional.py).
[[idempotency.scope]]
name = "eu-payments"
residency = ["eu-west"]

# test_gateway.py drives state and status through the gateway as well.
[gateway]
allow = ["/v1/invoke/*", "/v1/health", "/v1/status", "/v1/state/*"]

# The sandbox's policy set and what these tests add to it (E2E_GRANTS).
[policy]
initial = "policy.cedar"

[invocation]
announce_interval_s = 0.5
stale_after_s = 3.0

# Resilience settings of the test services in test_invoke.py.
[resilience.service.flaky]
outlier.consecutive_5xx = 3
outlier.base_ejection_s = 2.0
outlier.max_ejection_s = 4.0
breaker.consecutive_failures = 0
breaker.minimum_calls = 10000
breaker.window_size = 10000

[resilience.service.brk]
breaker.consecutive_failures = 3
breaker.open_cooldown_s = 2.0
outlier.consecutive_5xx = 0
outlier.consecutive_gateway_failures = 0

[resilience.service.slow]
bulkhead.max_concurrent = 4

[resilience.service.amp]
budget.ratio = 0.2
budget.min_retries_per_s = 0.0
retry.max_attempts = 3
outlier.consecutive_5xx = 0
outlier.consecutive_gateway_failures = 0
breaker.consecutive_failures = 0
breaker.minimum_calls = 10000
breaker.window_size = 10000

[resilience.service.keyed]
outlier.consecutive_5xx = 0
outlier.consecutive_gateway_failures = 0
breaker.consecutive_failures = 0
breaker.minimum_calls = 10000
breaker.window_size = 10000

[resilience.service.fb]
fallback.enabled = true
fallback.http_status = 200
fallback.body = '{{"fallback": true}}'
"""


@dataclass
class SandboxHandle:
    config_path: Path
    config: MeridianConfig
    up_output: str

    def cli(
        self, *args: str, check: bool = True, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "meridian.cli.main", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"meridian {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    @property
    def ssl(self) -> ssl.SSLContext:
        """The CLI's identity (operator/meridian), as the agents' HTTPS ports want it."""
        ctx = client_ssl(self.config)
        assert ctx is not None, "the e2e sandbox runs with mutual TLS"
        return ctx

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:
        """An HTTP session that presents the operator's certificate to agents
        (https://) and talks plain HTTP to the gateway and test services."""
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl), **kwargs)

    def client(self, region: str, **kwargs: Any) -> MeridianClient:
        """A gRPC client of ``region``'s agent, as operator/meridian."""
        return MeridianClient(
            self.config.region(region).grpc_address, tls=self.config.client_tls_dir, **kwargs
        )

    def service_tls(self, service: str) -> Path:
        """The folder of ``service/<service>``'s certificate, issued if needed."""
        return ensure_identity(self.config, f"service/{service}")

    def status(self) -> list[dict[str, Any]]:
        proc = self.cli("sandbox", "status", "--json", check=False)
        return json.loads(proc.stdout)

    def state(self) -> dict[str, Any]:
        path = self.config.sandbox.workdir / "sandbox.json"
        return {p["name"]: p for p in json.loads(path.read_text())["processes"]}


#: What the e2e tests need beyond the sandbox's policy set: the gateway's
#: wider front door (state, for test_gateway.py) and a caller of its own.
E2E_GRANTS = """
@id("e2e-gateway-state")
permit (
  principal == Gateway::"gateway",
  action in [Action::"state:read", Action::"state:write"],
  resource
);

@id("e2e-caller-invokes")
permit (principal == Service::"e2e-caller", action == Action::"invoke", resource);
"""


def _sandbox(root: Path, base_port: int) -> Iterator[SandboxHandle]:
    config_path = root / "meridian.toml"
    config_path.write_text(CONFIG.format(base_port=base_port))
    sandbox_set = resources.files("meridian.policy").joinpath("builtin/sandbox.cedar")
    (root / "policy.cedar").write_text(sandbox_set.read_text() + E2E_GRANTS)
    config = load_config(config_path, env={})
    handle = SandboxHandle(config_path, config, "")
    try:
        up = handle.cli("sandbox", "up")
        handle.up_output = up.stdout
        yield handle
    finally:
        handle.cli("sandbox", "down", "--purge", check=False)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxHandle]:
    """The shared sandbox."""
    yield from _sandbox(tmp_path_factory.mktemp("sandbox"), E2E_BASE_PORT)


@pytest.fixture(scope="module")
def own_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxHandle]:
    """A sandbox of the module's own, for tests that take it down."""
    yield from _sandbox(tmp_path_factory.mktemp("own-sandbox"), OWN_BASE_PORT)


@pytest.fixture(scope="module")
def fleet(sandbox: SandboxHandle) -> Iterator[ServiceFleet]:
    """Test services on the shared sandbox, stopped when the module ends."""
    from tests.e2e.services import ServiceFleet

    f = ServiceFleet(sandbox)
    try:
        yield f
    finally:
        f.stop_all()


@contextlib.asynccontextmanager
async def ready_clients(
    sandbox: SandboxHandle, ready: Callable[[MeridianClient, str], Awaitable[None]]
) -> AsyncIterator[dict[str, MeridianClient]]:
    """A client per region, once ``ready(client, region)`` succeeds for each: the
    region's keyspaces are set up and it can write."""
    out = {r: sandbox.client(r) for r in REGIONS}
    try:
        for region, client in out.items():

            async def attempt(c: MeridianClient = client, r: str = region) -> bool:
                try:
                    await ready(c, r)
                except Exception:  # not ready yet, whatever the reason
                    return False
                return True

            await eventually(attempt, bool, timeout_s=120, interval_s=0.5, what=f"{region} ready")
        yield out
    finally:
        for client in out.values():
            await client.aclose()
