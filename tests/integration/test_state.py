"""The State API on a `global` keyspace, through a real agent on a real 3-server
JetStream cluster: reads at each consistency, CAS, create, delete, scan, bad input
on both transports, and QUORUM_UNAVAILABLE when the quorum is gone."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meridian.agent.app import Agent
from meridian.client import Bounded, Eventual, MeridianClient, Strong
from meridian.config import MeridianConfig
from meridian.core.errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    QuorumUnavailableError,
)
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, http_post, ready_agent

KEYSPACES = [
    {"name": "accounts"},
    {"name": "small", "key_max_bytes": 16, "value_max_bytes": 64},
]


@pytest.fixture(scope="module")
def cluster() -> Any:
    with NatsCluster("global") as c:
        yield c


@pytest.fixture
async def agent(cluster: NatsCluster) -> AsyncIterator[tuple[Agent, MeridianConfig]]:
    config = agent_config(cluster, peers=("eu-west", "ap-south"), keyspaces=KEYSPACES)
    async with ready_agent(config, state=True) as agent:
        yield agent, config


@pytest.fixture
async def client(agent: tuple[Agent, MeridianConfig]) -> AsyncIterator[MeridianClient]:
    async with MeridianClient(agent[1].region("us-east").grpc_address) as c:
        yield c


def unique(name: str) -> str:
    return f"{name}-{id(object())}"


async def test_put_then_strong_get_returns_value_revision_hlc_and_region(
    client: MeridianClient,
) -> None:
    key = unique("alice")
    revision = await client.put("accounts", key, b"100")
    got = await client.get("accounts", key, consistency=Strong())
    assert got.entry.value == b"100"
    assert got.entry.revision == revision
    assert got.entry.region == "us-east"
    assert got.entry.hlc > 0
    assert got.served == "strong"
    assert got.staleness_bound_s == 0


async def test_compare_and_set_only_succeeds_at_the_current_revision(
    client: MeridianClient,
) -> None:
    key = unique("cas")
    first = await client.put("accounts", key, b"1")
    second = await client.put("accounts", key, b"2", if_revision=first)
    with pytest.raises(ConflictError) as err:
        await client.put("accounts", key, b"3", if_revision=first)
    assert err.value.current_revision == second
    assert (await client.get("accounts", key)).entry.value == b"2"


async def test_two_concurrent_cas_on_one_revision_exactly_one_wins(
    client: MeridianClient,
) -> None:
    key = unique("race")
    base = await client.put("accounts", key, b"0")
    results = await asyncio.gather(
        *(client.put("accounts", key, f"w{i}".encode(), if_revision=base) for i in range(5)),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, int)]
    losses = [r for r in results if isinstance(r, ConflictError)]
    assert len(wins) == 1
    assert len(losses) == 4
    assert all(loss.current_revision == wins[0] for loss in losses)


async def test_create_only_when_absent_and_again_after_delete(client: MeridianClient) -> None:
    key = unique("order")
    rev = await client.create("accounts", key, b"new")
    with pytest.raises(ConflictError) as err:
        await client.create("accounts", key, b"again")
    assert err.value.current_revision == rev
    with pytest.raises(ConflictError):
        await client.delete("accounts", key, if_revision=rev + 1000)
    await client.delete("accounts", key, if_revision=rev)
    with pytest.raises(NotFoundError):
        await client.get("accounts", key)
    await client.create("accounts", key, b"reborn")
    assert (await client.get("accounts", key)).entry.value == b"reborn"


async def test_missing_key_is_not_found(client: MeridianClient) -> None:
    with pytest.raises(NotFoundError):
        await client.get("accounts", unique("nobody"))
    with pytest.raises(NotFoundError):
        await client.get("accounts", unique("nobody"), consistency=Eventual())


async def test_eventual_and_bounded_reads_come_from_the_cache_and_say_how_stale(
    client: MeridianClient,
) -> None:
    key = unique("cached")
    await client.put("accounts", key, b"v1")

    async def read() -> Any:
        try:
            return await client.get("accounts", key, consistency=Eventual())
        except NotFoundError:
            return None

    got = await eventually(read, lambda r: r is not None, what="write visible in the cache")
    assert got.served == "eventual"
    assert got.entry.value == b"v1"
    assert 0 <= got.staleness_bound_s < 60

    bounded = await eventually(
        lambda: client.get("accounts", key, consistency=Bounded(5.0)),
        lambda r: r.served == "bounded",
        what="bounded read served from the cache",
    )
    assert bounded.staleness_bound_s <= 5.0
    assert bounded.entry.value == b"v1"

    # A bound tighter than the cache can prove is forwarded as a strong read.
    tight = await client.get("accounts", key, consistency=Bounded(1e-6))
    assert tight.served == "strong"
    assert tight.staleness_bound_s == 0


async def test_cache_follows_updates_and_deletes(client: MeridianClient) -> None:
    key = unique("follow")
    await client.put("accounts", key, b"a")
    await client.put("accounts", key, b"b")
    got = await eventually(
        lambda: client.get("accounts", key, consistency=Eventual()),
        lambda r: r.entry.value == b"b",
        what="update in cache",
    )
    await client.delete("accounts", key)

    async def gone() -> bool:
        try:
            await client.get("accounts", key, consistency=Eventual())
        except NotFoundError:
            return True
        return False

    await eventually(gone, bool, what="delete in cache")
    assert got.entry.revision > 0


async def test_scan_pages_through_a_prefix_in_key_order(client: MeridianClient) -> None:
    prefix = unique("scan").replace("-", "") + "."
    keys = [f"{prefix}{i:03d}" for i in range(25)]
    for k in keys:
        await client.put("accounts", k, k.encode())
    await client.put("accounts", unique("other"), b"x")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await client.scan_page(
            "accounts", prefix, limit=10, page_token=token, consistency=Strong()
        )
        pages += 1
        seen += [e.key for e in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert seen == keys
    assert pages == 3
    assert [e.key async for e in client.scan("accounts", prefix, consistency=Strong())] == keys


async def test_strong_scan_sees_a_write_acknowledged_just_before(client: MeridianClient) -> None:
    prefix = unique("fresh").replace("-", "") + "."
    await client.put("accounts", prefix + "x", b"1")
    page = await client.scan_page("accounts", prefix, consistency=Strong())
    assert [e.key for e in page.entries] == [prefix + "x"]
    assert page.served == "strong"


@pytest.mark.parametrize(
    ("key", "value", "field", "rule"),
    [
        ("", b"v", "key", "must not be empty"),
        ("x" * 17, b"v", "key", "at most 16 bytes"),
        ("a b", b"v", "key", "may only contain"),
        ("a*", b"v", "key", "may only contain"),
        ("a>", b"v", "key", "may only contain"),
        ("..a", b"v", "key", "must not start or end"),
        ("_meridian.x", b"v", "key", "reserved"),
        ("ok", b"v" * 65, "value", "at most 64 bytes"),
        ("caf\u00e9", b"v", "key", "may only contain"),
        ("a\x00b", b"v", "key", "may only contain"),
    ],
)
async def test_bad_writes_are_rejected_naming_the_field_and_write_nothing(
    client: MeridianClient, key: str, value: bytes, field: str, rule: str
) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        await client.put("small", key, value)
    assert err.value.field == field
    assert rule in err.value.message
    if field == "value":
        with pytest.raises(NotFoundError):
            await client.get("small", key)


async def test_unknown_keyspace_and_bad_consistency_are_invalid(client: MeridianClient) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        await client.put("nope", "k", b"v")
    assert err.value.field == "keyspace"
    assert "accounts" in err.value.message
    with pytest.raises(InvalidArgumentError) as err:
        await client.get("accounts", "k", consistency=Bounded(0))
    assert err.value.field == "consistency.max_staleness"
    with pytest.raises(InvalidArgumentError) as err:
        await client.scan_page("accounts", "", limit=5000)
    assert err.value.field == "limit"
    with pytest.raises(InvalidArgumentError) as err:
        await client.scan_page("accounts", "a", page_token="!!not-a-token!!")
    assert err.value.field == "page_token"


async def test_http_json_round_trip_and_conflict(agent: tuple[Agent, MeridianConfig]) -> None:
    url = agent[1].region("us-east").http_url
    key = unique("http")
    value = base64.b64encode(b"hello").decode()
    status, body = await http_post(
        f"{url}/v1/state/put", {"keyspace": "accounts", "key": key, "value": value}
    )
    assert status == 200, body
    revision = body["revision"]
    status, body = await http_post(f"{url}/v1/state/get", {"keyspace": "accounts", "key": key})
    assert status == 200
    assert base64.b64decode(body["entry"]["value"]) == b"hello"
    assert body["served"] == "LEVEL_STRONG"
    status, body = await http_post(
        f"{url}/v1/state/put",
        {"keyspace": "accounts", "key": key, "value": value, "ifRevision": "999999"},
    )
    assert status == 409
    assert body["error"]["code"] == "CONFLICT"
    assert body["error"]["currentRevision"] == revision
    status, body = await http_post(f"{url}/v1/state/get", {"keyspace": "accounts", "key": "zz9"})
    assert status == 404
    assert body["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        (b"{not json", "body"),
        (b'{"keyspace": 5}', "body"),
        (b'{"keyspace": "accounts", "colour": "red"}', "body"),
        (b'{"keyspace": "accounts", "key": "k", "value": "%%%not base64"}', "body"),
        (b"[1, 2, 3]", "body"),
        (b"\xff\xfe", "body"),
        (b"[" * 100_000 + b"]" * 100_000, "body"),
    ],
)
async def test_http_malformed_and_hostile_bodies_are_invalid_argument(
    agent: tuple[Agent, MeridianConfig], body: bytes, hint: str
) -> None:
    url = agent[1].region("us-east").http_url
    status, resp = await http_post(f"{url}/v1/state/put", body)
    assert status == 400, resp
    assert resp["error"]["code"] == "INVALID_ARGUMENT"
    assert resp["error"]["field"] == hint


async def test_http_oversized_body_is_rejected(agent: tuple[Agent, MeridianConfig]) -> None:
    url = agent[1].region("us-east").http_url
    huge = b'{"keyspace": "accounts", "key": "k", "value": "' + b"A" * (13 << 20) + b'"}'
    status, resp = await http_post(f"{url}/v1/state/put", huge)
    assert status in (400, 413)
    if status == 400:
        assert resp["error"]["field"] == "body"
    status, _ = await http_post(f"{url}/v1/state/get", {"keyspace": "accounts", "key": "k"})
    assert status == 404


async def test_cache_lag_is_exported(
    agent: tuple[Agent, MeridianConfig], client: MeridianClient
) -> None:
    key = unique("lag")
    await client.put("accounts", key, b"x")
    await eventually(
        lambda: client.get("accounts", key, consistency=Eventual()),
        lambda r: r.served == "eventual",
        what="cached",
    )
    text = agent[0].metrics.render().decode()
    assert (
        'meridian_cache_invalidation_lag_seconds_count{keyspace="accounts",region="us-east"}'
        in text
    )


async def test_the_proven_staleness_bound_is_exported(
    agent: tuple[Agent, MeridianConfig], client: MeridianClient
) -> None:
    await client.put("accounts", unique("g"), b"x")

    def exported() -> float:
        text = agent[0].metrics.render().decode()
        prefix = 'meridian_state_staleness_bound_seconds{keyspace="accounts",region="us-east"} '
        line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
        return float(line.removeprefix(prefix))

    # Proven by a barrier at most a few intervals ago on a healthy cluster.
    await eventually(lambda: asyncio.sleep(0, exported()), lambda v: v < 1.0, what="a bound")


async def test_without_a_quorum_writes_and_strong_reads_fail_fast_with_quorum_unavailable(
    cluster: NatsCluster, agent: tuple[Agent, MeridianConfig], client: MeridianClient
) -> None:
    key = unique("q")
    await client.put("accounts", key, b"before")
    try:
        for region in ("eu-west", "ap-south"):
            await asyncio.to_thread(cluster.stop_server, region)
        with pytest.raises(QuorumUnavailableError) as err:
            await client.put("accounts", key, b"during")
        assert "quorum" in err.value.message or "leader" in err.value.message
        with pytest.raises(QuorumUnavailableError):
            await client.get("accounts", key, consistency=Strong())
        # The cache still answers eventual reads, and says how stale it may be.
        cached = await client.get("accounts", key, consistency=Eventual())
        assert cached.entry.value == b"before"
    finally:
        for region in ("eu-west", "ap-south"):
            await asyncio.to_thread(cluster.start_server, region)
        await asyncio.to_thread(cluster.wait_ready)

    async def write() -> bool:
        try:
            await client.put("accounts", key, b"after")
        except QuorumUnavailableError:
            return False
        return True

    await eventually(write, bool, timeout_s=90, interval_s=0.5, what="writes accepted again")


async def test_without_a_quorum_no_bounded_read_outlives_its_bound(
    cluster: NatsCluster, agent: tuple[Agent, MeridianConfig], client: MeridianClient
) -> None:
    """The server left behind still answers for the stream (a member that lost its
    leader answers STREAM.INFO itself, an old leader keeps leading for a while);
    that is no proof of freshness. After the quorum is gone, every BOUNDED answer
    reports a bound covering at least the time since, and once that exceeds the
    bound asked for, reads go STRONG and fail."""
    key = unique("bounded")
    await client.put("accounts", key, b"before")
    bound = 1.0
    await eventually(
        lambda: client.get("accounts", key, consistency=Bounded(bound)),
        lambda r: r.served == "bounded",
        what="a bounded read served locally while the quorum is there",
    )
    served: list[str] = []
    try:
        for region in ("eu-west", "ap-south"):
            await asyncio.to_thread(cluster.stop_server, region)
        lost_at = time.monotonic()  # nothing can commit after this
        while time.monotonic() < lost_at + 15:
            asked_at = time.monotonic()
            try:
                got = await client.get("accounts", key, consistency=Bounded(bound))
            except QuorumUnavailableError:
                served.append("quorum-unavailable")
                continue
            served.append(got.served)
            assert got.served == "bounded", got
            assert got.entry.value == b"before"
            assert got.staleness_bound_s <= bound
            assert got.staleness_bound_s >= asked_at - lost_at, (got, asked_at - lost_at)
            await asyncio.sleep(0.05)
        # Scan proves freshness the same way: past the bound it is STRONG, and fails.
        with pytest.raises(QuorumUnavailableError):
            await client.scan_page("accounts", key, consistency=Bounded(bound))
    finally:
        for region in ("eu-west", "ap-south"):
            await asyncio.to_thread(cluster.start_server, region)
        await asyncio.to_thread(cluster.wait_ready)
    # Most of those 15 s were past the bound: STRONG, which has no quorum.
    assert served.count("quorum-unavailable") >= 5, served

    async def fresh_again() -> bool:
        try:
            got = await client.get("accounts", key, consistency=Bounded(bound))
        except QuorumUnavailableError:
            return False
        return got.served == "bounded"

    await eventually(fresh_again, bool, timeout_s=90, interval_s=0.5, what="bounded again")


async def test_watch_streams_changes_under_a_prefix_and_replays_from_a_revision(
    client: MeridianClient,
) -> None:
    prefix = unique("w").replace("-", "") + "."
    first = await client.put("accounts", prefix + "a", b"1")

    async def collect(n: int, **kwargs: Any) -> list[Any]:
        """The first ``n`` events that are not the marker key."""
        out = []
        async for event in client.watch("accounts", prefix, **kwargs):
            if event.entry.key != prefix + "0":
                out.append(event)
            if len(out) == n:
                break
        return out

    seen: list[Any] = []

    async def follow() -> None:
        async for event in client.watch("accounts", prefix):
            seen.append(event)

    live = asyncio.create_task(follow())
    try:
        # The watch starts with the next change: write a marker until it shows up.
        async def marker_seen() -> bool:
            await client.put("accounts", prefix + "0", b"marker")
            await asyncio.sleep(0.1)
            return bool(seen)

        await eventually(marker_seen, bool, what="watch subscribed")
        start = len(seen)
        await client.put("accounts", prefix + "b", b"2")
        await client.put("accounts", unique("elsewhere"), b"not under the prefix")
        await client.put("accounts", prefix + "a", b"3")
        await client.delete("accounts", prefix + "b")
        await eventually(
            lambda: asyncio.sleep(0, len(seen) - start), lambda n: n >= 3, what="3 changes"
        )
        events = [e for e in seen[start:] if e.entry.key != prefix + "0"]
    finally:
        live.cancel()
    assert [(e.kind, e.entry.key, e.entry.value) for e in events] == [
        ("put", prefix + "b", b"2"),
        ("put", prefix + "a", b"3"),
        ("delete", prefix + "b", b""),
    ]
    replayed = await asyncio.wait_for(collect(4, from_revision=first), 30)
    assert [(e.kind, e.entry.key) for e in replayed] == [
        ("put", prefix + "a"),
        ("put", prefix + "b"),
        ("put", prefix + "a"),
        ("delete", prefix + "b"),
    ]
    assert replayed[0].entry.revision == first


async def test_watch_over_http_is_server_sent_events(
    agent: tuple[Agent, MeridianConfig], client: MeridianClient
) -> None:
    import aiohttp

    url = agent[1].region("us-east").http_url
    prefix = unique("sse").replace("-", "") + "."
    rev = await client.put("accounts", prefix + "k", b"hello")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/v1/state/watch",
            params={"keyspace": "accounts", "prefix": prefix, "from_revision": str(rev)},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = []
        while len(lines) < 3:
            line = (await asyncio.wait_for(resp.content.readline(), 30)).decode().strip()
            if line:
                lines.append(line)
    assert lines[0] == f"id: {rev}"
    assert lines[1] == "event: put"
    assert lines[2].startswith("data: ")
    assert '"key": "' + prefix + 'k"' in lines[2] or f'"key":"{prefix}k"' in lines[2]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"keyspace": "nope"}, "keyspace"),
        ({"keyspace": "accounts", "prefix": "a b"}, "prefix"),
        ({"keyspace": "accounts", "from_revision": "-1"}, "from_revision"),
        ({"keyspace": "accounts", "from_revision": "9" * 40}, "from_revision"),
    ],
)
async def test_watch_bad_requests_are_invalid_argument(
    agent: tuple[Agent, MeridianConfig], params: dict[str, str], field: str
) -> None:
    import aiohttp

    url = agent[1].region("us-east").http_url
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/state/watch", params=params) as resp,
    ):
        body = await resp.json()
    assert resp.status == 400
    assert body["error"]["field"] == field


async def test_a_refused_cas_that_was_applied_is_recognised_as_ours(
    agent: tuple[Agent, MeridianConfig], client: MeridianClient
) -> None:
    """JetStream can refuse a compare-and-set that it then applies (the chaos
    harness saw it right after a heal). The store tells its own write apart by
    the HLC and region headers of the key's first message after the expected
    revision."""
    store = agent[0].state.replicas["accounts"].store
    key = unique("refused")
    rev = await client.put("accounts", key, b"v1")
    js = agent[0].conn.jetstream(2.0)
    ours = {"Meridian-HLC": "0000000000000001", "Meridian-Region": "us-east"}
    ack = await js.publish(store.subject(key), b"v2", headers=dict(ours))
    assert await store._our_write_after(key, rev, ours) == ack.seq
    theirs = {"Meridian-HLC": "0000000000000002", "Meridian-Region": "us-east"}
    assert await store._our_write_after(key, rev, theirs) == 0
    # A later write after ours doesn't hide it: ours is the first after rev.
    await client.put("accounts", key, b"v3")
    assert await store._our_write_after(key, rev, ours) == ack.seq
