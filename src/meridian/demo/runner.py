"""One run of the global shop demo, phase by phase, and its clean-up.

Phases (each prints a line as it starts and ends):

1. **sandbox**: the run's own three-region sandbox (``meridian sandbox up`` with
   the generated configuration: NATS supercluster, WAN emulator, agents, gateway);
2. **services**: ``orders`` (Go) and ``inventory`` (Rust) in every region, until
   every agent's registry lists both healthy in every region;
3. **seed**: stock for each SKU, through the gateway into inventory;
4. **load**: the shoppers (:mod:`meridian.demo.shop`) through the gateway. At
   ``kill_at`` of the duration the kill region's processes and services are
   SIGKILLed; after ``outage_s`` it is brought back (``Sandbox.up()``, then its
   services). The load goes on throughout, and until the region has been back
   for ``after_heal_s``;
5. **settle**: requests without a definite answer are sent again with their keys;
6. **audit**: strong scans of the global state, checked against what the clients
   were told (:mod:`meridian.demo.audit`);
7. **read models**: until every region's read model equals the stored orders.

``Sandbox.up()`` runs in a child process (``meridian sandbox up``) so the load's
event loop keeps running while a region comes back, and so an interrupted start
can be stopped. SIGINT or SIGTERM at any point cancels the phase in progress,
then :meth:`DemoRun.cleanup` stops the load, the services and the sandbox and
checks that no process or port is left; the report says what was done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from meridian.config import MeridianConfig, load_config
from meridian.core.errors import MeridianError
from meridian.demo import audit, leftovers, report, rollout, rotation, verdict
from meridian.demo.binaries import inventory_binary, orders_binary, require
from meridian.demo.fleet import Binaries, Fleet, Service
from meridian.demo.options import NEW_VERSION, DemoOptions
from meridian.demo.report import Report
from meridian.demo.shop import Shop
from meridian.sandbox.processes import ProcessRecord, port_in_use, wait_ports_free
from meridian.sandbox.supervisor import Sandbox, SandboxError
from meridian.security.pki import front_door_ssl

Say = Callable[[str], None]

#: Exit statuses of ``meridian demo run``.
EXIT_OK, EXIT_INVARIANT, EXIT_ERROR = 0, 1, 2


class DemoRun:
    """The state of one run; :func:`run_demo` drives it."""

    def __init__(self, opts: DemoOptions, say: Say) -> None:
        self.opts = opts
        self.say = say
        self.t0 = time.monotonic()
        self.report = Report(options=_options_json(opts))
        #: (seconds of load, identity) of each certificate renewed during the load.
        self.renewals: list[tuple[float, str]] = []
        self.interrupted_by: signal.Signals | None = None
        self.config: MeridianConfig | None = None
        self.sandbox: Sandbox | None = None
        self.fleet: Fleet | None = None
        self.shop: Shop | None = None
        self._up: asyncio.subprocess.Process | None = None
        #: Every process the run started or had started for it, by name then pid.
        self._seen: dict[tuple[str, int], ProcessRecord | Service] = {}
        self._region_state = "up"
        self._busy_before: set[int] = set()
        #: The faulty and the good orders 2.0.0 (built when the run rolls out).
        self._variants: tuple[Path, Path] = (Path(), Path())

    def phase(self, name: str, message: str) -> None:
        at = time.monotonic() - self.t0
        self.report.phases.append({"at_s": round(at, 3), "phase": name, "message": message})
        self.say(f"[{at:6.1f}s] {name}: {message}")

    def _remember(self, records: Mapping[str, ProcessRecord | Service]) -> None:
        for rec in records.values():
            self._seen[(rec.name, rec.pid)] = rec

    # -- the scenario -----------------------------------------------------------

    async def scenario(self) -> None:
        opts = self.opts
        binaries = Binaries(
            require(opts.orders_bin or orders_binary(), "orders (Go)"),
            require(opts.inventory_bin or inventory_binary(), "inventory (Rust)"),
        )
        opts.workdir.mkdir(parents=True, exist_ok=True)
        opts.config_path.write_text(opts.config_text())
        self.config = config = load_config(opts.config_path, env={})
        config.region(opts.kill_region)
        self.sandbox = sandbox = Sandbox(config, str(opts.config_path))
        self.fleet = fleet = Fleet(opts, config, binaries)

        left: list[ProcessRecord | Service] = [
            *sandbox.state.load().values(),
            *fleet.records().values(),
        ]
        if any(r.alive() for r in left):
            self.phase("sandbox", "a demo left running on these ports (--keep); stopping it first")
            await asyncio.to_thread(fleet.stop_all)
            await asyncio.to_thread(sandbox.down, purge=True)

        # Ports some other program holds are not ours to report as left behind.
        self._busy_before = set(_listening(leftovers.ports(config, opts)))
        regions = ", ".join(config.region_names)
        self.phase(
            "sandbox",
            f"bringing up {regions} (NATS supercluster, WAN emulator, agents, gateway) "
            f"on base port {opts.base_port}; files in {opts.workdir}",
        )
        took = await self._sandbox_up()
        self.phase("sandbox", f"ready in {took:.1f} s; gateway {sandbox.gateway_url}")

        if opts.rollout:
            self.phase("build", f"orders {NEW_VERSION}: a faulty and a good build")
            self._variants = await asyncio.to_thread(rollout.build_variants, opts)
        self.phase("services", f"starting orders (Go) and inventory (Rust) in {regions}")
        self._remember({r.name: r for r in fleet.start(config.region_names)})
        took = await fleet.wait_healthy(config.region_names)
        self.phase(
            "services",
            f"orders and inventory healthy in every region, in every agent's registry ({took:.1f} s)",
        )

        # The shoppers are outside clients: they trust the gateway's CA, nothing more.
        front_door = front_door_ssl(config)
        connector = aiohttp.TCPConnector(limit=0, ssl=front_door if front_door else True)
        async with aiohttp.ClientSession(connector=connector) as session:
            await self._seed(session, sandbox.gateway_url)
            self.shop = shop = Shop(
                session,
                sandbox.gateway_url,
                config.gateway.region_header,
                config.region_names,
                opts.sku_names,
                seed=opts.seed,
            )
            await self._load(shop)
            load_s = shop.now()
            # From here on the read models are watched; the store no longer changes
            # except by the settling below.
            snapshots: list[verdict.Snapshot] = []
            poller = asyncio.create_task(self._poll_readmodels(session, snapshots))
            try:
                orders, cancels = shop.unsettled()
                settled = 0
                if orders or cancels:
                    self.phase(
                        "settle",
                        f"sending {len(orders)} order(s) and {len(cancels)} cancel(s) without a "
                        "definite answer again, with their keys",
                    )
                    settled = await shop.settle(opts.settle_timeout_s)
                    self.phase("settle", f"{settled} settled")
                via = config.regions[0]
                self.phase("audit", f"strong scans of orders and inventory through {via.name}")
                state = await audit.read_state(via.grpc_address, config.client_tls_dir)
                self.phase(
                    "audit",
                    f"{len(state.orders)} orders, {len(state.reservations)} reservations, "
                    f"stock of {len(state.available)} SKUs",
                )
                self.phase(
                    "read models", "waiting until every region's read model equals the store"
                )
                converged = await self._converged(state, snapshots, shop)
            finally:
                await _cancel(poller)
        verdict.conclude(
            self.report,
            opts,
            shop,
            state,
            gateway_url=sandbox.gateway_url,
            load_s=load_s,
            settled=settled,
            converged=converged,
            snapshots=snapshots,
            renewals=self.renewals if config.security.tls else None,
        )
        if self.report.rollout:
            self.report.checks.append(rollout.check(self.report.rollout))
        await asyncio.to_thread(_write_exchanges, shop, opts.workdir / "exchanges.jsonl")
        await asyncio.to_thread(
            audit.save, opts.workdir / "audit.json", state, shop.orders.values()
        )

    async def _sandbox_up(self) -> float:
        """``meridian sandbox up`` for the run's configuration, in a child process."""
        started = time.monotonic()
        log = self.opts.workdir / "logs" / "sandbox-up.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with _append(log) as out:
            self._up = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meridian.cli.main",
                "--config",
                str(self.opts.config_path.resolve()),
                "sandbox",
                "up",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        # Interrupted, ``_up`` stays set: cleanup() stops the start-up first.
        code = await self._up.wait()
        self._up = None
        assert self.sandbox is not None
        self._remember(self.sandbox.state.load())
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            hint = ""
            if "already in use" in tail:
                hint = (
                    f"\nIs another sandbox using base port {self.opts.base_port}? Stop it "
                    "(`meridian sandbox down`), or give the demo other ports (--base-port)."
                )
            raise SandboxError(
                f"`meridian sandbox up` failed ({code}); its output ({log}):\n{tail}{hint}"
            )
        return time.monotonic() - started

    async def _seed(self, session: aiohttp.ClientSession, gateway: str) -> None:
        """Set each SKU's stock through the gateway (inventory's ``POST /stock/<sku>``),
        each from another region; retried while the freshly started services settle."""
        assert self.config is not None
        opts, regions = self.opts, self.config.region_names
        for i, sku in enumerate(opts.sku_names):
            why = ""
            for attempt in range(10):
                try:
                    async with session.post(
                        f"{gateway}/v1/invoke/inventory/stock/{sku}",
                        json={"available": opts.stock_per_sku},
                        headers={self.config.gateway.region_header: regions[i % len(regions)]},
                        timeout=aiohttp.ClientTimeout(total=15),
                    ) as resp:
                        if resp.status == 200:
                            break
                        why = f"{resp.status} {(await resp.text())[:200]}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    why = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.5 * (attempt + 1))
            else:
                raise MeridianError(f"seeding {sku} through the gateway failed: {why}")
        self.phase(
            "seed",
            f"{opts.skus} SKUs x {opts.stock_per_sku} units through inventory "
            f"(POST /stock/<sku> via the gateway); {opts.sku_names[0]} sells best",
        )

    async def _load(self, shop: Shop) -> None:
        opts = self.opts
        n = opts.clients_per_region * len(shop.regions)
        kill_at = opts.duration_s * opts.kill_at
        self.phase(
            "load",
            f"{n} shoppers ({opts.clients_per_region} per region) through the gateway for "
            f"{opts.duration_s:g} s; {opts.kill_region} is killed at +{kill_at:.0f} s",
        )
        stop = asyncio.Event()
        assert self.config is not None
        watch = rotation.RenewalWatch(self.config.ca_path / "identities", shop.now)
        self.renewals = watch.renewals
        watching = (
            asyncio.create_task(watch.run(), name="renewals") if self.config.security.tls else None
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(shop.run(opts.clients_per_region, stop))
            tg.create_task(self._progress(shop, stop))
            try:
                heal_ready = await self._fault(shop)
                if opts.rollout:
                    assert self.fleet is not None and self.config is not None
                    self.report.rollout = await rollout.DemoRollouts(
                        opts, self.config, self.fleet, shop, self.phase, self._remember,
                        self._variants,
                    ).run()  # fmt: skip
                rest = max(
                    opts.duration_s - shop.now(), heal_ready + opts.after_heal_s - shop.now()
                )
                await asyncio.sleep(max(0.0, rest))
            finally:
                stop.set()
            self.phase("load", f"stopping after {shop.now():.1f} s; clients finish what they sent")
        if watching is not None:
            await _cancel(watching)
        self.phase("load", f"stopped after {shop.now():.1f} s: {len(shop.exchanges)} requests")

    async def _fault(self, shop: Shop) -> float:
        """Kill the region at its time, bring it back after the outage; returns when it
        was back (seconds of load)."""
        opts = self.opts
        assert self.sandbox is not None and self.fleet is not None
        region = opts.kill_region
        await asyncio.sleep(max(0.0, opts.duration_s * opts.kill_at - shop.now()))
        killed_at = shop.now()
        victims = await asyncio.to_thread(self._kill, region)
        self._region_state = "down"
        self.report.failover = {"region": region, "killed_at_s": round(killed_at, 3)}
        self.phase(
            "fault",
            f"SIGKILL {region} at +{killed_at:.1f} s: {', '.join(v.name for v in victims)}",
        )
        watcher = asyncio.create_task(self._watch_failover(shop, region, killed_at))
        try:
            await asyncio.sleep(opts.outage_s)
            heal_at = shop.now()
            self._region_state = "healing"
            self.phase("heal", f"bringing {region} back: sandbox up, then its services")
            await self._sandbox_up()
            assert self.fleet is not None
            self._remember({r.name: r for r in self.fleet.start([region])})
            await self.fleet.wait_healthy([region])
            ready_at = shop.now()
            self._region_state = "up"
            self.report.heal = {
                "region": region,
                "started_at_s": round(heal_at, 3),
                "ready_s": round(ready_at - heal_at, 3),
            }
            self.phase("heal", f"{region} is back, services healthy ({ready_at - heal_at:.1f} s)")
        finally:
            await _cancel(watcher)
        return ready_at

    def _kill(self, region: str) -> list[ProcessRecord | Service]:
        assert self.sandbox is not None and self.fleet is not None
        return [*self.fleet.kill(region), *self.sandbox.kill_region(region)]

    async def _watch_failover(self, shop: Shop, region: str, killed_at: float) -> None:
        while True:
            found = report.failover(shop.exchanges, region, killed_at)
            if found["first_success_s"] is not None:
                self.phase(
                    "failover",
                    f"{region}'s shoppers answered again {found['first_success_s']:.2f} s after "
                    f"the kill, by {found['served_by']} ({found['failed_before']} failed before)",
                )
                return
            await asyncio.sleep(0.1)

    async def _progress(self, shop: Shop, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.opts.progress_every_s)
            if stop.is_set():
                return
            outcomes = Counter(r.outcome for r in shop.orders.values())
            failed = sum(1 for e in shop.exchanges if not e.served)
            reads = sum(1 for e in shop.exchanges if e.op == "read")
            self.say(
                f"         +{shop.now():5.1f}s  orders {outcomes['accepted']} accepted, "
                f"{outcomes['rejected']} rejected, {outcomes['pending'] + outcomes['unknown']} open"
                f" | reads {reads} | cancels {shop.cancels['ok']} | failed requests {failed}"
                f" | {self.opts.kill_region} {self._region_state}"
            )

    async def _poll_readmodels(
        self,
        session: aiohttp.ClientSession,
        snapshots: list[verdict.Snapshot],
    ) -> None:
        """Record every region's GET /readmodel, straight from its orders instance."""
        assert self.config is not None
        while True:
            snap: dict[str, dict[str, Any]] = {}
            for region in self.config.region_names:
                url = f"http://127.0.0.1:{self.opts.service_port('orders', region)}/readmodel"
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        snap[region] = await resp.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    snap[region] = {"error": type(exc).__name__}
            snapshots.append((time.monotonic(), snap))
            await asyncio.sleep(0.2)

    async def _converged(
        self,
        state: audit.GlobalState,
        snapshots: list[verdict.Snapshot],
        shop: Shop,
    ) -> float | None:
        """Seconds from the last acknowledged write until every read model equalled the
        store (and kept equal for 0.5 s), or None if not within the timeout."""
        _, want = audit.readmodel_hashes(state.orders.values())
        last_write = shop.t0 + shop.last_write()
        deadline = time.monotonic() + self.opts.converge_timeout_s
        while True:
            since = verdict.agreed_since(snapshots, want)
            if since is not None and snapshots[-1][0] - since >= 0.5:
                return round(max(0.0, since - last_write), 3)
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.2)

    # -- clean-up ---------------------------------------------------------------

    async def cleanup(self) -> None:
        """Stop what the run started (unless it finished and ``keep``), then check that
        nothing is left. Idempotent; never raises for what it cannot stop, it reports it."""
        up = self._up
        if up is not None and up.returncode is None:
            self.say("         stopping the sandbox start-up in progress")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(up.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(up.pid, signal.SIGKILL)
                await up.wait()
        keep = (
            self.opts.keep
            and self.interrupted_by is None
            and self.report.error is None
            and self.sandbox is not None
        )
        if self.sandbox is not None:
            self._remember(self.sandbox.state.load())
        if self.fleet is not None:
            self._remember(self.fleet.records())
        self.report.processes = sorted(
            (
                {
                    "name": r.name,
                    "region": r.region,
                    "pid": r.pid,
                    "argv": list(r.argv),
                    "ports": list(r.ports),
                    **({"start_ticks": r.start_ticks} if isinstance(r, Service) else {}),
                }
                for r in self._seen.values()
            ),
            key=lambda p: (p["name"], p["pid"]),
        )
        if keep:
            self.phase("done", "--keep: the sandbox and the services are left running")
            self._look_next(kept=True)
            return
        if self.fleet is not None or self.sandbox is not None:
            self.phase("cleanup", "stopping the services, then the sandbox")
        if self.fleet is not None:
            await asyncio.to_thread(self.fleet.stop_all)
        busy: list[int] = []
        if self.sandbox is not None:
            busy = await asyncio.to_thread(self.sandbox.down, purge=True)
        stragglers = await asyncio.to_thread(leftovers.sweep, self.opts.workdir)
        alive = [p for p in self._seen.values() if p.alive()]
        ours = leftovers.ports(self.config, self.opts) if self.config else []
        ports = sorted({*busy, *_listening(ours)} - self._busy_before)
        ports = await asyncio.to_thread(wait_ports_free, ports, 5.0) if ports else []
        self.report.left_behind = {
            "pids": [f"{p.name} ({p.pid})" for p in alive],
            "ports": ports,
            "stragglers_killed": stragglers,
        }
        if alive or ports:
            self.phase(
                "cleanup", f"LEFT BEHIND: pids {self.report.left_behind['pids']}, ports {ports}"
            )
        else:
            self.phase("cleanup", "no process or port left behind")
        self._look_next(kept=False)

    def _look_next(self, *, kept: bool) -> None:
        if self.config is None or self.sandbox is None:
            return
        cfg, gateway = self.config, self.sandbox.gateway_url
        logs = [
            f"logs: {self.opts.workdir / 'logs'} (services), {cfg.sandbox.workdir / 'logs'} (sandbox)",
        ]
        if self.shop is not None and self.report.checks:
            logs.append(
                f"every request the shoppers sent: {self.opts.workdir / 'exchanges.jsonl'}; "
                f"the audited state: {self.opts.workdir / 'audit.json'}"
            )
        if not kept and not self.report.checks:
            self.report.look_next = logs
            return
        agents = ", ".join(f"{r.name} {r.http_url}/metrics" for r in cfg.regions)
        models = ", ".join(
            f"http://127.0.0.1:{self.opts.service_port('orders', r)}/readmodel"
            for r in cfg.region_names
        )
        self.report.look_next = [
            "the sandbox and services are still up; stop them with "
            f"`meridian demo down --base-port {self.opts.base_port}`"
            if kept
            else "(all stopped now; `meridian demo run --keep` leaves them up to look at:)",
            f"meridian --config {self.opts.config_path} services   (each instance and its health)",
            f"agents' metrics: {agents}",
            f"gateway: {gateway}/gateway/status (regions in rotation), "
            f"{gateway}/metrics (requests and failovers per region)",
            f"read models: {models}",
            *logs,
        ]


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a helper task and wait until it is done. Unlike awaiting it under
    ``suppress(CancelledError)``, this never swallows a cancellation of the caller."""
    task.cancel()
    await asyncio.wait({task})


def _write_exchanges(shop: Shop, path: Path) -> None:
    """Every request the shoppers sent, one JSON object a line (times in seconds of load)."""
    with path.open("w") as out:
        for e in shop.exchanges:
            out.write(json.dumps(asdict(e)) + "\n")


def _append(path: Path) -> BinaryIO:
    return path.open("ab")


def _listening(ports: list[int]) -> list[int]:
    return [p for p in ports if port_in_use(p)]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, MeridianError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _options_json(opts: DemoOptions) -> dict[str, Any]:
    out = asdict(opts)
    return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


async def run_demo(opts: DemoOptions, say: Say) -> tuple[Report, int]:
    """Run the demo; returns its report and the exit status (0 when every invariant held,
    1 when one failed, 2 when the run could not be carried out, 128 + the signal's number
    when interrupted). SIGINT and SIGTERM stop the run and clean up."""
    run = DemoRun(opts, say)
    loop = asyncio.get_running_loop()
    scenario = asyncio.create_task(run.scenario())

    first_at = 0.0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal first_at
        if run.interrupted_by is None and not scenario.done():
            run.interrupted_by, first_at = sig, time.monotonic()
            say(f"\n{sig.name}: stopping the load, the services and the sandbox ...")
            scenario.cancel()
        elif time.monotonic() - first_at > 1.0:
            # (One Ctrl-C often arrives twice: from the terminal and forwarded by `uv run`.)
            say(f"{sig.name}: still cleaning up, so that no process is left behind")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        try:
            await scenario
        except asyncio.CancelledError:
            if run.interrupted_by is None:
                raise
            run.report.interrupted = True
        except Exception as exc:  # reported, and the run still cleans up
            run.report.error = _describe(exc)
            say(f"error: {run.report.error}")
            if not isinstance(exc, MeridianError):
                traceback.print_exception(exc, file=sys.stderr)
        finally:
            await run.cleanup()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    rep = run.report
    if run.interrupted_by is not None:
        code = 128 + int(run.interrupted_by)
    elif rep.error is not None:
        code = EXIT_ERROR
    else:
        code = EXIT_OK if rep.ok else EXIT_INVARIANT
    if opts.report_json is not None:
        rep.write_json(opts.report_json)
    return rep, code
