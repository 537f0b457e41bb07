"""The nemesis: faults against a running sandbox, scheduled and recorded.

A :class:`Fault` has ``start`` and ``stop`` (stop heals it). The
:class:`Nemesis` runs a schedule of :class:`Step`\\ s, and records each fault
as a :class:`FaultRecord` with four times on the history's clock: when it was
asked to start, when it had started, when it was asked to stop, and when the
system was back (a restart counts only once ``Sandbox.up()`` says the whole
sandbox is ready again).

Faults:

- :class:`Partition`: a region's WAN links black-holed, both ways or one way;
- :class:`PartitionByLeader`: the same for the region that holds (or one that
  does not hold) a ``global`` stream's leader, chosen as the fault starts;
- :class:`LatencySpike`: a link's latency raised, then restored to the
  configured value;
- :class:`KillRegion`: SIGKILL of every process of a region, restarted by
  ``Sandbox.up()``;
- :class:`KillProcess`: SIGKILL of one process (a NATS server or an agent);
- :class:`Pause`: SIGSTOP, then SIGCONT, of one process;
- :class:`ClockSkew`: the region's agent replaced by one whose HLC clock
  source runs ``offset_ms`` ahead (see :mod:`meridian.chaos.skewed_agent`);
- :class:`PowerLoss`: SIGKILL of NATS servers at one instant, and every write
  they had not fsynced lost (their stores sit on :mod:`meridian.chaos.lazyfs`).

Each fault's start and stop are also events in the history (process
:data:`NEMESIS_PROCESS`, ``f`` "nemesis", ``key`` the fault's kind, ``value``
``{"name", "phase"}``), so checkers can see when faults were active.

Blocking sandbox calls run in a worker thread or a child process so clients
keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meridian.backbone.server import fetch_json
from meridian.backbone.topology import server_name
from meridian.chaos import lazyfs
from meridian.chaos.history import EventType, History
from meridian.config import GLOBAL_CLUSTER
from meridian.sandbox.processes import ProcessRecord, spawn, stop
from meridian.sandbox.supervisor import Sandbox
from meridian.sandbox.wan_control import WanClient
from meridian.security.pki import client_tls

#: How long PartitionByLeader waits for the stream to have a leader.
LEADER_WAIT_S = 20.0
#: The process number of the nemesis's own events in the history.
NEMESIS_PROCESS = -1


class SandboxControl:
    """What faults act on: the sandbox supervisor and the WAN control API."""

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        sync_interval: str = "always",
        lazy_mounts: dict[str, Path] | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.config = sandbox.config
        self.config_path = sandbox.config_path
        self.sync_interval = sync_interval
        #: Process name -> the lazyfs mount its store is on (power-loss faults).
        self.lazy_mounts = lazy_mounts or {}

    def record(self, name: str) -> ProcessRecord:
        rec = self.sandbox.state.load().get(name)
        if rec is None or not rec.alive():
            raise RuntimeError(f"sandbox process {name!r} is not running")
        return rec

    def signal(self, name: str, sig: signal.Signals) -> ProcessRecord:
        rec = self.record(name)
        os.killpg(rec.pid, sig)
        return rec

    async def up(self) -> None:
        """Bring back whatever is not running, and wait until the sandbox is ready.

        Runs :mod:`meridian.chaos.supervise` as a child process (see there why).
        """
        argv = [sys.executable, "-m", "meridian.chaos.supervise"]
        argv += ["--config", self.config_path or "", "--sync-interval", self.sync_interval]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"sandbox up failed ({proc.returncode}): {out.decode()[-2000:]}")

    @contextlib.asynccontextmanager
    async def wan(self) -> Any:
        async with WanClient(self.config.wan.control_url) as client:
            yield client


class Fault(Protocol):
    @property
    def name(self) -> str:
        """What it is, e.g. "partition ap-south inbound"."""

    @property
    def kind(self) -> str:
        """partition | latency | kill-region | kill | pause | clock-skew | power-loss"""

    @property
    def region(self) -> str:
        """The region it hits most ("" if none)."""

    async def start(self, ctl: SandboxControl) -> None: ...

    async def stop(self, ctl: SandboxControl) -> None: ...


@dataclass
class Partition:
    region: str
    direction: str = "both"  # both | outbound | inbound
    kind: str = "partition"

    @property
    def name(self) -> str:
        return f"partition {self.region} {self.direction}"

    async def start(self, ctl: SandboxControl) -> None:
        async with ctl.wan() as wan:
            await wan.partition(self.region, direction=self.direction)

    async def stop(self, ctl: SandboxControl) -> None:
        async with ctl.wan() as wan:
            await wan.heal(self.region)


def stream_leaders(ctl: SandboxControl, stream: str | None = None) -> dict[str, int]:
    """Region -> how many ``global`` streams (or only ``stream``) its server leads,
    from every reachable ``global`` server's monitoring endpoint."""
    regions = {server_name(r.name, GLOBAL_CLUSTER): r.name for r in ctl.config.regions}
    leaders: dict[str, str] = {}  # stream -> leader's server name
    for r in ctl.config.regions:
        url = f"http://127.0.0.1:{r.global_.monitor}/jsz?accounts=true&streams=true"
        try:
            jsz = fetch_json(url, 2.0)
        except (OSError, ValueError):
            continue  # a server that is down leads nothing
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                cluster = detail.get("cluster") or {}
                name = detail.get("name", "")
                wanted = stream is None or name == stream
                if wanted and cluster.get("name") == GLOBAL_CLUSTER and cluster.get("leader"):
                    leaders[name] = cluster["leader"]
    counts = {r.name: 0 for r in ctl.config.regions}
    for server in leaders.values():
        if server in regions:
            counts[regions[server]] += 1
    return counts


@dataclass
class PartitionByLeader:
    """A partition of the region whose ``global`` server leads the most streams
    (``stream``: leads that stream), or with ``leader`` False of one that leads
    the fewest (the last such in configuration order, usually the farthest).
    The region is chosen when the fault starts; a stream with no leader
    anywhere is an error."""

    stream: str | None = None
    leader: bool = True
    direction: str = "both"
    kind: str = "partition"
    region: str = ""

    @property
    def name(self) -> str:
        role = "leader" if self.leader else "follower"
        of = self.stream or "most global streams"
        return f"partition {self.region or '?'} ({role} of {of}) {self.direction}"

    async def start(self, ctl: SandboxControl) -> None:
        # Right after a heal the stream may still be electing: wait for a leader.
        deadline = time.monotonic() + LEADER_WAIT_S
        counts = await asyncio.to_thread(stream_leaders, ctl, self.stream)
        while not any(counts.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            counts = await asyncio.to_thread(stream_leaders, ctl, self.stream)
        if not any(counts.values()):
            raise RuntimeError(
                f"no global server reported a leader of {self.stream or 'any stream'} "
                f"within {LEADER_WAIT_S:g}s"
            )
        order = list(counts)
        if self.leader:
            self.region = max(order, key=lambda r: (counts[r], -order.index(r)))
        else:
            self.region = min(order, key=lambda r: (counts[r], -order.index(r)))
        async with ctl.wan() as wan:
            await wan.partition(self.region, direction=self.direction)

    async def stop(self, ctl: SandboxControl) -> None:
        if self.region:
            async with ctl.wan() as wan:
                await wan.heal(self.region)


@dataclass
class LatencySpike:
    a: str
    b: str
    latency_ms: float
    jitter_ms: float = 0.0
    kind: str = "latency"

    @property
    def region(self) -> str:
        return self.b

    @property
    def name(self) -> str:
        return f"latency {self.a}<->{self.b} {self.latency_ms:g}ms"

    async def start(self, ctl: SandboxControl) -> None:
        async with ctl.wan() as wan:
            await wan.set_latency(self.a, self.b, self.latency_ms, jitter_ms=self.jitter_ms)

    async def stop(self, ctl: SandboxControl) -> None:
        jitter = next((ln.jitter_ms for ln in ctl.config.wan.links), 0.0)
        async with ctl.wan() as wan:
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                ms = ctl.config.latency(src, dst)
                await wan.set_latency(src, dst, ms, jitter_ms=jitter, one_way=True)


@dataclass
class KillRegion:
    region: str
    kind: str = "kill-region"

    @property
    def name(self) -> str:
        return f"kill region {self.region}"

    async def start(self, ctl: SandboxControl) -> None:
        await asyncio.to_thread(ctl.sandbox.kill_region, self.region)

    async def stop(self, ctl: SandboxControl) -> None:
        await ctl.up()


@dataclass
class KillProcess:
    """``kill -9`` of one sandbox process, e.g. ``nats:global-eu-west`` or ``agent:eu-west``."""

    process: str
    region: str
    kind: str = "kill"

    @property
    def name(self) -> str:
        return f"kill -9 {self.process}"

    async def start(self, ctl: SandboxControl) -> None:
        rec = ctl.signal(self.process, signal.SIGKILL)
        await asyncio.to_thread(stop, [rec], grace_s=5, hard=True)  # reaps it

    async def stop(self, ctl: SandboxControl) -> None:
        await ctl.up()


@dataclass
class Pause:
    """SIGSTOP of one sandbox process until the fault stops (SIGCONT)."""

    process: str
    region: str
    kind: str = "pause"

    @property
    def name(self) -> str:
        return f"pause {self.process}"

    async def start(self, ctl: SandboxControl) -> None:
        ctl.signal(self.process, signal.SIGSTOP)

    async def stop(self, ctl: SandboxControl) -> None:
        ctl.signal(self.process, signal.SIGCONT)


@dataclass
class ClockSkew:
    """The region's agent restarted with its HLC clock source ``offset_ms`` off.

    The agent's CLI has no clock option, so this fault stops the sandbox's
    agent and runs :mod:`meridian.chaos.skewed_agent` on the same ports; stop
    ends it and lets ``Sandbox.up()`` start the normal agent again.
    """

    region: str
    offset_ms: int
    kind: str = "clock-skew"
    _proc: ProcessRecord | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"clock skew {self.region} {self.offset_ms:+d}ms"

    async def start(self, ctl: SandboxControl) -> None:
        rec = ctl.record(f"agent:{self.region}")
        await asyncio.to_thread(stop, [rec], grace_s=10)
        argv = [sys.executable, "-m", "meridian.chaos.skewed_agent"]
        if ctl.config_path:
            argv += ["--config", ctl.config_path]
        argv += ["--region", self.region, "--offset-ms", str(self.offset_ms)]
        region = ctl.config.region(self.region)
        self._proc = spawn(
            f"skewed-agent:{self.region}",
            self.region,
            argv,
            ports=[region.grpc_port, region.http_port],
            log_path=ctl.sandbox.workdir / "logs" / f"agent-{self.region}-skewed.log",
            env=ctl.sandbox.env,
        )
        deadline = time.monotonic() + ctl.config.sandbox.ready_timeout_s
        tls = client_tls(ctl.config)  # follows renewals; a stat of the files per poll
        while time.monotonic() < deadline:
            try:
                ctx = None if tls is None else tls.current()
                await asyncio.to_thread(fetch_json, f"{region.http_url}/v1/status", 1.0, ctx)
                return
            except (OSError, urllib.error.URLError, ValueError):
                await asyncio.sleep(0.25)
        raise RuntimeError(f"skewed agent for {self.region} never answered its status API")

    async def stop(self, ctl: SandboxControl) -> None:
        if self._proc is not None:
            await asyncio.to_thread(stop, [self._proc], grace_s=10)
            self._proc = None
        await ctl.up()


@dataclass
class PowerLoss:
    """Power lost at once by NATS servers: SIGKILL of each, then every write they had
    not fsynced is gone (their stores are on lazyfs mounts, see
    :mod:`meridian.chaos.lazyfs`); stop powers them back on (``Sandbox.up()``).

    With ``sync_interval: always`` every acknowledged write was fsynced before
    the acknowledgement; with NATS's default (every 2 minutes) it may not be.
    """

    processes: tuple[str, ...]
    region: str = ""
    kind: str = "power-loss"

    @property
    def name(self) -> str:
        return "power loss " + ", ".join(self.processes)

    async def start(self, ctl: SandboxControl) -> None:
        missing = [p for p in self.processes if p not in ctl.lazy_mounts]
        if missing:
            raise RuntimeError(f"no lazyfs mount under {missing}: the run did not mount one")
        records = [ctl.record(p) for p in self.processes]
        for rec in records:  # one instant: no server outlives another by a write
            os.killpg(rec.pid, signal.SIGKILL)
        await asyncio.to_thread(stop, records, grace_s=5, hard=True)  # reaps them
        for p in self.processes:
            await asyncio.to_thread(lazyfs.crash, ctl.lazy_mounts[p])

    async def stop(self, ctl: SandboxControl) -> None:
        await ctl.up()


@dataclass
class FaultRecord:
    """One fault as it happened; times are history nanoseconds (None: never reached)."""

    name: str
    kind: str
    region: str
    start: int
    started: int | None = None
    stop: int | None = None
    stopped: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Step:
    """Start ``fault`` at ``at_s`` seconds into the run and hold it ``hold_s`` seconds."""

    at_s: float
    fault: Fault
    hold_s: float


class Nemesis:
    """Runs a schedule of steps one after another against ``ctl``, recording each fault."""

    def __init__(self, ctl: SandboxControl, history: History) -> None:
        self.ctl = ctl
        self.history = history
        self.records: list[FaultRecord] = []
        self._active: list[tuple[Fault, FaultRecord]] = []
        self._finishing = asyncio.Event()

    def finish(self) -> None:
        """Start no new fault, and cut the current fault's hold short; :meth:`run`
        then returns once that fault has stopped."""
        self._finishing.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finishing.wait(), max(0.0, seconds))

    async def run(self, steps: Sequence[Step]) -> None:
        """Run every step until :meth:`finish`. Cancelling it instead leaves faults
        active until :meth:`heal_all`."""
        for step in sorted(steps, key=lambda s: s.at_s):
            await self._sleep(step.at_s - self.history.now() / 1e9)
            if self._finishing.is_set():
                return
            rec = FaultRecord(
                step.fault.name, step.fault.kind, step.fault.region, self.history.now()
            )
            self.records.append(rec)
            self._event("invoke", rec, "start")
            try:
                await step.fault.start(self.ctl)
            except Exception as exc:  # a fault that could not start is recorded, not fatal
                rec.error = f"start: {exc}"
                self._event("fail", rec, "start", error=rec.error)
                continue
            rec.started = self.history.now()
            # A fault may choose its target as it starts (PartitionByLeader).
            rec.name, rec.region = step.fault.name, step.fault.region
            self._event("ok", rec, "start")
            self._active.append((step.fault, rec))
            await self._sleep(step.hold_s)
            await self._stop(step.fault, rec)

    async def _stop(self, fault: Fault, rec: FaultRecord) -> None:
        self._active = [(f, r) for f, r in self._active if r is not rec]
        rec.stop = self.history.now()
        self._event("invoke", rec, "stop")
        try:
            await fault.stop(self.ctl)
        except Exception as exc:
            rec.error = f"stop: {exc}"
            self._event("info", rec, "stop", error=rec.error)
            return
        rec.stopped = self.history.now()
        self._event("ok", rec, "stop")

    def _event(
        self, type_: EventType, rec: FaultRecord, phase: str, error: str | None = None
    ) -> None:
        value = {"name": rec.name, "phase": phase}
        self.history.add(
            type_, NEMESIS_PROCESS, rec.region, "nemesis", rec.kind, value, error=error
        )

    async def heal_all(self) -> None:
        """Stop every active fault, heal the whole WAN and bring every process back."""
        for fault, rec in list(self._active):
            await self._stop(fault, rec)
        for pid_name in list(self.ctl.sandbox.state.load()):
            with contextlib.suppress(Exception):
                self.ctl.signal(pid_name, signal.SIGCONT)
        async with self.ctl.wan() as wan:
            await wan.heal()
        await self.ctl.up()
