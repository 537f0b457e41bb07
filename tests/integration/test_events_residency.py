"""Resident topics through three real agents, one per region, on a real NATS
supercluster (one JetStream cluster per region, joined by gateways):

- ``eu-orders`` may live in eu-west only, ``emea`` in eu-west and ap-south;
- an event of a resident topic reaches the groups of its allowed regions, and
  the aggregate of any other region never holds it;
- a region outside the residency refuses to publish (nothing is written),
  subscribe, replay or register a push for it, with RESIDENCY_VIOLATION;
- an aggregate made before the topics were declared gains their sources.

tests/integration has no supercluster harness (``NatsCluster`` is one
cluster); :class:`SuperCluster` below is the smallest one these tests need.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import nats
import nats.js.errors
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.js import api

from meridian._pb.meridian.v1 import events_pb2, events_pb2_grpc
from meridian.agent.app import Agent
from meridian.backbone.fanin import source_keys
from meridian.backbone.server import find_nats_server
from meridian.client import MeridianClient, OutgoingEvent
from meridian.config import MeridianConfig, parse_config
from meridian.core.errors import MeridianError
from meridian.events import model as ev
from meridian.subscription import Delivery, Subscription
from meridian.testing.ports import free_port
from tests.conftest import eventually
from tests.integration.harness import http_post, running_agent

REGIONS = ("us-east", "eu-west", "ap-south")
TOPICS = [
    {"name": "eu-orders", "residency": ["eu-west"]},
    {"name": "emea", "residency": ["eu-west", "ap-south"]},
]
_seq = itertools.count()


def unique(name: str) -> str:
    return f"{name}-{next(_seq)}-{time.monotonic_ns() % 10**8}"


class SuperCluster:
    """One single-server JetStream cluster per region, named after it and tagged
    ``region:<name>`` as in the sandbox, joined by gateways on loopback."""

    def __init__(self, regions: Sequence[str]) -> None:
        self.regions = list(regions)
        self._tmp = tempfile.TemporaryDirectory(prefix="meridian-sc-")
        self.root = Path(self._tmp.name)
        self.ports = {
            r: {"client": free_port(), "cluster": free_port(), "gateway": free_port(),
                "monitor": free_port()}
            for r in self.regions
        }  # fmt: skip
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, region: str) -> str:
        return f"nats://127.0.0.1:{self.ports[region]['client']}"

    def monitor_url(self, region: str) -> str:
        return f"http://127.0.0.1:{self.ports[region]['monitor']}"

    def _config(self, region: str) -> str:
        p = self.ports[region]
        gateways = ", ".join(
            f'{{ name: "{r}", urls: ["nats://127.0.0.1:{self.ports[r]["gateway"]}"] }}'
            for r in self.regions
        )
        store = json.dumps(str(self.root / region / "js"))
        # A JetStream cluster needs a route even with one server: one to itself works.
        return f"""
server_name: "{region}"
listen: "127.0.0.1:{p["client"]}"
http: "127.0.0.1:{p["monitor"]}"
server_tags: ["region:{region}"]
jetstream {{ store_dir: {store}, max_file_store: 256MB }}
cluster {{
  name: "{region}"
  listen: "127.0.0.1:{p["cluster"]}"
  routes: ["nats://127.0.0.1:{p["cluster"]}"]
}}
gateway {{ name: "{region}", listen: "127.0.0.1:{p["gateway"]}", gateways: [{gateways}] }}
"""

    def start(self) -> None:
        binary = str(find_nats_server(None))
        for r in self.regions:
            (self.root / r).mkdir(parents=True, exist_ok=True)
            conf = self.root / r / "server.conf"
            conf.write_text(self._config(r))
            with open(self.root / r / "server.log", "ab") as log:
                self.procs[r] = subprocess.Popen(
                    [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log
                )
        deadline = time.monotonic() + 60
        pending = set(self.regions)
        while pending and time.monotonic() < deadline:
            for r in sorted(pending):
                if self.procs[r].poll() is not None:
                    log_text = (self.root / r / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"nats-server {r} exited:\n{log_text[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{self.monitor_url(r)}/jsz", timeout=1) as resp:
                        if json.loads(resp.read()).get("meta_cluster", {}).get("leader"):
                            pending.discard(r)
                except (OSError, urllib.error.URLError, ValueError):
                    pass
            time.sleep(0.05)
        if pending:
            raise TimeoutError(f"{', '.join(sorted(pending))} not JetStream-ready within 60s")

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
        self._tmp.cleanup()

    def __enter__(self) -> SuperCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _old_aggregate(sc: SuperCluster) -> None:
    """ap-south's aggregate as a version without resident topics made it."""
    nc = await nats.connect(sc.url("ap-south"))
    try:
        await nc.jetstream(timeout=10).add_stream(
            api.StreamConfig(
                name=ev.aggregate_stream("ap-south"),
                storage=api.StorageType.FILE,
                num_replicas=1,
                placement=api.Placement(cluster="ap-south"),
                sources=[api.StreamSource(name=ev.own_stream(r)) for r in REGIONS],
            )
        )
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def supercluster() -> Iterator[SuperCluster]:
    with SuperCluster(REGIONS) as sc:
        asyncio.run(_old_aggregate(sc))
        yield sc


@pytest.fixture(scope="module")
def config(supercluster: SuperCluster) -> MeridianConfig:
    return parse_config(
        {
            "region": [
                {
                    "name": r,
                    "nats_urls": [supercluster.url(r)],
                    "monitor_url": supercluster.monitor_url(r),
                    "grpc_port": free_port(),
                    "http_port": free_port(),
                }
                for r in REGIONS
            ],
            "topic": TOPICS,
            "wan": {"control_port": free_port(), "proxy_base_port": free_port(span=16), "link": []},
            "agent": {"status_interval_s": 0.2, "peer_timeout_s": 0.3, "quorum_timeout_s": 2.0},
            # Events are the subject here; tests/integration/test_mtls.py covers TLS.
            "security": {"mode": "insecure"},
        },
        env={},
    )


@pytest.fixture
async def agents(config: MeridianConfig) -> AsyncIterator[dict[str, Agent]]:
    """An agent per region, serving events. eu-west starts last, so the
    aggregates elsewhere are made before its resident stream exists and their
    sources of it must be restarted (backbone/sources.py)."""
    out: dict[str, Agent] = {}
    async with contextlib.AsyncExitStack() as stack:
        for region in ("ap-south", "us-east", "eu-west"):
            agent = await stack.enter_async_context(running_agent(config, region=region))
            await asyncio.wait_for(
                asyncio.gather(agent.events.wait_serving(), agent.push.wait_serving()), 120
            )
            out[region] = agent
        yield out


@pytest.fixture
async def clients(
    agents: dict[str, Agent], config: MeridianConfig
) -> AsyncIterator[dict[str, MeridianClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield {
            r: await stack.enter_async_context(MeridianClient(config.region(r).grpc_address))
            for r in REGIONS
        }


@contextlib.asynccontextmanager
async def jetstream(supercluster: SuperCluster, region: str) -> AsyncIterator[Any]:
    nc = await nats.connect(supercluster.url(region))
    try:
        yield nc.jetstream(timeout=10)
    finally:
        await nc.close()


async def held(js: Any, stream: str, subjects: str) -> dict[str, int]:
    """The subjects matching ``subjects`` that ``stream`` holds messages on."""
    info = await js.stream_info(stream, subjects_filter=subjects)
    return dict(info.state.subjects or {})


async def take(sub: Subscription, n: int, timeout_s: float = 60) -> list[Delivery]:
    out: list[Delivery] = []

    async def collect() -> None:
        async for d in sub:
            out.append(d)
            await sub.ack(d)
            if len(out) == n:
                return

    await asyncio.wait_for(collect(), timeout_s)
    return out


def reason(exc: BaseException) -> str:
    """The stable code a gRPC call failed with (its ``google.rpc.ErrorInfo`` reason):
    ``exc`` is the call's error, or the client's error raised from it."""
    cause = exc if isinstance(exc, grpc.aio.AioRpcError) else exc.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError), exc
    assert cause.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(cause)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError(f"no ErrorInfo in {exc!r}")


# -- topology -------------------------------------------------------------------


async def test_an_aggregate_made_before_the_declarations_gains_the_resident_sources(
    agents: dict[str, Agent], supercluster: SuperCluster
) -> None:
    async with jetstream(supercluster, "ap-south") as js:
        info = await js.stream_info(ev.aggregate_stream("ap-south"))
        wanted = agents["ap-south"].events.streams.aggregate_config()
        assert source_keys(info.config.sources) == source_keys(wanted.sources)
        assert (
            "EVR_eu-west",
            "",
            (
                ("mevr.eu-west.emea", "mev.eu-west.emea"),
                ("mevr.eu-west.emea.>", "mev.eu-west.emea.>"),
            ),
        ) in source_keys(info.config.sources)
        # us-east may hold no resident topic: no resident stream, none sourced.
        info = await js.stream_info(ev.aggregate_stream("us-east"))
        assert [s.name for s in info.config.sources or ()] == [ev.own_stream(r) for r in REGIONS]
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(ev.resident_stream("us-east"))


# -- where resident events go -------------------------------------------------------


async def test_resident_events_reach_allowed_regions_groups_and_no_other_aggregate(
    agents: dict[str, Agent], clients: dict[str, MeridianClient], supercluster: SuperCluster
) -> None:
    order, share, plain = unique("order"), unique("share"), unique("plain")
    await clients["eu-west"].publish("eu-orders.placed", "o-1", b"{}", event_id=order)
    await clients["eu-west"].publish("emea.shared", "s-1", b"{}", event_id=share)

    async with clients["eu-west"].subscribe(
        unique("ledger"), topic_filter="eu-orders.>", start_sequence=1
    ) as sub:
        got = await take(sub, 1)
    assert [(d.event.event_id, d.event.topic, d.event.origin_region) for d in got] == [
        (order, "eu-orders.placed", "eu-west")
    ]
    # ap-south may hold emea: its group gets eu-west's emea event, sourced across.
    async with clients["ap-south"].subscribe(
        unique("emea"), topic_filter="emea.>", start_sequence=1
    ) as sub:
        got = await take(sub, 1)
    assert [(d.event.event_id, d.event.topic) for d in got] == [(share, "emea.shared")]
    # ap-south's aggregate was made before eu-west's resident stream existed: the
    # source repair restarted that source, and kept its transforms.
    async with jetstream(supercluster, "ap-south") as js:
        info = await js.stream_info(ev.aggregate_stream("ap-south"))
        wanted = agents["ap-south"].events.streams.aggregate_config()
        assert source_keys(info.config.sources) == source_keys(wanted.sources)

    # A plain event published after them reaches every aggregate: once it is in
    # one, that aggregate has read eu-west's own stream past the resident events.
    await clients["eu-west"].publish("plain.x", "p", b"", event_id=plain)
    for region in ("us-east", "ap-south"):
        async with jetstream(supercluster, region) as js:
            aggregate = ev.aggregate_stream(region)
            await eventually(
                functools.partial(held, js, aggregate, "mev.eu-west.plain.>"),
                bool,
                what=f"{aggregate} holds eu-west's plain event",
            )
            for filt in ("mev.*.eu-orders", "mev.*.eu-orders.>"):
                assert await held(js, aggregate, filt) == {}, (aggregate, filt)
            if region == "us-east":
                for filt in ("mev.*.emea", "mev.*.emea.>", "mevr.>"):
                    assert await held(js, aggregate, filt) == {}, (aggregate, filt)
    # Stored once in eu-west: in its resident stream, not its own stream.
    async with jetstream(supercluster, "eu-west") as js:
        assert await held(js, "EVR_eu-west", "mevr.eu-west.eu-orders.>")
        assert await held(js, "EV_eu-west", "mev.eu-west.eu-orders.>") == {}


# -- refusals ---------------------------------------------------------------------


@pytest.mark.parametrize("region", ["us-east", "ap-south"])
async def test_publishing_a_resident_topic_outside_its_regions_is_refused_and_writes_nothing(
    region: str,
    clients: dict[str, MeridianClient],
    config: MeridianConfig,
    supercluster: SuperCluster,
) -> None:
    event_id = unique("refused")
    with pytest.raises(MeridianError) as err:
        await clients[region].publish("eu-orders.placed", "k", b"{}", event_id=event_id)
    assert reason(err.value) == "RESIDENCY_VIOLATION"
    assert "eu-west" in err.value.message

    url = config.region(region).http_url
    status, body = await http_post(
        f"{url}/v1/events/publish",
        {"topic": "eu-orders.placed", "key": "k", "eventId": event_id},
    )
    assert status == 451, body
    assert body["error"]["code"] == "RESIDENCY_VIOLATION"
    assert "topic 'eu-orders.placed'" in body["error"]["message"]

    # One refused event refuses the whole batch, before any is sent.
    fine = unique("fine")
    with pytest.raises(MeridianError) as err:
        await clients[region].publish_batch(
            [
                OutgoingEvent(fine, "k", b"", fine),
                OutgoingEvent("eu-orders.placed", "k", b"", event_id),
            ]
        )
    assert reason(err.value) == "RESIDENCY_VIOLATION"
    assert "events[1].topic" in err.value.message

    # PublishStream: the events before the refused one are stored, it and the
    # rest are not, and the stream ends with the refusal.
    before, after = unique("before"), unique("after")
    async with grpc.aio.insecure_channel(config.region(region).grpc_address) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.PublishStream(
            iter(
                [
                    events_pb2.PublishRequest(topic=before, key="k", event_id=before),
                    events_pb2.PublishRequest(topic="eu-orders.placed", key="k", event_id=event_id),
                    events_pb2.PublishRequest(topic=after, key="k", event_id=after),
                ]
            )
        )
        answered = []
        with pytest.raises(grpc.aio.AioRpcError) as rpc_err:
            async for response in call:
                answered.append(response)
    assert len(answered) == 1
    assert reason(rpc_err.value) == "RESIDENCY_VIOLATION"

    async with jetstream(supercluster, region) as js:
        own = ev.own_stream(region)
        assert await held(js, own, f"mev.{region}.eu-orders.>") == {}
        assert await held(js, own, f"mev.{region}.{fine}") == {}
        assert await held(js, own, f"mev.{region}.{before}")
        assert await held(js, own, f"mev.{region}.{after}") == {}
        if region == "us-east":
            with pytest.raises(nats.js.errors.NotFoundError):
                await js.stream_info(ev.resident_stream(region))
        else:  # ap-south has a resident stream, for emea only
            assert await held(js, ev.resident_stream(region), "mevr.*.eu-orders.>") == {}


async def test_a_group_of_a_resident_topic_outside_its_regions_is_refused(
    clients: dict[str, MeridianClient], config: MeridianConfig, supercluster: SuperCluster
) -> None:
    group = unique("spy")
    ap = clients["ap-south"]
    with pytest.raises(MeridianError) as err:
        async with ap.subscribe(group, topic_filter="eu-orders.>", start_sequence=1) as sub:
            async for _ in sub:
                pass
    assert reason(err.value) == "RESIDENCY_VIOLATION"
    assert "topic_filter 'eu-orders.>'" in err.value.message

    with pytest.raises(MeridianError) as err:
        await ap.replay(group, topic_filter="eu-orders", start_sequence=1)
    assert reason(err.value) == "RESIDENCY_VIOLATION"

    status, body = await http_post(
        f"{config.region('ap-south').http_url}/v1/events/register-push",
        {"group": group, "topicFilter": "eu-orders.*", "endpoint": "https://push.example.com/hook"},
    )
    assert status == 451, body
    assert body["error"]["code"] == "RESIDENCY_VIOLATION"

    # No consumer was made for any of them.
    async with jetstream(supercluster, "ap-south") as js:
        consumers = await js.consumers_info(ev.aggregate_stream("ap-south"))
        assert not [c for c in consumers if c.name.startswith(f"{group}__")]

    # A wildcard filter is served anywhere: such a group never sees what its
    # region may not hold. us-east's group gets the plain event only.
    plain_id = unique("p")
    await clients["eu-west"].publish("eu-orders.placed", "k", b"", event_id=unique("o"))
    await clients["eu-west"].publish("other.placed", "k", b"", event_id=plain_id)
    async with clients["us-east"].subscribe(
        unique("all"), topic_filter="*.placed", start_sequence=1
    ) as sub:
        topics: set[str] = set()

        async def until_plain() -> None:
            async for d in sub:
                topics.add(d.event.topic)
                await sub.ack(d)
                if d.event.event_id == plain_id:
                    return

        await asyncio.wait_for(until_plain(), 60)
    # Nor any eu-orders event of the earlier tests: from the start of the stream.
    assert "other.placed" in topics and "eu-orders.placed" not in topics, topics
