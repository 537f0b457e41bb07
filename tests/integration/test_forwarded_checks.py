"""A forwarded call is checked again by the agent that serves it, as if it had
come in there: a peer (or anything else that can publish on NATS) cannot slip
a header that splits a request, a bad method or an oversized body past the
checks the first agent made."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import pytest

from meridian._pb.meridian.internal.v1 import forwarding_pb2 as fw
from meridian._pb.meridian.v1 import invocation_pb2 as pb
from meridian.invocation.forwarding import forward_subject
from meridian.testing.nats_server import NatsCluster
from tests.integration.harness import agent_config, running_agent


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster("us-east") as c:
        yield c


def http(**fields: object) -> fw.ForwardedCall:
    base: dict[str, object] = {
        "service": "echo",
        "method": "hello",
        "http_verb": "POST",
        "headers": [pb.Header(name="Content-Type", value="application/json")],
        "body": b"{}",
    }
    base.update(fields)
    return fw.ForwardedCall(origin_region="eu-west", timeout_ms=2000, http=pb.InvokeRequest(**base))


BAD = [
    (
        http(headers=[pb.Header(name="X-A\r\nHost", value="evil")]),
        "headers",
        "not an HTTP token",
    ),
    (
        http(headers=[pb.Header(name="X-A", value="1\r\nX-Injected: 1")]),
        "headers",
        "CR, LF or NUL",
    ),
    (http(method="a/../../admin"), "method", "'..'"),
    (http(http_verb="CONNECT"), "http_verb", "must be one of"),
    (http(query="a=1 HTTP/1.1\r\nX: y"), "query", "no space"),
    (http(service="Echo!"), "service", "a-z"),
    (http(body=b"x" * (2 << 20)), "body", "at most"),
    (
        fw.ForwardedCall(
            origin_region="eu-west",
            grpc=fw.GrpcCall(service="echo", full_method="Say", request=b""),
        ),
        "method",
        "/package.Service/Method",
    ),
    (
        fw.ForwardedCall(
            origin_region="eu-west",
            grpc=fw.GrpcCall(
                service="echo",
                full_method="/echo.v1.Echo/Say",
                metadata=[pb.Header(name="x-a", value="1\nx-b: 2")],
            ),
        ),
        "metadata",
        "CR, LF or NUL",
    ),
]


async def test_a_forwarded_call_breaking_a_rule_is_refused_by_name(cluster: NatsCluster) -> None:
    config = agent_config(cluster)
    async with running_agent(config) as agent:
        await asyncio.wait_for(agent.invoker.forwarder.subscribed.wait(), 60)  # a hang guard
        nc = await nats.connect(cluster.server("us-east").url)
        try:
            for call, field, rule in BAD:
                reply = await nc.request(
                    forward_subject("us-east"), call.SerializeToString(), timeout=10
                )
                result = fw.ForwardedResult.FromString(reply.data)
                assert result.WhichOneof("result") == "error", (field, result)
                assert result.error.code == "INVALID_ARGUMENT", (field, result.error)
                assert field in result.error.message and rule in result.error.message, (
                    field,
                    result.error.message,
                )
        finally:
            await nc.close()
