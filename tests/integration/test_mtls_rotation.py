"""Rotation under load: the agent's and the caller's leaves re-issued every few
hundred milliseconds, then a whole root rotation with overlap, while callers
keep calling the agent over gRPC and HTTPS, on connections kept open and on
new ones. No call may fail because of a rotation."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import grpc
import pytest

from meridian._pb.meridian.v1 import health_pb2, health_pb2_grpc
from meridian.client import MeridianClient
from meridian.config import MeridianConfig
from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity, Kind
from meridian.security.pki import ensure_sandbox, sandbox_ca
from meridian.security.tls import ClientTls, TlsFiles, grpc_channel_credentials
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, running_agent, served_serial

TD = "meridian.local"
AGENT = Identity(TD, Kind.AGENT, "us-east")
OPERATOR = Identity(TD, Kind.OPERATOR, "meridian")
#: Short enough that several leaves come and go during the test.
LEAF_S = 3


async def rotate(ca: CertificateAuthority, stop: asyncio.Event, log: list[str]) -> None:
    """Re-issue both leaves every 0.3 s; midway, a root rotation with overlap."""
    started = time.monotonic()
    phase = "leaves"
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if phase == "leaves" and elapsed > 2.0:
            ca.rotate()  # 1. a new root, trusted beside the old one everywhere
            log.append("rotate")
            await asyncio.sleep(0.6)  # holders pick up the new bundle
            ca.renew()  # 2. every leaf still on the old root moves to the new one
            phase = "overlap"
        elif phase == "overlap" and elapsed > 3.5:
            ca.finish_rotation()  # 3. every leaf is on the new root by now
            log.append("finish")
            phase = "done"
        for ident in (AGENT, OPERATOR):
            ca.issue(ident, lifetime_s=LEAF_S, ip_addresses=["127.0.0.1"])
        log.append("issue")
        await asyncio.sleep(0.3)


async def test_no_call_fails_while_leaves_and_the_root_rotate(tmp_path: Path) -> None:
    with NatsCluster("global") as cluster:
        config: MeridianConfig = agent_config(cluster, ca_dir=tmp_path / "ca")
        ensure_sandbox(config)
        ca = sandbox_ca(config)
        for ident in (AGENT, OPERATOR):
            ca.issue(ident, lifetime_s=LEAF_S, ip_addresses=["127.0.0.1"])
        assert config.client_tls_dir is not None
        files = TlsFiles.in_folder(config.client_tls_dir)
        tls = ClientTls(files)  # a caller that follows its files, as the SDKs do
        rc = config.region("us-east")
        outcomes: Counter[str] = Counter()
        failures: list[str] = []

        async with running_agent(config):
            stop = asyncio.Event()

            async def grpc_calls(fresh: bool) -> None:
                channel = grpc.aio.secure_channel(rc.grpc_address, grpc_channel_credentials(files))
                try:
                    while not stop.is_set():
                        if fresh:  # a new connection, with the files as they are now
                            await channel.close()
                            channel = grpc.aio.secure_channel(
                                rc.grpc_address, grpc_channel_credentials(files)
                            )
                        stub = health_pb2_grpc.HealthServiceStub(channel)  # type: ignore[no-untyped-call]
                        try:
                            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                            outcomes[f"grpc-{'new' if fresh else 'kept'}"] += 1
                        except grpc.aio.AioRpcError as exc:
                            failures.append(f"grpc ({fresh=}): {exc.code()} {exc.details()}")
                        await asyncio.sleep(0.02)
                finally:
                    await channel.close()

            async def http_calls(fresh: bool) -> None:
                url = f"{rc.http_url}/v1/health"
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=fresh)
                ) as session:
                    while not stop.is_set():
                        try:
                            async with session.get(url, ssl=tls.current()) as resp:
                                await resp.read()
                            outcomes[f"http-{'new' if fresh else 'kept'}"] += 1
                        except aiohttp.ClientError as exc:
                            failures.append(f"http ({fresh=}): {exc!r}")
                        await asyncio.sleep(0.02)

            log: list[str] = []
            serials: set[int] = set()

            async def watch_serials() -> None:
                while not stop.is_set():
                    serials.add(await asyncio.to_thread(served_serial, rc.http_port, tls.current()))
                    await asyncio.sleep(0.2)

            tasks = [
                asyncio.create_task(grpc_calls(fresh=False)),
                asyncio.create_task(grpc_calls(fresh=True)),
                asyncio.create_task(http_calls(fresh=False)),
                asyncio.create_task(http_calls(fresh=True)),
                asyncio.create_task(watch_serials()),
            ]
            rotator = asyncio.create_task(rotate(ca, stop, log))
            await asyncio.sleep(6.0)
            stop.set()
            await asyncio.gather(rotator, *tasks)

        assert failures == [], failures[:5]
        assert "rotate" in log and "finish" in log
        # Under load: every kind of call kept going, and the agent served many leaves.
        assert all(outcomes[k] > 20 for k in ("grpc-new", "grpc-kept", "http-new", "http-kept"))
        assert len(serials) >= 5, serials
        # And the old root is gone from the bundle the agent trusts now.
        assert len(ca.roots()) == 1


async def test_the_python_client_presents_its_renewed_certificate_after_a_reconnect(
    tmp_path: Path,
) -> None:
    """A long-lived MeridianClient whose leaf expires while the agent is away:
    once the agent is back, it reconnects with the renewed leaf. A channel
    that kept the old credentials is refused (the check can fail)."""
    with NatsCluster("us-east") as cluster:
        config = agent_config(cluster, ca_dir=tmp_path / "ca")
        ensure_sandbox(config)
        ca = sandbox_ca(config)
        first = ca.issue(OPERATOR, lifetime_s=LEAF_S)
        assert config.client_tls_dir is not None
        files = TlsFiles.in_folder(config.client_tls_dir)
        stale = grpc_channel_credentials(files)  # what a client that never reloads holds
        address = config.region("us-east").grpc_address
        async with MeridianClient(address, tls=files) as client:
            async with running_agent(config) as agent:
                await asyncio.wait_for(agent.registry.wait_serving(), 120)
                assert await client.list_instances("nobody") == []
            renewed = ca.issue(OPERATOR, lifetime_s=60)
            await asyncio.sleep(max(0.0, first.validity.not_after - time.time()) + 0.5)
            async with running_agent(config) as agent:
                await asyncio.wait_for(agent.registry.wait_serving(), 120)
                got = await eventually(
                    lambda: client.list_instances("nobody"), lambda r: r == [], what="a call"
                )
                assert got == []
                assert client.channels.reloads >= 1
                # The old credentials, on a new connection, are refused:
                async with grpc.aio.secure_channel(address, stale) as channel:
                    stub = health_pb2_grpc.HealthServiceStub(channel)  # type: ignore[no-untyped-call]
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert renewed.serial != first.serial
