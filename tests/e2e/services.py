"""Real test-service processes (meridian.sandbox.testservice) for the e2e tier."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from tests.conftest import eventually
from tests.e2e.conftest import SandboxHandle


@dataclass
class ServiceInstance:
    service: str
    region: str
    instance_id: str
    port: int
    admin_port: int
    proc: subprocess.Popen[str]

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


class ServiceFleet:
    """Starts test services against a sandbox's agents; stops them all at the end."""

    def __init__(self, sandbox: SandboxHandle) -> None:
        self.sandbox = sandbox
        self.instances: list[ServiceInstance] = []

    def start(
        self,
        service: str,
        region: str,
        *,
        protocol: str = "http",
        fail_rate: float = 0.0,
        delay_ms: float = 0.0,
        instance_id: str = "",
        port: int = 0,
        version: str = "",
    ) -> ServiceInstance:
        agent = self.sandbox.config.region(region).http_url
        cmd = [
            sys.executable,
            "-m",
            "meridian.sandbox.testservice",
            "--service",
            service,
            "--region",
            region,
            "--agent",
            agent,
            "--protocol",
            protocol,
            "--fail-rate",
            str(fail_rate),
            "--delay-ms",
            str(delay_ms),
            "--port",
            str(port),
            "--ttl",
            "3",
            "--check-interval",
            "0.3",
        ]
        if instance_id:
            cmd += ["--instance-id", instance_id]
        if version:
            cmd += ["--version", version]
        cmd += ["--tls-dir", str(self.sandbox.service_tls(service))]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"test service {service} in {region} did not start:\n{err}")
        ready = json.loads(line)
        inst = ServiceInstance(
            service, region, ready["instance_id"], ready["port"], ready["admin_port"], proc
        )
        self.instances.append(inst)
        return inst

    def kill(self, inst: ServiceInstance) -> None:
        """SIGKILL: the instance vanishes without deregistering."""
        inst.proc.send_signal(signal.SIGKILL)
        inst.proc.wait(10)

    def stop_all(self) -> None:
        for inst in self.instances:
            if inst.proc.poll() is None:
                inst.proc.terminate()
        for inst in self.instances:
            try:
                inst.proc.wait(10)
            except subprocess.TimeoutExpired:
                inst.proc.kill()
                inst.proc.wait(10)
        self.instances.clear()

    async def configure(self, inst: ServiceInstance, **settings: Any) -> None:
        async with (
            self.sandbox.session() as s,
            s.post(f"{inst.admin_url}/admin/config", json=settings) as resp,
        ):
            assert resp.status == 200

    async def stats(self, inst: ServiceInstance) -> dict[str, Any]:
        async with self.sandbox.session() as s, s.get(f"{inst.admin_url}/admin/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def instances_seen(
        self, region: str, service: str, *, healthy: bool | None = True
    ) -> dict[str, str]:
        """instance id → health, as ``region``'s agent's registry replica says."""
        url = f"{self.sandbox.config.region(region).http_url}/v1/registry/list-instances"
        async with self.sandbox.session() as s, s.post(url, json={"service": service}) as resp:
            data = await resp.json()
        out = {st["instance"]["instanceId"]: st["health"] for st in data.get("instances", [])}
        if healthy is None:
            return out
        want = "INSTANCE_HEALTH_HEALTHY"
        return {k: v for k, v in out.items() if (v == want) == healthy}

    async def wait_visible(
        self, instances: list[ServiceInstance], *, everywhere: tuple[str, ...]
    ) -> None:
        """Until every region in ``everywhere`` sees every instance healthy."""
        ids = {i.instance_id for i in instances}
        services = {i.service for i in instances}
        for region in everywhere:

            async def seen(r: str = region) -> set[str]:
                found: set[str] = set()
                for svc in services:
                    found |= set(await self.instances_seen(r, svc))
                return found

            await eventually(
                seen,
                lambda got: ids <= got,
                timeout_s=60,
                interval_s=0.2,
                what=f"{region} sees {sorted(ids)} healthy",
            )


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(?:{{(.*)}})?\s+(\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def agent_metrics(sandbox: SandboxHandle, region: str) -> str:
    url = f"{sandbox.config.region(region).http_url}/metrics"
    async with sandbox.session() as s, s.get(url) as resp:
        return await resp.text()
