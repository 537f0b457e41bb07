"""What a run could leave behind, and the last resort against it.

:func:`ports` lists every port of a run's sandbox and services; :func:`sweep`
kills a process that escaped the records (a child a start-up spawned just before
it was interrupted, not yet saved in the state file), recognised by its command
line naming the run's configuration or sandbox directory. This process and its
ancestors are never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import asdict
from pathlib import Path

from meridian.backbone.topology import wan_proxies
from meridian.config import MeridianConfig
from meridian.demo.fleet import SERVICES
from meridian.demo.options import DemoOptions


def ports(config: MeridianConfig, opts: DemoOptions) -> list[int]:
    """Every port of the run's sandbox (agents, NATS, WAN emulator, gateway) and services."""
    out = [config.gateway.port, config.wan.control_port]
    out += [p.listen_port for p in wan_proxies(config)]
    for r in config.regions:
        out += [r.grpc_port, r.http_port, *asdict(r.regional).values()]
        out += list(asdict(r.global_).values())
        out += [opts.service_port(s, r.name) for s in (*SERVICES, "orders-v2")]
    return out


def sweep(workdir: Path) -> list[str]:
    """SIGKILL every process (but this one and its ancestors) whose command line names
    ``workdir``'s ``meridian.toml`` or sandbox directory; returns what it killed."""
    workdir = workdir.resolve()
    markers = (str(workdir / "meridian.toml"), str(workdir / "sandbox") + "/")
    spared = ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        if any(m in cmdline for m in markers):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
            found.append(f"{entry.name}: {cmdline.strip()[:160]}")
    return found


def ancestors() -> set[int]:
    """This process and every process above it."""
    out: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rpartition(")")[2].split()[1])
    return out
