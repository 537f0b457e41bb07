"""Bounded resources for long-lived calls: a watch whose reader falls too far
behind is cut off with RESOURCE_EXHAUSTED (not buffered without end in the
agent), and one caller cannot hold more watches and subscriptions than its
share. A real agent on a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from meridian._pb.meridian.v1 import state_pb2, state_pb2_grpc
from meridian.agent.app import Agent
from meridian.backbone.feed import WATCH_QUEUE_MESSAGES
from meridian.client import MeridianClient, PutItem
from meridian.config import MeridianConfig
from meridian.core.errors import ResourceExhaustedError
from meridian.testing.nats_server import NatsCluster
from tests.integration.harness import agent_config, ready_agent


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster("global") as c:
        yield c


@pytest.fixture
async def agent(cluster: NatsCluster) -> AsyncIterator[tuple[Agent, MeridianConfig]]:
    config = agent_config(cluster, peers=("eu-west", "ap-south"), keyspaces=[{"name": "feed"}])
    async with ready_agent(config, state=True) as a:
        yield a, config


async def test_a_watch_that_falls_too_far_behind_is_cut_off(
    agent: tuple[Agent, MeridianConfig],
) -> None:
    _, config = agent
    target = config.region("us-east").grpc_address
    value = b"v" * 4096
    # Well past the queue's limit plus what HTTP/2 flow control lets through.
    writes = 2 * WATCH_QUEUE_MESSAGES
    async with (
        MeridianClient(target, timeout_s=60) as client,
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = state_pb2_grpc.StateServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Watch(state_pb2.WatchRequest(keyspace="feed", prefix="k"))
        await call.wait_for_connection()
        await asyncio.sleep(0.5)  # the watch's feed is set up
        for start in range(0, writes, 1000):  # while nobody reads the watch
            batch = [PutItem("feed", f"k{i:06d}", value) for i in range(start, start + 1000)]
            assert all(isinstance(r, int) for r in await client.put_many(batch))
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(120):  # a hang guard: unbounded, it never ends
                async for _ in call:
                    received += 1
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fell more than" in (err.value.details() or "")
        # What came before the gap was delivered, in order; nothing after it.
        assert WATCH_QUEUE_MESSAGES <= received < writes


async def test_one_caller_holds_at_most_its_share_of_streams(
    agent: tuple[Agent, MeridianConfig],
) -> None:
    a, config = agent
    a.stream_quota.limit = 2
    async with MeridianClient(config.region("us-east").grpc_address) as client:
        opened: list[Any] = []
        for _ in range(2):
            w = client.watch("feed", "q")
            opened.append(w)
            # The watch is open once the agent counts it.
            task = asyncio.create_task(anext(w))
            opened.append(task)
        await asyncio.sleep(0.5)
        assert a.stream_quota.held("") == 2
        with pytest.raises(ResourceExhaustedError) as err:
            await anext(client.watch("feed", "q"))
        assert "2 watches and subscriptions" in err.value.message
        # Closing one gives its slot back.
        opened[1].cancel()
        await asyncio.gather(opened[1], return_exceptions=True)
        await opened[0].aclose()
        for _ in range(100):
            if a.stream_quota.held("") < 2:
                break
            await asyncio.sleep(0.05)
        assert a.stream_quota.held("") == 1
        third = asyncio.create_task(anext(client.watch("feed", "q")))
        await asyncio.sleep(0.5)
        assert a.stream_quota.held("") == 2
        third.cancel()
        opened[3].cancel()
        await asyncio.gather(third, opened[3], return_exceptions=True)
