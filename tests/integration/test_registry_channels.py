"""The agent's one gRPC channel to an instance (health checks and calls share
it) goes with the instance's last lease: a real in-process agent on a real
JetStream cluster, a real gRPC instance (the standard health service), a
health-checked registration, a call through the transparent proxy, then
Deregister."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from meridian.client import MeridianClient
from meridian.config import MeridianConfig
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, running_agent


@pytest.fixture(scope="module")
def cluster() -> Any:
    with NatsCluster("us-east") as c:
        yield c


@pytest.fixture
async def instance() -> AsyncIterator[str]:
    """A gRPC server with the standard health service (SERVING) and one method of
    its own, /pinger.Pinger/Ping, which echoes its bytes; yields host:port."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)

    async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"pong:" + request

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "pinger.Pinger", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_channels_to_an_instance_close_when_its_last_lease_goes(
    cluster: NatsCluster, instance: str
) -> None:
    config: MeridianConfig = agent_config(cluster)
    async with (
        running_agent(config) as agent,
        MeridianClient(config.region("us-east").grpc_address) as client,
    ):

        async def register() -> str | None:
            try:
                return await client.register(
                    "pinger", instance, protocol="grpc", instance_id="pinger-1", ttl_s=30
                )
            except Exception:  # the registry streams are not ready yet
                return None

        iid = await eventually(register, lambda r: r is not None, what="registered")
        assert iid == "pinger-1"
        await eventually(
            lambda: asyncio.sleep(0, instance in agent.registry.upstream.grpc_channels()),
            bool,
            what="a health check over gRPC",
        )
        async with grpc.aio.insecure_channel(config.region("us-east").grpc_address) as ch:
            ping = ch.unary_unary("/pinger.Pinger/Ping")

            async def call() -> bytes | None:
                try:
                    out = await ping(b"x", metadata=(("meridian-service", "pinger"),), timeout=5)
                    return bytes(out)
                except grpc.RpcError:  # not healthy in the router's view yet
                    return None

            answer = await eventually(call, lambda r: r is not None, what="a proxied call")
        assert answer == b"pong:x"
        # Health checks and calls share one channel per endpoint.
        assert agent.invoker.upstream is agent.registry.upstream
        assert agent.invoker.upstream.grpc_channels() == [instance]
        await client.deregister(iid)
        assert instance not in agent.registry.upstream.grpc_channels()
        assert instance not in agent.invoker.upstream.grpc_channels()
