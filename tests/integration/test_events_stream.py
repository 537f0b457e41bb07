"""Publishing many events on one call, through a real agent on a real 3-server
JetStream cluster.

- PublishStream: stored in order with their responses in request order;
  duplicates recognised as with Publish; an invalid request ends the stream
  with INVALID_ARGUMENT after the responses before it, and nothing after it is
  published.
- PublishBatch, over gRPC (the Python client) and HTTP: every event of a batch
  stored in order with its result in request order; duplicates recognised; one
  bad event (or a batch too large) fails the call naming the field, and nothing
  of the batch is published.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest

from meridian._pb.meridian.v1 import events_pb2, events_pb2_grpc
from meridian.agent.app import Agent
from meridian.client import MeridianClient, OutgoingEvent, error_from_rpc
from meridian.config import MeridianConfig
from meridian.core.batch import MAX_BYTES, MAX_ITEMS
from meridian.core.errors import InvalidArgumentError
from meridian.events import model as ev
from meridian.events.streams import EVENT_ID_HEADER, PUBLISHED_HEADER, TOPIC_KEY_HEADER
from meridian.testing.nats_server import NatsCluster
from tests.integration.harness import agent_config, http_post, ready_agent

_seq = itertools.count()
NAME = "meridian_events_published_total"


def unique(name: str) -> str:
    return f"{name}-{next(_seq)}"


@pytest.fixture(scope="module")
def cluster() -> Any:
    with NatsCluster("us-east") as c:
        yield c


@pytest.fixture(scope="module")
def config(cluster: NatsCluster) -> MeridianConfig:
    return agent_config(cluster)


@pytest.fixture
async def agent(config: MeridianConfig) -> AsyncIterator[Agent]:
    async with ready_agent(config) as agent:
        yield agent


@pytest.fixture
async def stub(agent: Agent, config: MeridianConfig) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(config.region("us-east").grpc_address) as channel:
        yield events_pb2_grpc.EventServiceStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
async def client(agent: Agent, config: MeridianConfig) -> AsyncIterator[MeridianClient]:
    async with MeridianClient(config.region("us-east").grpc_address) as c:
        yield c


def request(topic: str, key: str, payload: bytes, event_id: str, **headers: str) -> Any:
    return events_pb2.PublishRequest(
        topic=topic, key=key, payload=payload, event_id=event_id, headers=headers
    )


async def publish_stream(stub: Any, requests: Iterable[Any]) -> list[Any]:
    """Send every request, then read every response (the stream ends when the
    agent has answered them all). Raises the call's error as a MeridianError."""
    call = stub.PublishStream(iter(list(requests)))
    out = []
    try:
        async for response in call:
            out.append(response)
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from exc
    return out


async def last_seq(agent: Agent) -> int:
    info = await agent.conn.jetstream(2.0).stream_info(agent.events.streams.own)
    return int(info.state.last_seq)


async def test_events_are_stored_in_order_and_answered_in_request_order(
    stub: Any, agent: Agent
) -> None:
    topic = unique("orders")
    n = 500  # more than are in flight to JetStream at once
    before = await last_seq(agent)
    got = await publish_stream(
        stub,
        (
            request(f"{topic}.placed", f"o-{i % 7}", f"{i}".encode(), f"{topic}-{i}", trace="t")
            for i in range(n)
        ),
    )
    assert len(got) == n
    assert [r.sequence for r in got] == list(range(before + 1, before + n + 1))
    assert all(r.region == "us-east" and not r.duplicate for r in got)
    js = agent.conn.jetstream(2.0)
    for i in (0, 1, n // 2, n - 1):
        msg = await js.get_msg(agent.events.streams.own, got[i].sequence)
        assert msg.subject == ev.subject("us-east", f"{topic}.placed")
        assert msg.data == f"{i}".encode()
        assert msg.headers is not None
        assert msg.headers[EVENT_ID_HEADER] == f"{topic}-{i}"
        assert msg.headers[TOPIC_KEY_HEADER] == f"o-{i % 7}"
        assert msg.headers["trace"] == "t"
        assert int(msg.headers[PUBLISHED_HEADER]) > 0


async def test_an_empty_stream_ends_without_responses(stub: Any) -> None:
    assert await publish_stream(stub, []) == []


async def test_a_republished_event_id_is_a_duplicate(stub: Any, agent: Agent) -> None:
    topic = unique("dupes")
    first, again, other = await publish_stream(
        stub,
        [
            request(topic, "k", b"1", f"{topic}-a"),
            request(topic, "k", b"1", f"{topic}-a"),
            request(topic, "k", b"2", f"{topic}-b"),
        ],
    )
    assert not first.duplicate and again.duplicate and not other.duplicate
    assert again.sequence == first.sequence
    assert other.sequence == first.sequence + 1
    # Publish and PublishStream share the duplicate window.
    (late,) = await publish_stream(stub, [request(topic, "k", b"1", f"{topic}-b")])
    assert late.duplicate and late.sequence == other.sequence


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"topic": "Bad Topic"}, "topic"),
        ({"topic": "_reserved"}, "topic"),
        ({"key": ""}, "key"),
        ({"event_id": ""}, "event_id"),
        ({"payload": b"x" * ((1 << 20) + 1)}, "payload"),
        ({"headers": {"Nats-Msg-Id": "sneaky"}}, "headers"),
    ],
)
async def test_an_invalid_request_ends_the_stream_and_nothing_after_it_is_published(
    stub: Any, agent: Agent, kwargs: dict[str, Any], field: str
) -> None:
    topic = unique("mixed")
    good = [request(topic, "k", f"{i}".encode(), f"{topic}-{i}") for i in range(3)]
    args: dict[str, Any] = {
        "topic": topic,
        "key": "k",
        "payload": b"x",
        "event_id": f"{topic}-bad",
        "headers": {},
    }
    args.update(kwargs)
    bad = events_pb2.PublishRequest(**args)
    after = [request(topic, "k", b"late", f"{topic}-late-{i}") for i in range(3)]
    before = await last_seq(agent)
    call = stub.PublishStream(iter([*good, bad, *after]))
    answered = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for response in call:
            answered.append(response)
    assert [r.sequence for r in answered] == [before + 1, before + 2, before + 3]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    mapped = error_from_rpc(err.value)
    assert isinstance(mapped, InvalidArgumentError)
    assert mapped.field == field
    assert await last_seq(agent) == before + 3


async def test_publish_stream_is_counted_like_publish(stub: Any, agent: Agent) -> None:
    topic = unique("counted")
    labels = {"region": "us-east", "result": "stored"}

    def stored() -> float:
        return agent.metrics.registry.get_sample_value(NAME, labels) or 0.0

    before = stored()
    await publish_stream(stub, [request(topic, "k", b"x", f"{topic}-{i}") for i in range(4)])
    assert stored() == before + 4


# -- PublishBatch ----------------------------------------------------------------


def events(topic: str, n: int, *, keys: int = 3) -> list[OutgoingEvent]:
    return [
        OutgoingEvent(topic, f"k-{i % keys}", f"{i}".encode(), f"{topic}-{i}", {"trace": "t"})
        for i in range(n)
    ]


async def test_a_batch_is_stored_in_order_with_results_in_request_order(
    client: MeridianClient, agent: Agent
) -> None:
    topic = unique("orders")
    labels = {"region": "us-east", "result": "stored"}
    counted = agent.metrics.registry.get_sample_value(NAME, labels) or 0.0
    before = await last_seq(agent)
    got = await client.publish_batch(events(topic, 300))
    assert got == [(before + 1 + i, False) for i in range(300)]
    js = agent.conn.jetstream(2.0)
    for i in (0, 1, 150, 299):
        msg = await js.get_msg(agent.events.streams.own, before + 1 + i)
        assert msg.subject == ev.subject("us-east", topic)
        assert msg.data == f"{i}".encode()
        assert msg.headers is not None
        assert msg.headers[EVENT_ID_HEADER] == f"{topic}-{i}"
        assert msg.headers[TOPIC_KEY_HEADER] == f"k-{i % 3}"
        assert msg.headers["trace"] == "t"
    assert agent.metrics.registry.get_sample_value(NAME, labels) == counted + 300


async def test_a_batch_sent_again_is_all_duplicates(client: MeridianClient, agent: Agent) -> None:
    topic = unique("again")
    batch = events(topic, 20)
    first = await client.publish_batch(batch)
    # A Publish of one of them, and the whole batch again (what a caller does
    # after an error): nothing new is stored.
    seq, dup = await client.publish(topic, "k-0", b"0", event_id=f"{topic}-0")
    assert (seq, dup) == (first[0][0], True)
    before = await last_seq(agent)
    again = await client.publish_batch(batch)
    assert again == [(s, True) for s, _ in first]
    assert await last_seq(agent) == before
    # Within one batch too.
    twice = await client.publish_batch(
        [
            OutgoingEvent(topic, "k", b"x", f"{topic}-x"),
            OutgoingEvent(topic, "k", b"x", f"{topic}-x"),
        ]
    )
    assert twice[0][1] is False and twice[1] == (twice[0][0], True)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"topic": "Bad Topic"}, "events[3].topic"),
        ({"key": ""}, "events[3].key"),
        ({"event_id": ""}, "events[3].event_id"),
        ({"payload": b"x" * ((1 << 20) + 1)}, "events[3].payload"),
        ({"headers": {"Nats-Msg-Id": "sneaky"}}, "events[3].headers"),
    ],
)
async def test_one_bad_event_fails_the_batch_and_nothing_is_published(
    client: MeridianClient, agent: Agent, bad: dict[str, Any], field: str
) -> None:
    topic = unique("mixed")
    batch = events(topic, 6)
    e = batch[3]
    fields: dict[str, Any] = {
        "topic": e.topic,
        "key": e.key,
        "payload": e.payload,
        "event_id": e.event_id,
        "headers": e.headers,
    }
    fields.update(bad)
    batch[3] = OutgoingEvent(**fields)
    before = await last_seq(agent)
    with pytest.raises(InvalidArgumentError) as err:
        await client.publish_batch(batch)
    assert err.value.field == field
    assert await last_seq(agent) == before


@pytest.mark.parametrize(
    ("n", "payload", "rule"),
    [
        (0, b"", "at least one event"),
        (MAX_ITEMS + 1, b"x", f"at most {MAX_ITEMS} events"),
        (9, b"x" * (1 << 20), f"at most {MAX_BYTES} bytes in all"),
    ],
)
async def test_a_batch_too_small_or_too_large_is_refused_whole(
    client: MeridianClient, agent: Agent, n: int, payload: bytes, rule: str
) -> None:
    topic = unique("size")
    batch = [OutgoingEvent(topic, "k", payload, f"{topic}-{i}") for i in range(n)]
    before = await last_seq(agent)
    with pytest.raises(InvalidArgumentError) as err:
        await client.publish_batch(batch)
    assert err.value.field == "events"
    assert rule in str(err.value)
    assert await last_seq(agent) == before


async def test_http_publish_batch(config: MeridianConfig, agent: Agent) -> None:
    url = f"{config.region('us-east').http_url}/v1/events/publish-batch"
    topic = unique("http")

    def event(i: int, **over: str) -> dict[str, str]:
        out = {
            "topic": topic,
            "key": "k",
            "payload": base64.b64encode(b"%d" % i).decode(),
            "eventId": f"{topic}-{i}",
        }
        out.update(over)
        return out

    before = await last_seq(agent)
    status, resp = await http_post(url, {"events": [event(i) for i in range(5)]})
    assert status == 200, resp
    assert [int(r["sequence"]) for r in resp["results"]] == list(range(before + 1, before + 6))
    status, resp = await http_post(url, {"events": [event(9), event(10, topic="Nope!")]})
    assert status == 400, resp
    assert resp["error"]["field"] == "events[1].topic"
    for body in (b"{nope", b"[" * 100_000, b'{"events": [], "extra": 1}', b'{"events": 5}'):
        status, resp = await http_post(url, body)
        assert status == 400, resp
        assert resp["error"]["field"] == "body"
    assert await last_seq(agent) == before + 5
