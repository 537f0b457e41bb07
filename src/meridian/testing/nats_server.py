"""Run a real ``nats-server`` cluster for a test: free ports, JetStream, readiness, clean stop.

Modelled on nats.py's test helper: start, wait until JetStream reports a meta
leader (not merely an open port), then terminate and kill if it won't stop.
A JetStream cluster needs peers to elect a meta leader, so the unit here is a
cluster of ``size`` servers (default 3, one per region tag), connected by
direct routes on loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from meridian.backbone.server import find_nats_server
from meridian.testing.ports import free_port

DEFAULT_REGIONS = ("us-east", "eu-west", "ap-south")


class _Server:
    def __init__(self, name: str, region: str, store: Path) -> None:
        self.name = name
        self.region = region
        self.store = store
        self.port = free_port()
        self.cluster_port = free_port()
        self.monitor_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """A JetStream cluster named ``name`` with one server per entry of ``regions``.

    ``with NatsCluster("global") as c: c.urls`` — the cluster name lets tests
    place streams with ``placement: {cluster: ...}``, and each server carries
    the tag ``region:<region>`` as in the sandbox.
    """

    def __init__(self, name: str = "global", regions: Sequence[str] = DEFAULT_REGIONS) -> None:
        self.name = name
        self._tmp = tempfile.TemporaryDirectory(prefix="meridian-nats-")
        root = Path(self._tmp.name)
        self.servers = [_Server(f"{name}-{r}", r, root / r) for r in regions]

    def server(self, region: str) -> _Server:
        return next(s for s in self.servers if s.region == region)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def _config(self, srv: _Server) -> str:
        routes = ", ".join(f'"nats://127.0.0.1:{s.cluster_port}"' for s in self.servers)
        return f"""
server_name: {json.dumps(srv.name)}
listen: "127.0.0.1:{srv.port}"
max_payload: 8MB
http: "127.0.0.1:{srv.monitor_port}"
server_tags: [{json.dumps("region:" + srv.region)}]
jetstream {{
  store_dir: {json.dumps(str(srv.store / "js"))}
  max_file_store: 256MB
  unique_tag: "region:"
}}
cluster {{
  name: {json.dumps(self.name)}
  listen: "127.0.0.1:{srv.cluster_port}"
  routes: [{routes}]
}}
"""

    def start_server(self, region: str) -> None:
        srv = self.server(region)
        if srv.running():
            return
        srv.store.mkdir(parents=True, exist_ok=True)
        conf = srv.store / "server.conf"
        conf.write_text(self._config(srv))
        with open(srv.store / "server.log", "ab") as log:
            srv.proc = subprocess.Popen(
                [str(find_nats_server(None)), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def stop_server(self, region: str) -> None:
        srv = self.server(region)
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.terminate()
            try:
                srv.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                srv.proc.kill()
                srv.proc.wait(timeout=10)
        srv.proc = None

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until every running server sees a JetStream meta leader."""
        deadline = time.monotonic() + timeout_s
        pending = [s for s in self.servers if s.running()]
        while pending and time.monotonic() < deadline:
            for srv in list(pending):
                if srv.proc is not None and srv.proc.poll() is not None:
                    log = (srv.store / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"{srv.name} exited during start-up:\n{log[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{srv.monitor_url}/jsz", timeout=1) as resp:
                        if json.loads(resp.read()).get("meta_cluster", {}).get("leader"):
                            pending.remove(srv)
                except (OSError, urllib.error.URLError, ValueError):
                    pass
            time.sleep(0.05)
        if pending:
            raise TimeoutError(
                f"{', '.join(s.name for s in pending)} not JetStream-ready within {timeout_s}s"
            )

    def start(self) -> None:
        # A port can still be taken by another listener between our probe and
        # the server's bind; then every server gets fresh ports and starts again.
        for attempt in range(3):
            for srv in self.servers:
                self.start_server(srv.region)
            try:
                self.wait_ready()
                return
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
            self.stop()
            for srv in self.servers:
                shutil.rmtree(srv.store, ignore_errors=True)
                srv.port, srv.cluster_port, srv.monitor_port = free_port(), free_port(), free_port()

    def stop(self) -> None:
        for srv in self.servers:
            self.stop_server(srv.region)

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> NatsCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
