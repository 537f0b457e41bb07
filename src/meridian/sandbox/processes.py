"""Detached child processes of the sandbox, and the state file that remembers them.

``meridian sandbox up`` returns once everything is ready, leaving the servers,
the WAN emulator and the agents running in their own sessions. The state file
(``<workdir>/sandbox.json``) records each one's pid and command line so that
``status``, ``down`` and ``restart`` find them again from another process. A
pid counts as ours only while ``/proc/<pid>/cmdline`` still matches, so a
recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    """One child the sandbox started."""

    name: str  # e.g. "nats:us-east", "nats:global-us-east", "agent:us-east", "wan"
    region: str  # "" for the WAN emulator
    pid: int
    argv: tuple[str, ...]
    ports: tuple[int, ...]
    log: str

    def alive(self) -> bool:
        cmdline = _cmdline(self.pid)
        if cmdline == ():
            # Empty: a zombie (exited, not yet reaped), or a process caught
            # mid-exec right after it was spawned. Only its state tells them apart.
            return _state(self.pid) not in (None, "Z", "X")
        return cmdline == self.argv


def _cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0"))


def _state(pid: int) -> str | None:
    """The one-letter state in ``/proc/<pid>/stat`` (R, S, D, Z, ...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


class StateFile:
    """The JSON file listing the sandbox's children. Writes are atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, ProcessRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}
        records = {}
        for item in raw.get("processes", []):
            rec = ProcessRecord(
                name=item["name"],
                region=item["region"],
                pid=int(item["pid"]),
                argv=tuple(item["argv"]),
                ports=tuple(item["ports"]),
                log=item["log"],
            )
            records[rec.name] = rec
        return records

    def save(self, records: dict[str, ProcessRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": [asdict(r) for r in records.values()]}, indent=2))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def spawn(
    name: str,
    region: str,
    argv: Sequence[str],
    *,
    ports: Iterable[int],
    log_path: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> ProcessRecord:
    """Start ``argv`` in a new session with output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
            env=env,
        )
    # The Popen object is dropped on purpose: the child outlives this process.
    # Mark it as reaped-by-someone-else so Python doesn't warn about it.
    proc.returncode = 0
    return ProcessRecord(
        name=name,
        region=region,
        pid=proc.pid,
        argv=tuple(argv),
        ports=tuple(ports),
        log=str(log_path),
    )


def stop(records: Iterable[ProcessRecord], *, grace_s: float = 10.0, hard: bool = False) -> None:
    """Stop the given children: SIGTERM (or SIGKILL if ``hard``), then SIGKILL after the grace."""
    records = [r for r in records if r.alive()]
    sig = signal.SIGKILL if hard else signal.SIGTERM
    for rec in records:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, sig)
    deadline = time.monotonic() + grace_s
    while records and time.monotonic() < deadline:
        _reap()
        records = [r for r in records if r.alive()]
        if records:
            time.sleep(0.05)
    for rec in records:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while records and time.monotonic() < deadline:
        _reap()
        records = [r for r in records if r.alive()]
        if records:
            time.sleep(0.05)


def _reap() -> None:
    """Collect any of our own exited children so they stop looking alive."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_ports_free(ports: Iterable[int], timeout_s: float = 10.0) -> list[int]:
    """Wait until nothing listens on ``ports``; return those still busy."""
    pending = list(ports)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if port_in_use(p)]
        if pending:
            time.sleep(0.1)
    return pending
