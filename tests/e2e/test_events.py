"""Events across the real sandbox, with its WAN latency: an event published in any
region reaches a consumer group in every region once, also while a region is
partitioned and after heal; duplicates across regions are absorbed; a crashed
consumer's events are redelivered; a poison event is dead-lettered; malformed
input publishes nothing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest

from meridian.client import MeridianClient
from meridian.core.errors import InvalidArgumentError, MeridianError
from meridian.sandbox.wan_control import WanClient
from tests.conftest import eventually
from tests.e2e.conftest import REGIONS, SandboxHandle, ready_clients
from tests.integration.harness import http_post


@pytest.fixture
async def clients(sandbox: SandboxHandle) -> AsyncIterator[dict[str, MeridianClient]]:
    async def ready(client: MeridianClient, region: str) -> None:
        await client.publish("ready", region, b"", event_id=f"ready-{region}-{uuid.uuid4()}")

    async with ready_clients(sandbox, ready) as out:
        yield out


class Consumer:
    """A group's subscriber in one region: acks everything, counts what it saw."""

    def __init__(self, client: MeridianClient, group: str, topic_filter: str) -> None:
        self.client = client
        self.group = group
        self.topic_filter = topic_filter
        self.seen: collections.Counter[str] = collections.Counter()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:  # resubscribe after an error (e.g. its region was cut off)
            try:
                async with self.client.subscribe(
                    self.group, topic_filter=self.topic_filter, start_sequence=1
                ) as sub:
                    async for d in sub:
                        self.seen[d.event.event_id] += 1
                        await sub.ack(d)
            except MeridianError as exc:
                print(f"subscriber {self.group} resubscribes after: {exc.message}")
                await asyncio.sleep(0.5)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def consumers(
    clients: dict[str, MeridianClient], group: str, topic_filter: str
) -> AsyncIterator[dict[str, Consumer]]:
    out = {r: Consumer(clients[r], group, topic_filter) for r in REGIONS}
    for c in out.values():
        c.start()
    try:
        yield out
    finally:
        for c in out.values():
            await c.stop()


async def test_events_from_every_region_reach_every_regions_group_once(
    clients: dict[str, MeridianClient],
) -> None:
    topic = f"orders{uuid.uuid4().hex[:8]}"
    published = set()
    for region in REGIONS:
        for i in range(5):
            event_id = f"{topic}-{region}-{i}"
            await clients[region].publish(f"{topic}.placed", f"o-{i}", b"{}", event_id=event_id)
            published.add(event_id)
    async with consumers(clients, "ledger", f"{topic}.*") as group:
        for region, consumer in group.items():
            await eventually(
                lambda c=consumer: asyncio.sleep(0, set(c.seen)),
                lambda seen: seen == published,
                timeout_s=60,
                what=f"{region}'s group saw every event",
            )
        await asyncio.sleep(1)
        for consumer in group.values():
            assert set(consumer.seen.values()) == {1}, consumer.seen


async def test_delivery_holds_while_a_region_is_partitioned_and_after_heal(
    sandbox: SandboxHandle, clients: dict[str, MeridianClient]
) -> None:
    topic = f"payments{uuid.uuid4().hex[:8]}"
    published: dict[str, set[str]] = {r: set() for r in REGIONS}
    async with consumers(clients, "audit", topic) as group:
        # The groups exist before the partition: a region cut off from the
        # JetStream meta leader can't create a consumer, but can serve one.
        for region in REGIONS:
            await clients[region].publish(topic, "warm", b"", event_id=f"{topic}-warm-{region}")
            published[region].add(f"{topic}-warm-{region}")
        warm = {f"{topic}-warm-{r}" for r in REGIONS}
        for region, consumer in group.items():
            await eventually(
                lambda c=consumer: asyncio.sleep(0, set(c.seen)),
                lambda seen: warm <= seen,
                timeout_s=60,
                what=f"{region}'s group is subscribed",
            )
        async with WanClient(sandbox.config.wan.control_url) as wan:
            await wan.partition("ap-south")
            try:
                for i in range(10):
                    for region in REGIONS:
                        # Event ids are the dedup identity across topics: make them unique.
                        event_id = f"{topic}-{region}-{i}"
                        await clients[region].publish(topic, f"k{i}", b"x", event_id=event_id)
                        published[region].add(event_id)
                majority = published["us-east"] | published["eu-west"]

                # While cut off: the majority sees each other's events, ap-south its own.
                for region in ("us-east", "eu-west"):
                    await eventually(
                        lambda c=group[region]: asyncio.sleep(0, set(c.seen)),
                        lambda seen: majority <= seen,
                        timeout_s=60,
                        what=f"{region} got the majority's events during the partition",
                    )
                await eventually(
                    lambda: asyncio.sleep(0, set(group["ap-south"].seen)),
                    lambda seen: published["ap-south"] <= seen,
                    timeout_s=60,
                    what="ap-south got its own events during the partition",
                )
            finally:
                await wan.heal()
        everything = set().union(*published.values())
        start = time.monotonic()
        for region, consumer in group.items():
            await eventually(
                lambda c=consumer: asyncio.sleep(0, set(c.seen)),
                lambda seen: seen == everything,
                timeout_s=120,
                interval_s=0.5,
                what=f"{region}'s group has every event after heal",
            )
        print(f"\nevery group had every event {time.monotonic() - start:.1f}s after heal")
        await asyncio.sleep(1)
        for consumer in group.values():
            assert set(consumer.seen.values()) == {1}, consumer.seen


async def test_the_same_event_published_in_two_regions_is_delivered_once(
    clients: dict[str, MeridianClient],
) -> None:
    topic = f"dup{uuid.uuid4().hex[:8]}"
    # A producer retried in another region after a timeout: same event id.
    await clients["us-east"].publish(topic, "k", b"x", event_id="retried-1")
    await clients["eu-west"].publish(topic, "k", b"x", event_id="retried-1")
    await clients["eu-west"].publish(topic, "k", b"y", event_id="after-1")
    async with consumers(clients, "billing", topic) as group:
        for region, consumer in group.items():
            await eventually(
                lambda c=consumer: asyncio.sleep(0, set(c.seen)),
                lambda seen: seen == {"retried-1", "after-1"},
                timeout_s=60,
                what=f"{region} saw both events",
            )
        await asyncio.sleep(2)  # both copies have long been delivered or absorbed
        for consumer in group.values():
            assert consumer.seen == {"retried-1": 1, "after-1": 1}


async def acked(sandbox: SandboxHandle, region: str, group: str) -> float:
    """The region's agent's count of acks applied for ``group`` (its /metrics)."""
    async with (
        sandbox.session() as s,
        s.get(f"{sandbox.config.region(region).http_url}/metrics") as r,
    ):
        text = await r.text()
    line = f'meridian_events_delivered_total{{group="{group}",region="{region}",result="acked"}} '
    for row in text.splitlines():
        if row.startswith(line):
            return float(row[len(line) :])
    return 0.0


async def test_a_crashed_consumer_gets_its_batch_redelivered_without_duplicate_effects(
    sandbox: SandboxHandle, clients: dict[str, MeridianClient]
) -> None:
    topic = f"crash{uuid.uuid4().hex[:8]}"
    group = f"shipper{uuid.uuid4().hex[:6]}"
    eu = clients["eu-west"]
    for i in range(6):
        await clients["us-east"].publish(topic, f"k{i}", b"x", event_id=f"{topic}-e{i}")
    effects: collections.Counter[str] = collections.Counter()
    sub = eu.subscribe(group, topic_filter=topic, start_sequence=1)
    await sub.__aenter__()
    got = []
    async for d in sub:
        got.append(d)
        if len(got) == 6:
            break
    for d in got[:2]:  # it applied and acked two of its batch...
        effects[d.event.event_id] += 1
        await sub.ack(d)
    await eventually(
        lambda: acked(sandbox, "eu-west", group), lambda n: n == 2, what="the two acks applied"
    )
    sub._call.cancel()  # ...then crashed: the stream just breaks, nothing else is sent
    async with eu.subscribe(group, topic_filter=topic) as again:
        async for d in again:
            assert d.attempt >= 2  # redelivered, not new
            effects[d.event.event_id] += 1
            await again.ack(d)
            if len(effects) == 6:
                break
    assert effects == {f"{topic}-e{i}": 1 for i in range(6)}


async def test_a_poison_event_goes_to_the_dead_letter_stream(
    sandbox: SandboxHandle, clients: dict[str, MeridianClient]
) -> None:
    topic = f"poison{uuid.uuid4().hex[:8]}"
    ap = clients["ap-south"]
    await ap.publish(topic, "k", b"cannot parse", event_id="poison")
    async with ap.subscribe(
        "parser", topic_filter=topic, start_sequence=1, max_deliveries=3
    ) as sub:
        attempts = []
        async for d in sub:
            attempts.append(d.attempt)
            await sub.nack(d, delay_s=0.05)
            if len(attempts) == 3:
                break
    assert attempts == [1, 2, 3]
    # The dead-letter stream, read straight from ap-south's cluster.
    nc = await nats.connect(sandbox.config.region("ap-south").agent_nats_urls[0], tls=sandbox.ssl)
    try:
        js = nc.jetstream()

        async def dead() -> list[bytes]:
            sub = await js.pull_subscribe("mevdlq.ap-south.parser.>", stream="EVDLQ_ap-south")
            try:
                return [m.data for m in await sub.fetch(10, timeout=1)]
            except (nats.errors.TimeoutError, TimeoutError):
                return []
            finally:
                await sub.unsubscribe()

        letters = await eventually(dead, bool, timeout_s=30, what="a dead letter")
        assert letters == [b"cannot parse"]
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"topic": "t", "key": "k", "eventId": "e", "payload": "A" * 1_500_000}, "payload"),
        ({"topic": "Bad/Topic", "key": "k", "eventId": "e"}, "topic"),
        ({"topic": "t", "key": "", "eventId": "e"}, "key"),
        ({"topic": "t", "key": "k"}, "event_id"),
    ],
)
async def test_malformed_publishes_are_rejected_over_http(
    sandbox: SandboxHandle, clients: dict[str, MeridianClient], body: dict[str, str], field: str
) -> None:
    status, resp = await http_post(
        f"{sandbox.config.region('eu-west').http_url}/v1/events/publish", body, sandbox.ssl
    )
    assert status == 400, resp
    assert resp["error"]["field"] == field


async def test_a_bad_start_position_is_rejected(clients: dict[str, MeridianClient]) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        async with clients["us-east"].subscribe("g", topic_filter="t", start_sequence=0) as sub:
            async for _ in sub:
                pass
    assert err.value.field == "start.sequence"
