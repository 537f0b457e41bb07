"""Clock skew between real agents: the agent whose clock is off most of its peers
refuses writes that need the clock with CLOCK_SKEW and says why; the others don't."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meridian.agent.app import Agent
from meridian.client import MeridianClient
from meridian.config import MeridianConfig, parse_config
from meridian.core.errors import ClockSkewError, UnavailableError
from meridian.core.hlc import SystemClock
from meridian.security.pki import ensure_sandbox
from meridian.testing.clock import OffsetClock
from meridian.testing.nats_server import NatsCluster
from meridian.testing.ports import free_port
from tests.conftest import eventually

REGIONS = ("us-east", "eu-west", "ap-south")


@pytest.fixture(scope="module")
def cluster() -> Any:
    with NatsCluster("global") as c:
        yield c


def three_region_config(cluster: NatsCluster, ca_dir: Path) -> MeridianConfig:
    """Three agents with mutual TLS, their certificates from a CA in ``ca_dir``."""
    config = parse_config(
        {
            "region": [
                {
                    "name": r,
                    "nats_urls": [cluster.server(r).url],
                    "grpc_port": free_port(),
                    "http_port": free_port(),
                }
                for r in REGIONS
            ],
            "wan": {"link": []},
            "agent": {"status_interval_s": 0.2, "peer_timeout_s": 0.5, "quorum_timeout_s": 2.0},
            "keyspace": [{"name": "accounts"}],
            "security": {"ca_dir": str(ca_dir)},
        },
        env={},
    )
    ensure_sandbox(config)
    return config


@contextlib.asynccontextmanager
async def agents(
    config: MeridianConfig, skewed: str, offset_ms: int
) -> AsyncIterator[dict[str, Agent]]:
    running = {
        r: Agent(config, r, clock=OffsetClock(SystemClock(), offset_ms if r == skewed else 0))
        for r in REGIONS
    }
    tasks = [asyncio.create_task(a.run()) for a in running.values()]
    try:
        for a in running.values():
            # The cluster is `global` only: regional event streams never serve
            # here, so wait for the transports and the keyspace, not agent.ready.
            await asyncio.wait_for(a.listening.wait(), 30)
            await asyncio.wait_for(a.state.wait_serving(), 120)
        yield running
    finally:
        for a in running.values():
            a.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)


async def test_the_skewed_agent_refuses_clock_writes_and_says_why(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    config = three_region_config(cluster, tmp_path / "ca")
    async with agents(config, skewed="ap-south", offset_ms=1_000) as running:
        skewed = running["ap-south"]
        obs = await eventually(
            lambda: asyncio.sleep(0, skewed.monitor.latest),
            lambda o: bool(o.clock_skew),
            what="ap-south sees its clock off its peers",
        )
        assert "us-east" in obs.clock_skew
        assert "eu-west" in obs.clock_skew
        offsets = {p.region: p.clock_offset_ms for p in obs.peers}
        assert all(-1_200 < o < -800 for o in offsets.values()), offsets

        async with MeridianClient(
            config.region("ap-south").grpc_address, tls=config.client_tls_dir
        ) as ap:

            async def skewed_put() -> Exception | None:
                try:
                    await ap.put("accounts", "skewed", b"x")
                except Exception as exc:
                    return exc
                return None

            # The keyspace may still be setting up its streams (UNAVAILABLE);
            # once it is, the write must be refused for the clock, never accepted.
            err = await eventually(
                skewed_put,
                lambda e: not isinstance(e, UnavailableError),
                what="ap-south's accounts keyspace is ready",
            )
            assert isinstance(err, ClockSkewError), err
            assert "refuses writes that need the clock" in err.message

        # The healthy majority keeps writing: each sees only one peer off.
        for region in ("us-east", "eu-west"):
            assert running[region].monitor.latest.clock_skew == ""
            async with MeridianClient(
                config.region(region).grpc_address, tls=config.client_tls_dir
            ) as ok:

                async def put(c: MeridianClient = ok, r: str = region) -> bool:
                    try:
                        await c.put("accounts", f"fine.{r}", b"x")
                    except Exception:
                        return False
                    return True

                await eventually(put, bool, what=f"{region} writes")

        status = skewed.api.get_status
        from meridian._pb.meridian.v1 import health_pb2, status_pb2

        st = await status(status_pb2.GetStatusRequest())
        assert st.status.clock_skew
        health = await skewed.api.check(health_pb2.HealthCheckRequest())
        assert any(r.startswith("clock:") for r in health.reasons)
