"""``meridian residency check`` against a real three-region sandbox: a NATS
supercluster (a cluster per region joined by gateways, plus the stretched
``global`` cluster), its WAN emulator and agents, driven through the real CLI.

``NatsCluster`` runs one cluster, not a supercluster, so this module starts a
sandbox of its own (insecure) once, and takes it down at the end. The check
must find nothing on the streams the agents create, name a stream placed
where its keyspace or topic may not be, and find nothing again once it is
gone.

Ports: the sandbox's are one block of :data:`SPAN` from ``free_port``, below
the kernel's ephemeral range. A fixed block at 33000 was tried first and lost
3 of 4 starts: 33000-33999 is inside the usual ephemeral range (32768-60999),
where the sandbox's own outgoing connections took ports its servers had yet to
bind. ``MERIDIAN_RESIDENCY_BASE_PORT`` pins the block instead."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import api
from nats.js.client import JetStreamContext

from meridian.backbone.topology import build_topology
from meridian.config import MeridianConfig, load_config
from meridian.core.errors import UnavailableError
from meridian.residency.check import count_topics
from meridian.residency.model import Rules, StoredStream
from meridian.testing.ports import free_port
from tests.conftest import eventually

REGIONS = ("us-east", "eu-west", "ap-south")
#: The sandbox's ports: its regions' blocks (base .. base+221, the gateway at
#: base+90), then the WAN proxies and the emulator's control port.
SPAN = 250

CONFIG = """
[sandbox]
workdir = "sandbox"
base_port = {base_port}
ready_timeout_s = 60

[wan]
proxy_base_port = {proxy_base_port}
control_port = {control_port}

[[region]]
name = "us-east"

[[region]]
name = "eu-west"

[[region]]
name = "ap-south"

[[keyspace]]
name = "accounts"
locality = "global"

[[keyspace]]
name = "profiles"
locality = "regional"
residency = ["us-east", "eu-west"]

[[keyspace]]
name = "carts"
locality = "replicated"
residency = ["us-east", "eu-west"]

[[topic]]
name = "eu-orders"
residency = ["eu-west"]
"""

MIRROR = "MGRM_profiles_Peu_Rap-south"


@dataclass
class Box:
    config_path: Path
    config: MeridianConfig

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "meridian.cli.main",
                "--insecure",
                "--config",
                str(self.config_path),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check(self, *args: str) -> tuple[int, dict[str, Any]]:
        """``residency check --json``: its exit status and its report."""
        proc = self.cli("residency", "check", "--json", *args)
        assert proc.returncode in (0, 1), f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        report: dict[str, Any] = json.loads(proc.stdout)
        return proc.returncode, report


def _lost_a_port(box: Box, up: subprocess.CompletedProcess[str]) -> bool:
    """Whether ``sandbox up`` failed because another process held one of its ports."""
    logs = box.config.sandbox.workdir / "logs"
    texts = [up.stdout, up.stderr]
    texts += [p.read_text(errors="replace") for p in logs.glob("*.log")] if logs.is_dir() else []
    return any("address already in use" in t for t in texts)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    pinned = os.environ.get("MERIDIAN_RESIDENCY_BASE_PORT")
    for attempt in range(3):
        base = int(pinned) if pinned else free_port(span=SPAN)
        root = tmp_path_factory.mktemp("residency")
        path = root / "meridian.toml"
        path.write_text(
            CONFIG.format(base_port=base, proxy_base_port=base + 225, control_port=base + SPAN - 1)
        )
        box = Box(path, load_config(path, env={"MERIDIAN_INSECURE": "1"}))
        try:
            up = box.cli("sandbox", "up")
            if up.returncode == 0:
                yield box
                return
            # Between free_port's probe and a server's bind another process may
            # take a port: then start again on a fresh block.
            retry = not pinned and attempt < 2 and _lost_a_port(box, up)
            assert retry, f"sandbox up failed:\n{up.stdout}\n{up.stderr}"
        finally:
            box.cli("sandbox", "down", "--purge")


@pytest.fixture
async def js(sandbox: Box) -> AsyncIterator[Callable[[str], Awaitable[JetStreamContext]]]:
    """JetStream in the agents' account through a region's own server: a
    stream is made and written through its region's server, so no write waits
    for the stream's interest to cross the gateways."""
    conns: dict[str, Client] = {}

    async def through(region: str) -> JetStreamContext:
        if region not in conns:
            urls = list(sandbox.config.region(region).agent_nats_urls)
            conns[region] = await nats.connect(servers=urls, connect_timeout=5)
        # Generous: JetStream's API crosses the emulated WAN to the meta leader.
        return conns[region].jetstream(timeout=30)

    try:
        yield through
    finally:
        for nc in conns.values():
            await nc.close()


async def _stream_in(
    js: Callable[[str], Awaitable[JetStreamContext]], name: str, region: str, subjects: list[str]
) -> JetStreamContext:
    """An R1 stream placed in ``region``'s own cluster; JetStream through that region."""
    here = await js(region)
    await here.add_stream(
        api.StreamConfig(
            name=name,
            subjects=subjects,
            num_replicas=1,
            placement=api.Placement(cluster=region),
        )
    )
    return here


async def _publish(js: JetStreamContext, subject: str, data: bytes) -> None:
    """Publish once the new stream listens on ``subject`` (a moment after it is made)."""

    async def attempt() -> bool:
        try:
            await js.publish(subject, data)
        except nats.js.errors.NoStreamResponseError:
            return False
        return True

    await eventually(attempt, bool, timeout_s=60, what=f"a stream storing {subject}")


async def _clean_again(sandbox: Box) -> None:
    """The check exits 0 again: a deleted stream leaves its server a moment
    after JetStream's API has answered."""
    await eventually(
        lambda: asyncio.to_thread(sandbox.check),
        lambda result: result[0] == 0,
        timeout_s=60,
        interval_s=0.5,
        what="a clean check once the misplaced stream is deleted",
    )


def test_the_sandbox_as_the_agents_made_it_is_clean(sandbox: Box) -> None:
    code, report = sandbox.check()
    assert code == 0, report
    assert report["ok"] is True
    assert report["violations"] == []
    servers = {(s["name"], s["region"]) for s in report["servers"]}
    assert servers == {(s.name, s.region) for s in build_topology(sandbox.config)}
    # The agents' own streams were there to be judged.
    assert all(s["streams"] > 0 for s in report["servers"] if s["cluster"] != "global")


async def test_a_mirror_in_a_region_outside_the_residency_is_reported(
    sandbox: Box, js: Callable[[str], Awaitable[JetStreamContext]]
) -> None:
    ap_south = await _stream_in(js, MIRROR, "ap-south", ["rtest.mirror.>"])
    try:
        await _publish(ap_south, "rtest.mirror.alice", b"a profile that must stay out of ap-south")

        proc = sandbox.cli("residency", "check")
        assert proc.returncode == 1, f"{proc.stdout}\n{proc.stderr}"
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("VIOLATION"))
        assert "server ap-south (ap-south)" in line
        assert MIRROR in line
        assert "keyspace profiles partition eu" in line
        assert "us-east, eu-west" in line

        # The same through the servers named one by one, as for a real deployment.
        monitors = [a for s in build_topology(sandbox.config) for a in ("--monitor", s.monitor_url)]
        code, report = sandbox.check(*monitors)
        assert code == 1
        assert [
            (v["server"], v["region"], v["stream"], v["messages"], v["allowed"], v["rule"])
            for v in report["violations"]
        ] == [("ap-south", "ap-south", MIRROR, 1, ["us-east", "eu-west"], "configuration")]
        assert report["violations"][0]["bytes"] > 0
    finally:
        await ap_south.delete_stream(MIRROR)

    await _clean_again(sandbox)


async def test_a_resident_topics_event_in_a_wrong_region_is_reported(
    sandbox: Box, js: Callable[[str], Awaitable[JetStreamContext]]
) -> None:
    # Aggregate-style streams (EVA_...) with subjects of their own, so the test
    # controls every message: one in us-east, where eu-orders may not be, and
    # one in eu-west, where it may.
    us_east = await _stream_in(js, "EVA_rtest-us", "us-east", ["mev.rtest-us.>"])
    eu_west = await _stream_in(js, "EVA_rtest-eu", "eu-west", ["mev.rtest-eu.>"])
    try:
        await _publish(us_east, "mev.rtest-us.eu-orders.o-1", b"an EU order in us-east")
        await _publish(us_east, "mev.rtest-us.orders.o-2", b"a topic with no residency")
        await _publish(eu_west, "mev.rtest-eu.eu-orders.o-3", b"an EU order where it belongs")

        code, report = sandbox.check()
        assert code == 1
        assert [
            (v["server"], v["region"], v["stream"], v["resource"], v["messages"], v["allowed"])
            for v in report["violations"]
        ] == [("us-east", "us-east", "EVA_rtest-us", "topic eu-orders", 1, ["eu-west"])]
    finally:
        await us_east.delete_stream("EVA_rtest-us")
        await eu_west.delete_stream("EVA_rtest-eu")

    await _clean_again(sandbox)


def test_an_unreachable_server_exits_2_naming_it(sandbox: Box) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    reachable = build_topology(sandbox.config)[0].monitor_url
    proc = sandbox.cli(
        "residency", "check", "--monitor", reachable, "--monitor", nowhere, "--timeout", "5"
    )
    assert proc.returncode == 2, f"{proc.stdout}\n{proc.stderr}"
    assert nowhere in proc.stderr
    assert "cannot read 1 of 2 server(s)" in proc.stderr


async def test_jetstream_unreachable_is_an_error_naming_the_servers() -> None:
    # No sandbox: a resident topic's event stream must be counted, and the
    # region's NATS servers do not answer.
    nowhere = f"nats://127.0.0.1:{free_port()}"
    stream = StoredStream("n1", "ap-south", "MERIDIAN", "EVA_ap-south", 10, 1)
    rules = Rules(keyspaces={}, topics={"eu-orders": ("eu-west",)})
    with pytest.raises(UnavailableError) as info:
        await count_topics(
            [stream], rules, nats_servers={"ap-south": [nowhere]}, tls=None, timeout_s=2
        )
    assert "ap-south's NATS servers" in info.value.message
    assert nowhere in info.value.message
