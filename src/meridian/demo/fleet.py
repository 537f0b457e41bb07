"""The demo's service processes: ``orders`` (Go) and ``inventory`` (Rust) in every region.

Each instance runs in a session of its own (a Ctrl-C at the terminal reaches the
demo, which stops them in order, not the services half-way) and is recorded in
``<workdir>/services.json`` as soon as it is spawned, so ``meridian demo down``
or a later run finds it even if this process dies. They are stopped like the
sandbox's own children (:func:`meridian.sandbox.processes.stop`): SIGTERM, so
they deregister, then SIGKILL after a grace.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from meridian.config import MeridianConfig
from meridian.core.errors import MeridianError
from meridian.demo.options import DemoOptions
from meridian.sandbox.processes import ProcessRecord, StateFile, port_in_use, spawn, stop

SERVICES = ("orders", "inventory")
HEALTHY = "INSTANCE_HEALTH_HEALTHY"


class FleetError(MeridianError):
    """A service did not start or did not become healthy; the message says which and where its log is."""


@dataclass(frozen=True)
class Binaries:
    orders: Path
    inventory: Path


class Fleet:
    """Starts, kills and stops the example services of one demo run."""

    def __init__(self, opts: DemoOptions, config: MeridianConfig, binaries: Binaries) -> None:
        self.opts = opts
        self.config = config
        self.binaries = binaries
        self.state = StateFile(opts.workdir / "services.json")
        self.logs = opts.workdir / "logs"

    def records(self) -> dict[str, ProcessRecord]:
        return self.state.load()

    def _argv(self, service: str, region: str) -> list[str]:
        agent = self.config.region(region).grpc_address
        listen = f"127.0.0.1:{self.opts.service_port(service, region)}"
        if service == "orders":
            return [
                str(self.binaries.orders),
                "-agent",
                agent,
                "-listen",
                listen,
                "-region",
                region,
            ]
        return [
            str(self.binaries.inventory),
            "--agent",
            agent,
            "--listen",
            listen,
            "--region",
            region,
        ]

    def start(self, regions: Iterable[str]) -> list[ProcessRecord]:
        """Spawn both services in each of ``regions`` (those not already running)."""
        records = self.state.load()
        started = []
        for region in regions:
            for service in SERVICES:
                name = f"{service}:{region}"
                if name in records and records[name].alive():
                    continue
                port = self.opts.service_port(service, region)
                if port_in_use(port):
                    raise FleetError(
                        f"cannot start {service} in {region}: port {port} is already in use; "
                        "stop what holds it, or pick another --base-port"
                    )
                rec = spawn(
                    name,
                    region,
                    self._argv(service, region),
                    ports=[port],
                    log_path=self.logs / f"{service}-{region}.log",
                    env={**os.environ, "NO_COLOR": "1"},  # plain logs
                )
                records[name] = rec
                self.state.save(records)
                started.append(rec)
        return started

    def kill(self, region: str) -> list[ProcessRecord]:
        """SIGKILL the services of ``region`` (part of a region failure)."""
        victims = [r for r in self.state.load().values() if r.region == region]
        stop(victims, hard=True, grace_s=5)
        return victims

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every service (they deregister), SIGKILL what is left after ``grace_s``."""
        stop(list(self.state.load().values()), grace_s=grace_s)
        self.state.remove()

    def exited(self) -> list[ProcessRecord]:
        """Services recorded as started that are no longer running."""
        return [r for r in self.state.load().values() if not r.alive()]

    async def wait_healthy(self, regions: Iterable[str], *, timeout_s: float = 90.0) -> float:
        """Until every agent's registry lists orders and inventory healthy in each of
        ``regions``; returns how long it took. Raises FleetError naming what is missing."""
        want = {(svc, r) for svc in SERVICES for r in regions}
        started = time.monotonic()
        missing: dict[str, set[tuple[str, str]]] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            while time.monotonic() - started < timeout_s:
                dead = [r for r in self.exited() if any(r.region == reg for _, reg in want)]
                if dead:
                    raise FleetError(
                        "service(s) exited during start-up: "
                        + "; ".join(f"{r.name} (log {r.log}):\n{_tail(r.log)}" for r in dead)
                    )
                missing = {}
                for region in self.config.regions:
                    seen = await _healthy_instances(session, region.http_url)
                    lacking = want - seen
                    if lacking:
                        missing[region.name] = lacking
                if not missing:
                    return time.monotonic() - started
                await asyncio.sleep(0.3)
        detail = "; ".join(
            f"{agent} agent lacks " + ", ".join(f"{s} in {r}" for s, r in sorted(lack))
            for agent, lack in missing.items()
        )
        raise FleetError(f"services not healthy everywhere after {timeout_s:g}s: {detail}")


async def _healthy_instances(
    session: aiohttp.ClientSession, agent_url: str
) -> set[tuple[str, str]]:
    """(service, region) of every instance the agent's registry replica lists healthy."""
    try:
        async with session.post(f"{agent_url}/v1/registry/list", json={}) as resp:
            if resp.status != 200:
                return set()
            data: dict[str, Any] = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return set()
    return {
        (st["instance"]["service"], st["instance"].get("region", ""))
        for st in data.get("instances", [])
        if st.get("health") == HEALTHY
    }


def _tail(path: str, lines: int = 10) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
