"""The local multi-region sandbox: start, observe, restart and stop it.

``Sandbox.up()`` makes the whole topology run and returns only when it is
ready: the WAN emulator, then both NATS servers of every region, then, once
every server reports a JetStream meta leader and its routes and gateways are
connected, one agent per region, each answering its Status API, and last the
global gateway (``meridian gateway``), once it sees every region up.

The gateway belongs to no region: ``kill_region`` and ``restart`` leave it
running, as a real front door outlives a region.

``up()`` is idempotent: it starts only what is not already running. That is
how a killed region comes back (``up`` again, or ``restart(region)``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import ssl
import sys
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from meridian.backbone.server import JetStreamView, fetch_json, find_nats_server, probe
from meridian.backbone.topology import ServerSpec, build_topology, wan_proxies
from meridian.config import GLOBAL_CLUSTER, MeridianConfig, RegionConfig
from meridian.core.errors import MeridianError, UnavailableError
from meridian.sandbox.processes import (
    ProcessRecord,
    StateFile,
    port_in_use,
    spawn,
    stop,
    wait_ports_free,
)
from meridian.security.model import Kind
from meridian.security.pki import client_tls, ensure_sandbox, sandbox_ca
from meridian.security.tls import ClientTls

Say = Callable[[str], None]


class SandboxError(MeridianError):
    """The sandbox could not be brought up or torn down; the message says which part and why."""


@dataclass
class ComponentStatus:
    name: str
    region: str
    running: bool
    healthy: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def _quiet(_: str) -> None:
    return None


class Sandbox:
    """Supervisor of one sandbox, described by a configuration.

    ``config_path`` is handed to the children (agents, the WAN emulator) so
    they read the same file; None means the built-in defaults.
    """

    def __init__(
        self,
        config: MeridianConfig,
        config_path: str | None = None,
        *,
        say: Say = _quiet,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.config_path = str(Path(config_path).resolve()) if config_path else None
        self.say = say
        self.env = dict(os.environ if env is None else env)
        self.workdir = config.sandbox.workdir
        self.state = StateFile(self.workdir / "sandbox.json")
        self.servers = build_topology(config)

    # -- commands -------------------------------------------------------

    def up(self) -> dict[str, ProcessRecord]:
        """Start whatever is not running and wait until all of it is ready."""
        binary = find_nats_server(self.config.sandbox.nats_server)
        records = {n: r for n, r in self.state.load().items() if r.alive()}
        started_at = time.monotonic()
        issued = ensure_sandbox(self.config)
        if issued:
            self.say(
                f"mutual TLS: {len(issued)} identities from the CA in {self.config.ca_path} "
                "(renewed at half their lifetime)"
            )
            if "ca-renewer" not in records:
                records["ca-renewer"] = self._start_renewer()
                self.state.save(records)
        else:
            self.say("warning: security.mode is insecure: plaintext, unauthenticated agents")

        if "wan" not in records:
            records["wan"] = self._start_wan()
            self.state.save(records)
        self._wait(self._wan_ready, "WAN emulator control API", records["wan"])

        for spec in self.servers:
            key = f"nats:{spec.name}"
            if key not in records:
                records[key] = self._start_server(spec, binary)
                self.state.save(records)
        self.say("waiting for a JetStream meta leader in every cluster ...")
        self._wait(self._backbone_ready, "the NATS supercluster", None)

        for region in self.config.regions:
            key = f"agent:{region.name}"
            if key not in records:
                records[key] = self._start_agent(region)
                self.state.save(records)
        for region in self.config.regions:
            rec = records[f"agent:{region.name}"]
            self._wait(partial(self._agent_ready, region), f"agent {region.name}", rec)

        if "gateway" not in records:
            records["gateway"] = self._start_gateway()
            self.state.save(records)
        self._wait(self._gateway_ready, "the gateway", records["gateway"])
        self.say(f"sandbox ready in {time.monotonic() - started_at:.1f}s")
        return records

    def down(self, *, purge: bool = False) -> list[int]:
        """Stop every child, agents first; return ports still busy afterwards (should be none)."""
        records = self.state.load()
        order = sorted(records.values(), key=lambda r: _stop_rank(r.name))
        for rank in sorted({_stop_rank(r.name) for r in order}):
            stop([r for r in order if _stop_rank(r.name) == rank], grace_s=10)
        busy = wait_ports_free(self._all_ports(), timeout_s=10)
        self.state.remove()
        if purge:
            shutil.rmtree(self.workdir / "nats", ignore_errors=True)
        return busy

    def kill_region(self, region: str) -> list[ProcessRecord]:
        """SIGKILL every process of ``region``: its servers and its agent (not the gateway)."""
        self.config.region(region)
        records = self.state.load()
        victims = [r for r in records.values() if r.region == region]
        stop(victims, hard=True, grace_s=5)
        return victims

    @functools.cached_property
    def _tools_tls(self) -> ClientTls | None:
        """The CLI's identity for the agents' and gateway's HTTPS ports, after
        up() has issued it; it follows the files, so polling goes on working
        past a leaf's lifetime."""
        return client_tls(self.config)

    @property
    def _tools_ssl(self) -> ssl.SSLContext | None:
        return None if self._tools_tls is None else self._tools_tls.current()

    def renew_certificates(self) -> list[str]:
        """Re-issue every leaf that is due (or on an old root) and make the
        nats-servers whose certificates changed reload them (SIGHUP: a config
        reload); agents and the gateway read theirs again by themselves.
        Returns the identities renewed."""
        renewed = sandbox_ca(self.config).renew()
        servers = {
            f"nats:{leaf.identity.name}" for leaf in renewed if leaf.identity.kind is Kind.NATS
        }
        for name, rec in self.state.load().items():
            if name in servers and rec.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGHUP)
        return [leaf.identity.uri for leaf in renewed]

    def restart(self, region: str) -> None:
        """Stop ``region``'s processes gracefully and bring the sandbox back to ready."""
        self.config.region(region)
        records = self.state.load()
        stop([r for r in records.values() if r.region == region], grace_s=10)
        self.up()

    def status(self) -> list[ComponentStatus]:
        """One entry per component, from the state file, the monitoring endpoints and the agents."""
        records = self.state.load()
        out: list[ComponentStatus] = []
        wan = records.get("wan")
        wan_ok, wan_reason = self._wan_ready()
        out.append(
            ComponentStatus(
                "wan",
                "",
                bool(wan and wan.alive()),
                wan_ok,
                f"control API {self.config.wan.control_url}"
                + ("" if wan_ok else f": {wan_reason}"),
            )
        )
        for spec in self.servers:
            rec = records.get(f"nats:{spec.name}")
            view, reason = probe(spec.monitor_url, timeout=1.0)
            healthy = view is not None and view.has_leader
            detail = reason if view is None else _describe_view(view)
            out.append(
                ComponentStatus(
                    f"nats:{spec.name}", spec.region, bool(rec and rec.alive()), healthy, detail
                )
            )
        for region in self.config.regions:
            rec = records.get(f"agent:{region.name}")
            data, reason = self._agent_status(region)
            healthy, detail = _judge_agent(data, reason)
            out.append(
                ComponentStatus(
                    f"agent:{region.name}",
                    region.name,
                    bool(rec and rec.alive()),
                    healthy,
                    detail,
                    data or {},
                )
            )
        rec = records.get("gateway")
        gw_ok, gw_detail = self._gateway_health()
        out.append(
            ComponentStatus(
                "gateway", "", bool(rec and rec.alive()), gw_ok, f"{self.gateway_url}: {gw_detail}"
            )
        )
        return out

    @property
    def gateway_url(self) -> str:
        from meridian.gateway.server import local_url

        gw = self.config.gateway
        return local_url(gw.host, gw.port, tls=self.config.security.tls)

    # -- starting -------------------------------------------------------

    def _cli(self, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "meridian.cli.main"]
        if self.config_path:
            argv += ["--config", self.config_path]
        return argv + list(args)

    def _check_free(self, name: str, ports: list[int]) -> None:
        busy = [p for p in ports if port_in_use(p)]
        if busy:
            raise SandboxError(
                f"cannot start {name}: port(s) {', '.join(map(str, busy))} already in use by "
                "another process; stop it, run `meridian sandbox down`, or change the ports "
                f"in {self.config.source}"
            )

    def _start_renewer(self) -> ProcessRecord:
        """``meridian sandbox renew --watch``: re-issues each leaf at half its
        lifetime (see :meth:`renew_certificates`)."""
        every = max(0.5, min(60.0, self.config.security.leaf_lifetime_s / 10))
        return spawn(
            "ca-renewer",
            "",
            self._cli("sandbox", "renew", "--watch", f"{every:g}"),
            ports=[],
            log_path=self.workdir / "logs" / "ca-renewer.log",
            env=self.env,
        )

    def _start_wan(self) -> ProcessRecord:
        ports = [self.config.wan.control_port] + [p.listen_port for p in wan_proxies(self.config)]
        self._check_free("the WAN emulator", ports)
        self.say(f"starting WAN emulator (control {self.config.wan.control_url})")
        return spawn(
            "wan",
            "",
            self._cli("wan", "serve"),
            ports=ports,
            log_path=self.workdir / "logs" / "wan.log",
            env=self.env,
        )

    def _start_server(self, spec: ServerSpec, binary: Path) -> ProcessRecord:
        ports = [spec.ports.client, spec.ports.cluster, spec.ports.gateway, spec.ports.monitor]
        self._check_free(f"nats-server {spec.name}", ports)
        conf = self.workdir / "conf" / f"{spec.name}.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(spec.config_text)
        spec.store_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"starting nats-server {spec.name} (cluster {spec.cluster}) on {spec.client_url}")
        return spawn(
            f"nats:{spec.name}",
            spec.region,
            [str(binary), "-c", str(conf)],
            ports=ports,
            log_path=self.workdir / "logs" / f"{spec.name}.log",
            env=self.env,
        )

    def _start_agent(self, region: RegionConfig) -> ProcessRecord:
        ports = [region.grpc_port, region.http_port]
        self._check_free(f"agent {region.name}", ports)
        self.say(f"starting agent {region.name}")
        return spawn(
            f"agent:{region.name}",
            region.name,
            self._cli("agent", "run", "--region", region.name),
            ports=ports,
            log_path=self.workdir / "logs" / f"agent-{region.name}.log",
            env=self.env,
        )

    def _start_gateway(self) -> ProcessRecord:
        port = self.config.gateway.port
        self._check_free("the gateway", [port])
        self.say(f"starting gateway on {self.gateway_url}")
        return spawn(
            "gateway",
            "",
            self._cli("gateway"),
            ports=[port],
            log_path=self.workdir / "logs" / "gateway.log",
            env=self.env,
        )

    # -- readiness ------------------------------------------------------

    def _wait(
        self, check: Callable[[], tuple[bool, str]], what: str, rec: ProcessRecord | None
    ) -> None:
        deadline = time.monotonic() + self.config.sandbox.ready_timeout_s
        reason = ""
        while time.monotonic() < deadline:
            ok, reason = check()
            if ok:
                return
            if rec is not None and not rec.alive():
                raise SandboxError(
                    f"{what} exited during start-up; see its log {rec.log}:\n{_tail(rec.log)}"
                )
            time.sleep(0.25)
        raise UnavailableError(
            f"{what} not ready after {self.config.sandbox.ready_timeout_s:g}s: {reason}; "
            f"logs are in {self.workdir / 'logs'}"
        )

    def _wan_ready(self) -> tuple[bool, str]:
        try:
            fetch_json(f"{self.config.wan.control_url}/v1/wan", timeout=1.0)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            return False, f"WAN control API not answering: {exc}"
        return True, ""

    def _backbone_ready(self) -> tuple[bool, str]:
        n_regions = len(self.config.regions)
        for spec in self.servers:
            view, reason = probe(spec.monitor_url, timeout=1.0)
            if view is None:
                return False, f"{spec.name}: {reason}"
            if not view.has_leader:
                return False, f"{spec.name} sees no JetStream meta leader yet"
            try:
                gw = fetch_json(f"{spec.monitor_url}/gatewayz", timeout=1.0)
            except (OSError, ValueError) as exc:
                return False, f"{spec.name}: /gatewayz unreachable: {exc}"
            outbound = len(gw.get("outbound_gateways") or {})
            if outbound < n_regions:  # every other region's cluster, plus global or home
                return False, f"{spec.name} has {outbound}/{n_regions} gateways connected"
            if spec.cluster == GLOBAL_CLUSTER and view.routes < n_regions - 1:
                return False, f"{spec.name} has {view.routes}/{n_regions - 1} routes connected"
        return True, ""

    def _agent_status(self, region: RegionConfig) -> tuple[dict[str, Any] | None, str]:
        try:
            return fetch_json(f"{region.http_url}/v1/status", 2.0, self._tools_ssl), ""
        except (OSError, urllib.error.URLError, ValueError) as exc:
            return None, f"agent HTTP {region.http_url} unreachable: {exc}"

    def _agent_ready(self, region: RegionConfig) -> tuple[bool, str]:
        data, reason = self._agent_status(region)
        if data is None:
            return False, reason
        ok, detail = _judge_agent(data, "")
        return ok, detail

    def _gateway_regions(self) -> tuple[list[dict[str, Any]] | None, str]:
        """Each region as the gateway sees it, or None and why it does not answer."""
        try:
            data = fetch_json(f"{self.gateway_url}/gateway/status", 1.0, self._tools_ssl)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            return None, f"not answering: {exc}"
        return list(data.get("regions", [])), ""

    def _gateway_health(self) -> tuple[bool, str]:
        """Healthy while it answers and routes to at least one region; the detail names them."""
        regions, reason = self._gateway_regions()
        if regions is None:
            return False, reason
        up = [r["region"] for r in regions if r.get("up")]
        down = [f"{r['region']} ({r.get('last_error', '')})" for r in regions if not r.get("up")]
        detail = f"regions up: {', '.join(up) or 'none'}"
        if down:
            detail += f"; down: {', '.join(down)}"
        return bool(up), detail

    def _gateway_ready(self) -> tuple[bool, str]:
        """Ready once it answers and has every region in rotation."""
        regions, reason = self._gateway_regions()
        if regions is None:
            return False, reason
        down = [r["region"] for r in regions if not r.get("up")]
        return not down, f"regions not yet in rotation: {', '.join(down)}"

    def _all_ports(self) -> list[int]:
        ports = [self.config.gateway.port, self.config.wan.control_port] + [
            p.listen_port for p in wan_proxies(self.config)
        ]
        for spec in self.servers:
            ports += [spec.ports.client, spec.ports.cluster, spec.ports.gateway, spec.ports.monitor]
        for region in self.config.regions:
            ports += [region.grpc_port, region.http_port]
        return ports


def _judge_agent(data: dict[str, Any] | None, reason: str) -> tuple[bool, str]:
    """An agent is healthy when connected, JetStream answers and `global` has a quorum."""
    if data is None:
        return False, reason
    st = data.get("status", {})
    nats = st.get("nats", {})
    js = st.get("jetstream", {})
    glob = st.get("global", {})
    if not nats.get("connected"):
        return False, f"not connected to NATS: {nats.get('reason', '')}"
    if not js.get("available"):
        return False, f"JetStream unavailable: {js.get('reason', '')}"
    if not glob.get("quorumReachable"):
        return False, f"global quorum unreachable: {glob.get('reason', '')}"
    down = [p["region"] for p in st.get("peers", []) if not p.get("reachable")]
    if down:
        return False, f"peer region(s) unreachable: {', '.join(down)}"
    peers = ", ".join(f"{p['region']} {p.get('rttMs', 0):.0f}ms" for p in st.get("peers", []))
    return True, f"global leader {glob.get('leader', '?')}; peers {peers}"


def _describe_view(view: JetStreamView) -> str:
    if not view.has_leader:
        return "no JetStream meta leader"
    return (
        f"cluster {view.cluster}; meta leader {view.meta_leader} of {view.meta_size}; "
        f"routes {view.routes}"
    )


def _stop_rank(name: str) -> int:
    # Stop intake first (the gateway, then agents), then the data layer, then the network.
    if name == "gateway":
        return 0
    if name.startswith("agent:"):
        return 1
    if name.startswith("nats:"):
        return 2
    return 3


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def status_json(statuses: list[ComponentStatus]) -> str:
    return json.dumps(
        [
            {
                "name": s.name,
                "region": s.region,
                "running": s.running,
                "healthy": s.healthy,
                "detail": s.detail,
            }
            for s in statuses
        ],
        indent=2,
    )
