"""The demo's service processes: ``orders`` (Go) and ``inventory`` (Rust) in every region.

Each instance runs in a session of its own (a Ctrl-C at the terminal reaches the
demo, which stops them in order, not the services half-way) and is recorded in
``<workdir>/services.json`` as soon as it is spawned, so ``meridian demo down``
or a later run finds it even if this process dies.

A :class:`Service` is known by its pid and the kernel's start time of that pid,
not by its command line: a binary given with ``--orders-bin`` may be a wrapper
that execs the real one (so the command line changes), and a pid may be
reused. Stopping is SIGTERM to the instance's process group (so it
deregisters), then SIGKILL after a grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from meridian.config import MeridianConfig
from meridian.core.errors import MeridianError
from meridian.demo.options import DemoOptions
from meridian.sandbox.processes import port_in_use
from meridian.security.pki import client_tls, ensure_identity

SERVICES = ("orders", "inventory")
HEALTHY = "INSTANCE_HEALTH_HEALTHY"


class FleetError(MeridianError):
    """A service did not start or did not become healthy; the message says which and where its log is."""


@dataclass(frozen=True)
class Binaries:
    orders: Path
    inventory: Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid``, None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name: state is field 3, starttime field 22.
    fields = stat.rpartition(")")[2].split()
    return fields[0], int(fields[19])


@dataclass(frozen=True)
class Service:
    """One service instance the demo started."""

    name: str  # "orders:us-east"
    region: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    ports: tuple[int, ...]
    log: str

    def alive(self) -> bool:
        """Still running: the pid exists, is the process started then, and is no zombie."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)  # reap it if it is our exited child
        st = _stat(self.pid)
        return st is not None and st[0] not in ("Z", "X") and st[1] == self.start_ticks


class Fleet:
    """Starts, kills and stops the example services of one demo run."""

    def __init__(self, opts: DemoOptions, config: MeridianConfig, binaries: Binaries) -> None:
        self.opts = opts
        self.config = config
        self.binaries = binaries
        self.state_path = opts.workdir / "services.json"
        self.logs = opts.workdir / "logs"

    def records(self) -> dict[str, Service]:
        """The instances recorded as started (running or not)."""
        try:
            raw = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        out = {}
        for item in raw.get("services", []):
            svc = Service(
                item["name"],
                item["region"],
                int(item["pid"]),
                int(item["start_ticks"]),
                tuple(item["argv"]),
                tuple(item["ports"]),
                item["log"],
            )
            out[svc.name] = svc
        return out

    def _save(self, records: dict[str, Service]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"services": [asdict(r) for r in records.values()]}, indent=2))
        tmp.replace(self.state_path)

    def _argv(self, service: str, region: str, binary: Path | None = None) -> list[str]:
        """``service``'s command line in ``region``; ``binary``: another build of
        orders (the rollout's v2), listening on its own port."""
        agent = self.config.region(region).grpc_address
        port_of = "orders-v2" if binary is not None else service
        listen = f"127.0.0.1:{self.opts.service_port(port_of, region)}"
        if service == "orders":
            binary, flags = (
                binary or self.binaries.orders,
                ("-agent", "-listen", "-region", "-tls-dir"),
            )
        else:
            binary, flags = (
                self.binaries.inventory,
                ("--agent", "--listen", "--region", "--tls-dir"),
            )
        argv = [str(binary), flags[0], agent, flags[1], listen, flags[2], region]
        if self.config.security.tls:
            # Each service is its own identity towards its agent (mutual TLS).
            argv += [flags[3], str(ensure_identity(self.config, f"service/{service}"))]
        return argv

    def start(self, regions: Iterable[str]) -> list[Service]:
        """Spawn both services in each of ``regions`` (those not already running)."""
        records = self.records()
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
                svc = self._spawn(name, region, self._argv(service, region), port)
                records[name] = svc
                self._save(records)
                started.append(svc)
        return started

    def start_variant(self, region: str, binary: Path) -> Service:
        """Spawn ``binary`` (a build of orders with another version) in ``region``
        as ``orders-v2:<region>``, beside the first version."""
        records = self.records()
        name = f"orders-v2:{region}"
        if name in records and records[name].alive():
            raise FleetError(f"{name} is already running")
        port = self.opts.service_port("orders-v2", region)
        if port_in_use(port):
            raise FleetError(f"cannot start {name}: port {port} is already in use")
        svc = self._spawn(name, region, self._argv("orders", region, binary), port)
        records[name] = svc
        self._save(records)
        return svc

    def stop_variant(self, region: str, grace_s: float = 10.0) -> None:
        """SIGTERM ``orders-v2:<region>`` (it deregisters) and forget it."""
        records = self.records()
        svc = records.pop(f"orders-v2:{region}", None)
        if svc is not None:
            _stop([svc], grace_s=grace_s)
            self._save(records)

    def _spawn(self, name: str, region: str, argv: list[str], port: int) -> Service:
        log = self.logs / f"{name.replace(':', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "NO_COLOR": "1"},  # plain logs
            )
        # Reaped by Service.alive(), also from another thread or process; the Popen
        # object is dropped, so mark it as waited for.
        proc.returncode = 0
        st = _stat(proc.pid)
        return Service(name, region, proc.pid, st[1] if st else 0, tuple(argv), (port,), str(log))

    def kill(self, region: str) -> list[Service]:
        """SIGKILL the services of ``region`` (part of a region failure)."""
        victims = [r for r in self.records().values() if r.region == region]
        _stop(victims, hard=True, grace_s=5)
        return victims

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every service (they deregister), SIGKILL what is left after ``grace_s``."""
        _stop(list(self.records().values()), grace_s=grace_s)
        self.state_path.unlink(missing_ok=True)

    def exited(self) -> list[Service]:
        """Services recorded as started that are no longer running."""
        return [r for r in self.records().values() if not r.alive()]

    async def wait_healthy(self, regions: Iterable[str], *, timeout_s: float = 90.0) -> float:
        """Until every agent's registry lists orders and inventory healthy in each of
        ``regions``; returns how long it took. Raises FleetError naming what is missing."""
        want = {(svc, r) for svc in SERVICES for r in regions}
        started = time.monotonic()
        missing: dict[str, set[tuple[str, str]]] = {}
        tls = client_tls(self.config)  # follows renewals: this may outlast a leaf
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
                    seen = await _healthy_instances(
                        session, region.http_url, True if tls is None else tls.current()
                    )
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
    session: aiohttp.ClientSession, agent_url: str, tls: ssl.SSLContext | bool
) -> set[tuple[str, str]]:
    """(service, region) of every instance the agent's registry replica lists healthy."""
    try:
        async with session.post(
            f"{agent_url}/v1/registry/list-instances", json={}, ssl=tls
        ) as resp:
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


def _stop(services: list[Service], *, grace_s: float, hard: bool = False) -> None:
    """Signal each running instance's process group (SIGTERM, or SIGKILL if ``hard``) and
    wait for it to end; SIGKILL what is still running after ``grace_s``."""
    for sig, wait_s in ((signal.SIGKILL if hard else signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        running = [s for s in services if s.alive()]
        for svc in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(svc.pid, sig)
        deadline = time.monotonic() + wait_s
        while running and time.monotonic() < deadline:
            time.sleep(0.05)
            running = [s for s in running if s.alive()]
        if not running:
            return
