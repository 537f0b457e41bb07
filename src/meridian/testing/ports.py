"""Ports for test servers that no other process will take while the test runs.

Binding port 0 returns a port from the kernel's *ephemeral* range, the same
range the kernel draws from for every outgoing connection's source port. Between
closing the probe socket and the server binding it, a client anywhere on the
machine may take that port for a connection, and the server then dies with
"address already in use" (seen in CI: a nats-server route port). So test ports
come from just below the ephemeral range, where the kernel never hands out
source ports, and each is handed out at most once per process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Fixed ports the repository's own tools use (demo 14000, benches 15000-19000,
# e2e 23000-25000, chaos 27000-28000, bench-security 29000) are all below this.
_FLOOR = 30000
_lock = threading.Lock()
_handed_out: set[int] = set()


def _range() -> tuple[int, int]:
    """The ports below the ephemeral range, or (0, 0) when there is no room."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return (0, 0)
    return (_FLOOR, low - 1) if low - 1 - _FLOOR >= 256 else (0, 0)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 1) -> int:
    """The first of ``span`` consecutive free ports, never handed out before."""
    low, high = _range()
    with _lock:
        if low:
            for _ in range(2000):
                first = random.randint(low, high - span + 1)
                ports = range(first, first + span)
                if any(p in _handed_out for p in ports):
                    continue
                if all(_bindable(p) for p in ports):
                    _handed_out.update(ports)
                    return first
        # No room below the ephemeral range (an unusual kernel setting): ask the
        # kernel, accepting the small race that the module docstring describes.
        for _ in range(2000):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                first = int(sock.getsockname()[1])
            ports = range(first, first + span)
            if not any(p in _handed_out for p in ports) and all(_bindable(p) for p in ports):
                _handed_out.update(ports)
                return first
    raise OSError(f"no {span} consecutive free ports")
