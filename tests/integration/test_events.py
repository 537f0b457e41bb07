"""The Event API through a real agent on a real 3-server JetStream cluster:
publish and consume with acks, JetStream dedup and the group inbox, nacks with
backoff into the dead-letter stream, a crashed subscriber's events redelivered,
replay, a keyspace's change feed, cache invalidation, trace context, and bad
input that publishes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from meridian.agent.app import Agent
from meridian.client import MeridianClient
from meridian.config import MeridianConfig
from meridian.core.errors import InvalidArgumentError
from meridian.events import model as ev
from meridian.events.streams import EVENT_ID_HEADER, PUBLISHED_HEADER, TOPIC_KEY_HEADER
from meridian.subscription import Delivery, Subscription
from meridian.testing.nats_server import NatsCluster
from meridian.testing.ports import free_port
from tests.conftest import eventually
from tests.integration.harness import agent_config, http_post, ready_agent

_seq = itertools.count()


def unique(name: str) -> str:
    return f"{name}-{next(_seq)}"


@pytest.fixture(scope="module")
def cluster() -> Any:
    # Events live in the region's own cluster.
    with NatsCluster("us-east") as c:
        yield c


@pytest.fixture(scope="module")
def config(cluster: NatsCluster) -> MeridianConfig:
    return agent_config(
        cluster, keyspaces=[{"name": "carts", "locality": "replicated", "conflict": "lww"}]
    )


@pytest.fixture
async def agent(config: MeridianConfig) -> AsyncIterator[Agent]:
    async with ready_agent(config) as agent:
        assert agent.events.ready and agent.push.ready and agent.state.replicas["carts"].ready
        yield agent


@pytest.fixture
async def client(agent: Agent, config: MeridianConfig) -> AsyncIterator[MeridianClient]:
    async with MeridianClient(config.region("us-east").grpc_address) as c:
        yield c


async def take(sub: Subscription, n: int, timeout_s: float = 20) -> list[Delivery]:
    out: list[Delivery] = []

    async def collect() -> None:
        async for d in sub:
            out.append(d)
            if len(out) == n:
                return

    await asyncio.wait_for(collect(), timeout_s)
    return out


async def nothing_more(sub: Subscription, wait_s: float = 1.5) -> None:
    got: list[Delivery] = []

    async def collect() -> None:
        async for d in sub:
            got.append(d)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(collect(), wait_s)
    assert got == []


async def test_published_events_reach_the_group_in_order_per_key_and_once(
    client: MeridianClient,
) -> None:
    topic = unique("orders")
    group = unique("billing")
    seqs = [
        (await client.publish(f"{topic}.placed", "o-1", f"{i}".encode(), event_id=f"{topic}-{i}"))[
            0
        ]
        for i in range(5)
    ]
    async with client.subscribe(group, topic_filter=f"{topic}.*", start_sequence=1) as sub:
        got = await take(sub, 5)
        assert [d.event.payload for d in got] == [b"0", b"1", b"2", b"3", b"4"]
        assert {d.event.key for d in got} == {"o-1"}
        assert [d.event.origin_sequence for d in got] == seqs
        assert all(d.event.origin_region == "us-east" and d.attempt == 1 for d in got)
        assert all(d.event.published_at > 0 for d in got)
        for d in got:
            await sub.ack(d)
        await nothing_more(sub)
    # A later subscriber of the same group resumes after the acked events.
    await client.publish(f"{topic}.placed", "o-2", b"5", event_id=f"{topic}-5")
    async with client.subscribe(group, topic_filter=f"{topic}.*") as sub:
        (d,) = await take(sub, 1)
        assert d.event.payload == b"5"
        await sub.ack(d)


async def test_a_republished_event_id_is_dropped_inside_the_window(client: MeridianClient) -> None:
    topic = unique("dedup")
    _, first = await client.publish(topic, "k", b"x", event_id="same")
    _, again = await client.publish(topic, "k", b"x", event_id="same")
    assert (first, again) == (False, True)
    async with client.subscribe(unique("g"), topic_filter=topic, start_sequence=1) as sub:
        (d,) = await take(sub, 1)
        await sub.ack(d)
        await nothing_more(sub)


async def test_the_group_inbox_absorbs_a_duplicate_beyond_the_window(
    client: MeridianClient, agent: Agent
) -> None:
    """A duplicate JetStream can't see (another Nats-Msg-Id: published in another
    region, or after the window) is absorbed by the group's inbox."""
    topic = unique("late")
    group = unique("g")
    await client.publish(topic, "k", b"first", event_id="evt-1")
    async with client.subscribe(group, topic_filter=topic, start_sequence=1) as sub:
        (d,) = await take(sub, 1)
        await sub.ack(d)
        # The same event id again, under a Nats-Msg-Id JetStream has not seen.
        js = agent.conn.jetstream(2.0)
        await js.publish(
            f"mev.us-east.{topic}",
            b"first",
            headers={
                "Nats-Msg-Id": "evt-1-again",
                EVENT_ID_HEADER: "evt-1",
                TOPIC_KEY_HEADER: "k",
                PUBLISHED_HEADER: "1",
            },
        )
        await client.publish(topic, "k", b"second", event_id="evt-2")
        (d,) = await take(sub, 1)
        assert d.event.event_id == "evt-2"
        await sub.ack(d)
    text = agent.metrics.render().decode()
    assert (
        f'meridian_events_delivered_total{{group="{group}",region="us-east",result="duplicate"}} 1.0'
        in text
    )


async def test_nacks_back_off_then_the_poison_event_goes_to_the_dead_letter_stream(
    client: MeridianClient, agent: Agent
) -> None:
    topic = unique("poison")
    group = unique("g")
    await client.publish(topic, "k", b"bad", event_id="poison-1")
    await client.publish(topic, "k", b"good", event_id="fine-1")
    async with client.subscribe(
        group, topic_filter=topic, start_sequence=1, max_deliveries=3
    ) as sub:
        attempts = []
        async for d in sub:
            if d.event.payload == b"good":
                await sub.ack(d)
                continue
            attempts.append(d.attempt)
            await sub.nack(d)  # default backoff: 0.1 s, 0.2 s, ...
            if len(attempts) == 3:
                break
        assert attempts == [1, 2, 3]
        await nothing_more(sub)
    dead = await eventually(
        lambda: agent.events.streams.dead_letters(group),
        lambda msgs: len(msgs) == 1,
        what="the poison event in the dead-letter stream",
    )
    assert dead[0].data == b"bad"
    assert "nacked on all 3 deliveries" in (dead[0].headers or {})["Meridian-Dead-Letter-Reason"]


async def test_a_crashed_subscribers_events_are_redelivered_to_the_group(
    client: MeridianClient,
) -> None:
    topic = unique("crash")
    group = unique("g")
    for i in range(4):
        await client.publish(topic, f"k{i}", b"x", event_id=f"{topic}-{i}")
    crashed = client.subscribe(group, topic_filter=topic, start_sequence=1, ack_wait_s=30)
    async with crashed as sub:
        held = await take(sub, 4)
        await sub.ack(held[0])  # it processed one, then died mid-batch
    async with client.subscribe(group, topic_filter=topic) as sub:
        again = await take(sub, 3)
        assert sorted(d.event.event_id for d in again) == sorted(d.event.event_id for d in held[1:])
        assert all(d.attempt == 2 for d in again)
        for d in again:
            await sub.ack(d)
        await nothing_more(sub)


async def test_replay_redelivers_from_a_sequence(client: MeridianClient) -> None:
    topic = unique("replay")
    group = unique("g")
    seqs = []
    for i in range(3):
        seqs.append((await client.publish(topic, "k", f"{i}".encode(), event_id=f"{topic}-{i}"))[0])
    async with client.subscribe(group, topic_filter=topic, start_sequence=1) as sub:
        got = await take(sub, 3)
        for d in got:
            await sub.ack(d)
    await client.replay(group, topic_filter=topic, start_sequence=got[1].sequence)
    async with client.subscribe(group, topic_filter=topic) as sub:
        again = await take(sub, 2)
        assert [d.event.payload for d in again] == [b"1", b"2"]
        for d in again:
            await sub.ack(d)


async def test_a_keyspace_change_feed_is_a_subscription(client: MeridianClient) -> None:
    group = unique("feed")
    async with client.subscribe(group, keyspace="carts") as sub:
        await asyncio.sleep(0.5)  # the group starts with new writes
        await client.put("carts", "c-1", b"apples")
        await client.delete("carts", "c-1")
        got = await take(sub, 2)
        assert [(d.event.key, d.event.headers["operation"]) for d in got] == [
            ("c-1", "put"),
            ("c-1", "delete"),
        ]
        assert got[0].event.topic == "_state.carts"
        assert got[0].event.origin_region == "us-east"
        for d in got:
            await sub.ack(d)


async def test_invalidations_fan_out_and_their_lag_is_exported(
    client: MeridianClient, agent: Agent
) -> None:
    async with client.subscribe(unique("cache"), topic_filter="_invalidate.products") as sub:
        await asyncio.sleep(0.5)
        await client.invalidate("products", ["sku-1", "sku-2"])
        (d,) = await take(sub, 1)
        assert json.loads(d.event.payload) == {"namespace": "products", "keys": ["sku-1", "sku-2"]}
        await sub.ack(d)
    assert "meridian_invalidation_lag_seconds_count" in agent.metrics.render().decode()


async def test_trace_context_travels_with_the_event(
    client: MeridianClient, config: MeridianConfig
) -> None:
    topic = unique("traced")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    status, body = await http_post(
        f"{config.region('us-east').http_url}/v1/events/publish",
        {"topic": topic, "key": "k", "payload": "eA==", "eventId": "t-1"},
    )
    assert status == 200, body
    async with client.subscribe(unique("g"), topic_filter=topic, start_sequence=1) as sub:
        (d,) = await take(sub, 1)
        assert d.event.headers["traceparent"].startswith("00-")
        await sub.ack(d)
    # With an incoming traceparent, the event carries the caller's trace.
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{config.region('us-east').http_url}/v1/events/publish",
            json={"topic": topic, "key": "k", "payload": "eA==", "eventId": "t-2"},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        ) as resp,
    ):
        assert resp.status == 200
    async with client.subscribe(unique("g"), topic_filter=topic, start_sequence=1) as sub:
        got = await take(sub, 2)
        assert got[1].event.headers["traceparent"].split("-")[1] == trace_id


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"topic": "Bad Topic"}, "topic"),
        ({"topic": "a..b"}, "topic"),
        ({"topic": "_reserved"}, "topic"),
        ({"topic": "a." * 20 + "a"}, "topic"),
        ({"key": ""}, "key"),
        ({"key": "k" * 256}, "key"),
        ({"event_id": ""}, "event_id"),
        ({"payload": b"x" * ((1 << 20) + 1)}, "payload"),
        ({"headers": {"Nats-Msg-Id": "sneaky"}}, "headers"),
        ({"headers": {"x": "a\r\nb"}}, "headers"),
        ({"headers": {"bad name": "v"}}, "headers"),
    ],
)
async def test_malformed_publishes_are_invalid_and_publish_nothing(
    client: MeridianClient, agent: Agent, kwargs: dict[str, Any], field: str
) -> None:
    args: dict[str, Any] = {
        "topic": "ok",
        "key": "k",
        "payload": b"x",
        "event_id": "e",
        "headers": {},
    }
    args.update(kwargs)
    info = await agent.conn.jetstream(2.0).stream_info(agent.events.streams.own)
    with pytest.raises(InvalidArgumentError) as err:
        await client.publish(
            args["topic"],
            args["key"],
            args["payload"],
            event_id=args["event_id"],
            headers=args["headers"],
        )
    assert err.value.field == field
    after = await agent.conn.jetstream(2.0).stream_info(agent.events.streams.own)
    assert after.state.last_seq == info.state.last_seq


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"topic_filter": "a.>.b"}, "topic_filter"),
        ({"topic_filter": ""}, "topic_filter"),
        ({"topic_filter": "x", "group": "Bad Group"}, "group"),
        ({"topic_filter": "x", "start_sequence": 0}, "start.sequence"),
        ({"topic_filter": "x", "start_time": -5.0}, "start.time"),
        ({"topic_filter": "x", "max_in_flight": 5000}, "max_in_flight"),
        ({"topic_filter": "x", "max_deliveries": 1000}, "max_deliveries"),
        ({"topic_filter": "x", "ack_wait_s": 0.001}, "ack_wait"),
        ({"keyspace": "nope"}, "keyspace"),
    ],
)
async def test_bad_subscriptions_are_invalid(
    client: MeridianClient, kwargs: dict[str, Any], field: str
) -> None:
    group = kwargs.pop("group", "g")
    with pytest.raises(InvalidArgumentError) as err:
        async with client.subscribe(group, **kwargs) as sub:
            async for _ in sub:
                pass
    assert err.value.field == field


async def test_http_publish_rejects_hostile_bodies(config: MeridianConfig, agent: Agent) -> None:
    url = f"{config.region('us-east').http_url}/v1/events/publish"
    for body in (b"{nope", b"[" * 100_000, b'{"topic": "a", "extra": 1}'):
        status, resp = await http_post(url, body)
        assert status == 400, resp
        assert resp["error"]["field"] == "body"
    status, resp = await http_post(url, {"topic": "ok", "key": "k", "eventId": ""})
    assert status == 400
    assert resp["error"]["field"] == "event_id"


class Endpoint:
    """A real HTTP endpoint a push registration posts to; fails events on request."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.fail: set[str] = set()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append((body, dict(request.headers)))
        event_id = request.headers.get("Meridian-Event-Id", "")
        return web.Response(status=500 if event_id in self.fail else 204)

    async def __aenter__(self) -> Endpoint:
        app = web.Application()
        app.router.add_post("/hooks/events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hooks/events"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_http_push_acks_on_2xx_and_dead_letters_a_failing_event(
    client: MeridianClient, agent: Agent
) -> None:
    topic = unique("pushed")
    group = unique("hook")
    async with Endpoint() as endpoint:
        endpoint.fail.add(f"{topic}-bad")
        await client.register_push(
            group, endpoint.url, topic_filter=topic, start_sequence=1, max_deliveries=2
        )
        await client.publish(topic, "k", b"good", event_id=f"{topic}-good")
        await client.publish(topic, "k", b"bad", event_id=f"{topic}-bad")
        await eventually(
            lambda: agent.events.streams.dead_letters(group),
            lambda msgs: len(msgs) == 1,
            what="the failing event dead-lettered",
        )
        ids = [h["Meridian-Event-Id"] for _, h in endpoint.received]
        assert ids.count(f"{topic}-good") == 1
        assert ids.count(f"{topic}-bad") == 2  # max_deliveries
        good = next(b for b, h in endpoint.received if h["Meridian-Event-Id"] == f"{topic}-good")
        assert good["event"]["topic"] == topic
        assert good["attempt"] == 1
        assert endpoint.received[0][1]["Meridian-Group"] == group
        # Unregistered: nothing more is pushed.
        await client.unregister_push(group, topic_filter=topic)
        before = len(endpoint.received)
        await client.publish(topic, "k", b"later", event_id=f"{topic}-later")
        await asyncio.sleep(1.5)
        assert len(endpoint.received) == before


async def test_push_registrations_survive_an_agent_restart(config: MeridianConfig) -> None:
    topic = unique("durable")
    group = unique("hook")

    @contextlib.asynccontextmanager
    async def agent_and_client() -> AsyncIterator[tuple[Agent, MeridianClient]]:
        async with ready_agent(config) as agent:
            assert agent.events.ready and agent.push.ready
            async with MeridianClient(config.region("us-east").grpc_address) as client:
                yield agent, client

    async with Endpoint() as endpoint:
        async with agent_and_client() as (agent, client):
            await client.register_push(group, endpoint.url, topic_filter=topic, start_sequence=1)
            await client.publish(topic, "k", b"1", event_id=f"{topic}-1")
            await eventually(lambda: asyncio.sleep(0, len(endpoint.received)), lambda n: n == 1)
            # Stop only once event 1 is acked: an agent stopped between the
            # endpoint's answer and its ack leaves event 1 to be redelivered after
            # ack_wait (30 s), with event 2 (the same key) waiting behind it.
            streams = agent.events.streams
            js = streams.conn.jetstream(5.0)
            consumer = ev.consumer_name(group, f"topic:{topic}")
            await eventually(
                lambda: js.consumer_info(streams.aggregate, consumer),
                lambda info: info.num_ack_pending == 0,
                what="event 1 acked",
            )
        # A new agent process for the region resumes the registration.
        async with agent_and_client() as (_, client):
            await client.publish(topic, "k", b"2", event_id=f"{topic}-2")
            await eventually(lambda: asyncio.sleep(0, len(endpoint.received)), lambda n: n >= 2)
            got = [b["event"]["eventId"] for b, _ in endpoint.received]
            assert got == [f"{topic}-1", f"{topic}-2"]
            await client.unregister_push(group, topic_filter=topic)


@pytest.mark.parametrize(
    "endpoint",
    ["", "ftp://x/y", "http://", "http://user:pw@host/x", "http://host:99999/x", "not a url",
     "http://h/" + "x" * 3000],
)  # fmt: skip
async def test_bad_push_endpoints_are_invalid(client: MeridianClient, endpoint: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        await client.register_push("g", endpoint, topic_filter="t")
    assert err.value.field == "endpoint"
