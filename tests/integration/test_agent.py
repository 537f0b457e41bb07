"""The agent in-process against a real nats-server: Status/Health over both transports,
traces, metrics, and what it reports when NATS or a peer region is missing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2 as std_health_pb2
from grpc_health.v1 import health_pb2_grpc as std_health_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meridian._pb.meridian.v1 import health_pb2, health_pb2_grpc, status_pb2, status_pb2_grpc
from meridian.agent.app import Agent
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, http_get, running_agent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


@pytest.fixture(scope="module")
def nats_server() -> Any:
    with NatsCluster("global") as cluster:
        yield cluster


async def test_status_over_http_reports_nats_jetstream_and_global_quorum(nats_server: Any) -> None:
    # Three regions declared, so the global probe stream is R3, one replica per region tag.
    config = agent_config(nats_server, peers=("eu-west", "ap-south"))
    async with running_agent(config):
        url = f"{config.region('us-east').http_url}/v1/status"

        async def probe() -> dict[str, Any]:
            return (await http_get(url))[1]["status"]

        status = await eventually(
            probe, lambda s: s["global"]["quorumReachable"], what="global quorum reachable"
        )
        assert status["region"] == "us-east"
        assert status["nats"]["connected"] is True
        assert status["nats"]["serverName"] == "global-us-east"
        assert status["nats"]["cluster"] == "global"
        assert status["jetstream"]["available"] is True
        assert status["jetstream"]["metaLeader"].startswith("global-")
        assert status["jetstream"]["metaClusterSize"] == 3
        assert status["global"]["leader"].startswith("global-")
        assert {r["server"] for r in status["global"]["replicas"]} | {
            status["global"]["leader"]
        } == {"global-us-east", "global-eu-west", "global-ap-south"}
        assert status["global"]["writeRttMs"] > 0
        assert [p["region"] for p in status["peers"]] == ["eu-west", "ap-south"]


async def test_grpc_and_http_serve_the_same_status(nats_server: Any) -> None:
    config = agent_config(nats_server)
    async with running_agent(config) as agent:
        await eventually(
            lambda: asyncio.sleep(0, agent.monitor.latest),
            lambda obs: obs.global_.quorum_reachable,
            what="quorum",
        )
        region = config.region("us-east")
        async with grpc.aio.insecure_channel(region.grpc_address) as channel:
            status = await status_pb2_grpc.StatusServiceStub(channel).GetStatus(
                status_pb2.GetStatusRequest()
            )
            health = await health_pb2_grpc.HealthServiceStub(channel).Check(
                health_pb2.HealthCheckRequest()
            )
            std = await std_health_grpc.HealthStub(channel).Check(
                std_health_pb2.HealthCheckRequest()
            )
        _, body, _ = await http_get(f"{region.http_url}/v1/status")
        assert status.status.agent_id == body["status"]["agentId"] == agent.agent_id
        assert status.status.nats.server_name == body["status"]["nats"]["serverName"]
        assert health.status == health_pb2.HealthCheckResponse.SERVING_STATUS_SERVING
        assert health.region == "us-east"
        assert std.status == std_health_pb2.HealthCheckResponse.SERVING


async def test_incoming_traceparent_is_honoured_on_both_transports(nats_server: Any) -> None:
    config = agent_config(nats_server)
    exporter = InMemorySpanExporter()
    async with running_agent(config, exporter) as agent:
        region = config.region("us-east")
        _, _, headers = await http_get(
            f"{region.http_url}/v1/health", headers={"traceparent": TRACEPARENT}
        )
        assert headers["traceparent"].split("-")[1] == TRACE_ID
        async with grpc.aio.insecure_channel(region.grpc_address) as channel:
            call = status_pb2_grpc.StatusServiceStub(channel).GetStatus(
                status_pb2.GetStatusRequest(), metadata=(("traceparent", TRACEPARENT),)
            )
            await call
            trailing = dict(await call.trailing_metadata())
        assert trailing["traceparent"].split("-")[1] == TRACE_ID
        agent.tracer_provider.force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("meridian.v1.HealthService/Check", "meridian.v1.StatusService/GetStatus"):
        span = spans[name]
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert span.parent is not None
        assert format(span.parent.span_id, "016x") == PARENT_SPAN


async def test_metrics_count_calls_and_expose_region_labels(nats_server: Any) -> None:
    config = agent_config(nats_server)
    async with running_agent(config) as agent:
        region = config.region("us-east")
        await eventually(
            lambda: asyncio.sleep(0, agent.monitor.latest),
            lambda obs: obs.global_.quorum_reachable,
            what="quorum",
        )
        for _ in range(3):
            await http_get(f"{region.http_url}/v1/status")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{region.http_url}/metrics") as resp,
        ):
            text = await resp.text()
        assert (
            'meridian_api_requests_total{code="OK",method="GetStatus",region="us-east",'
            'service="StatusService",transport="http"} 3.0'
        ) in text
        assert 'meridian_global_quorum_reachable{region="us-east"} 1.0' in text
        assert 'meridian_nats_connected{region="us-east"} 1.0' in text


async def test_unreachable_peer_region_degrades_health_and_says_why(nats_server: Any) -> None:
    config = agent_config(nats_server, peers=("eu-west",))
    async with running_agent(config) as agent:
        obs = await eventually(
            lambda: asyncio.sleep(0, agent.monitor.latest),
            lambda o: o.global_.quorum_reachable and o.peers[0].reason != "not checked yet",
            what="first full round",
        )
        assert obs.peers[0].region == "eu-west"
        assert obs.peers[0].reachable is False
        assert "did not answer" in obs.peers[0].reason
        status, body, _ = await http_get(f"{config.region('us-east').http_url}/v1/health")
        assert status == 200
        assert body["status"] == "SERVING_STATUS_DEGRADED"
        assert any(r.startswith("peer eu-west:") for r in body["reasons"])


async def test_a_cancelled_agent_still_stops_every_component(nats_server: Any) -> None:
    """Cancelling agent.run() (as a supervisor or an embedding program may) releases
    what the components hold: the API ports, and the registry's HTTP session."""
    config = agent_config(nats_server)
    region = config.region("us-east")
    agent = Agent(config, "us-east")
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.listening.wait(), 30)
    status, body, _ = await http_get(f"{region.http_url}/v1/health")
    assert body["region"] == "us-east", (status, body)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    host, port = region.http_url.removeprefix("http://").rsplit(":", 1)
    with pytest.raises(OSError):
        await asyncio.open_connection(host, int(port))
    session = agent.registry._session
    assert session is not None and session.closed


async def test_agent_waits_for_nats_then_recovers_after_server_restart() -> None:
    cluster = NatsCluster("global")
    try:
        config = agent_config(cluster)
        # The agent starts before its NATS servers: it must serve and say why it's not ready.
        async with running_agent(config) as agent:
            url = f"{config.region('us-east').http_url}/v1/health"
            code, body, _ = await http_get(url)
            assert code == 503
            assert body["status"] == "SERVING_STATUS_NOT_SERVING"
            assert "NATS" in body["reasons"][0]

            await asyncio.to_thread(cluster.start)

            async def health() -> tuple[int, Any, Any]:
                return await http_get(url)

            await eventually(
                health,
                lambda r: r[1]["status"] == "SERVING_STATUS_SERVING",
                what="SERVING after NATS came up",
            )
            await asyncio.to_thread(cluster.stop)
            down = await eventually(
                health,
                lambda r: r[1]["status"] == "SERVING_STATUS_NOT_SERVING",
                what="NOT_SERVING after its NATS servers went away",
            )
            assert down[0] == 503
            await asyncio.to_thread(cluster.start)
            await eventually(
                health,
                lambda r: r[1]["status"] == "SERVING_STATUS_SERVING",
                what="SERVING after NATS restarted",
            )
            assert agent.monitor.latest.global_.quorum_reachable
    finally:
        cluster.close()


async def test_lost_quorum_gives_a_reason_and_comes_back(nats_server: Any) -> None:
    """With two of three `global` servers gone, writes can't commit: the agent says so."""
    config = agent_config(nats_server)
    async with running_agent(config) as agent:

        async def latest() -> Any:
            return agent.monitor.latest

        await eventually(latest, lambda o: o.global_.quorum_reachable, what="quorum")
        try:
            for region in ("eu-west", "ap-south"):
                await asyncio.to_thread(nats_server.stop_server, region)
            lost = await eventually(
                latest, lambda o: not o.global_.quorum_reachable, what="quorum lost"
            )
            assert "no quorum of global replicas is reachable" in lost.global_.reason
            assert lost.nats.connected
        finally:
            for region in ("eu-west", "ap-south"):
                await asyncio.to_thread(nats_server.start_server, region)
        await eventually(latest, lambda o: o.global_.quorum_reachable, what="quorum back")


async def test_an_agent_whose_components_cannot_serve_answers_but_is_not_ready(
    nats_server: Any,
) -> None:
    """The test cluster is `global` alone: the regional event and registry streams
    can't be placed, so the agent answers Health but never reports ready."""
    config = agent_config(nats_server)
    async with running_agent(config) as agent:
        await asyncio.wait_for(agent.state.wait_serving(), 120)
        await asyncio.wait_for(agent.idempotency.wait_serving(), 120)
        status, body, _ = await http_get(f"{config.region('us-east').http_url}/v1/health")
        assert body["region"] == "us-east", (status, body)
        await asyncio.sleep(2)  # several retries of the regional streams
        assert agent.listening.is_set()
        assert not agent.events.ready and not agent.registry.ready
        assert not agent.ready.is_set()


async def test_nats_credentials_never_show_in_status_or_logs(
    nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A URL with user information (the server accepts any: it has no auth), and
    # a second one that cannot be reached, so errors name URLs too.
    home = nats_server.server("us-east").url
    with_secret = home.replace("nats://", "nats://alice:s3cret-pw@")
    config = agent_config(nats_server)
    region = dataclasses.replace(
        config.region("us-east"),
        nats_urls=(with_secret, "nats://bob:hunter2@127.0.0.1:1"),
    )
    config = dataclasses.replace(config, regions=(region,))
    with caplog.at_level(logging.DEBUG):
        async with running_agent(config) as agent:
            url = f"{region.http_url}/v1/status"

            async def probe() -> dict[str, Any]:
                return (await http_get(url))[1]["status"]

            status = await eventually(
                probe, lambda s: s["nats"]["connected"], what="connected to NATS"
            )
            assert status["nats"]["serverUrl"].startswith("nats://***@"), status["nats"]
            shown = json.dumps(status) + agent.conn.last_error
    shown += "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    for secret in ("s3cret-pw", "hunter2", "alice:", "bob:"):
        assert secret not in shown
