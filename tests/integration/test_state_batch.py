"""StateService GetMany and PutMany through a real agent on a real 3-server
JetStream cluster, over gRPC (the Python client) and HTTP: per-item results in
request order, a missing key or a lost CAS as that item's own error, and a bad
item (or a batch too large) refused whole, with nothing written."""

from __future__ import annotations

import base64
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meridian.agent.app import Agent
from meridian.client import Eventual, MeridianClient, PutItem, ReadResult, Strong
from meridian.config import MeridianConfig
from meridian.core.batch import MAX_BYTES, MAX_ITEMS
from meridian.core.errors import ConflictError, InvalidArgumentError, NotFoundError
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, http_post, ready_agent

KEYSPACES = [
    {"name": "accounts"},
    {"name": "small", "key_max_bytes": 16, "value_max_bytes": 64},
]
_seq = itertools.count()


def unique(name: str) -> str:
    return f"{name}-{next(_seq)}"


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


async def test_put_many_then_get_many_per_item_in_order(client: MeridianClient) -> None:
    run = unique("acct")
    keys = [f"{run}/{i}" for i in range(40)]
    written = await client.put_many([PutItem("accounts", k, b"%d" % i) for i, k in enumerate(keys)])
    assert all(isinstance(r, int) for r in written), written
    assert len(set(written)) == 40
    got = await client.get_many("accounts", [*keys, f"{run}/missing"], consistency=Strong())
    for i, (key, r) in enumerate(zip(keys, got, strict=False)):
        assert isinstance(r, ReadResult), r
        assert (r.entry.key, r.entry.value, r.entry.revision) == (key, b"%d" % i, written[i])
        assert r.served == "strong"
    assert isinstance(got[-1], NotFoundError)

    async def eventual() -> list[Any]:
        return await client.get_many("accounts", keys, consistency=Eventual())

    seen = await eventually(
        eventual,
        lambda rs: all(isinstance(r, ReadResult) for r in rs),
        what="the view has the writes",
    )
    assert [r.entry.value for r in seen] == [b"%d" % i for i in range(40)]
    assert {r.served for r in seen} == {"eventual"}


async def test_a_lost_cas_is_that_items_error_and_the_others_are_written(
    client: MeridianClient,
) -> None:
    key, other = unique("cas"), unique("free")
    rev = await client.put("accounts", key, b"1")
    newer = await client.put("accounts", key, b"2", if_revision=rev)
    out = await client.put_many(
        [
            PutItem("accounts", key, b"stale", if_revision=rev),
            PutItem("accounts", other, b"ok"),
            PutItem("accounts", unique("also"), b"fine"),
        ]
    )
    assert isinstance(out[0], ConflictError) and out[0].current_revision == newer
    assert isinstance(out[1], int) and isinstance(out[2], int)
    assert (await client.get("accounts", key)).entry.value == b"2"
    assert (await client.get("accounts", other)).entry.value == b"ok"


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (PutItem("nope", "k", b"x"), "puts[2].keyspace"),
        (PutItem("small", "k" * 17, b"x"), "puts[2].key"),
        (PutItem("small", "k", b"x" * 65), "puts[2].value"),
        (PutItem("accounts", "", b"x"), "puts[2].key"),
    ],
)
async def test_one_bad_put_refuses_the_batch_and_writes_nothing(
    client: MeridianClient, bad: PutItem, field: str
) -> None:
    run = unique("none")
    good = [PutItem("accounts", f"{run}/{i}", b"v") for i in range(4)]
    with pytest.raises(InvalidArgumentError) as err:
        await client.put_many([*good[:2], bad, *good[2:]])
    assert err.value.field == field
    got = await client.get_many("accounts", [p.key for p in good])
    assert all(isinstance(r, NotFoundError) for r in got), got


@pytest.mark.parametrize(
    ("n", "value", "rule"),
    [
        (0, b"", "at least one item"),
        (MAX_ITEMS + 1, b"x", f"at most {MAX_ITEMS} items"),
        (9, b"x" * (1 << 20), f"at most {MAX_BYTES} bytes in all"),
    ],
)
async def test_a_put_many_too_small_or_too_large_is_refused_whole(
    client: MeridianClient, n: int, value: bytes, rule: str
) -> None:
    run = unique("size")
    with pytest.raises(InvalidArgumentError) as err:
        await client.put_many([PutItem("accounts", f"{run}/{i}", value) for i in range(n)])
    assert err.value.field == "puts"
    assert rule in str(err.value)
    if n:
        got = await client.get_many("accounts", [f"{run}/{i}" for i in range(min(n, 5))])
        assert all(isinstance(r, NotFoundError) for r in got)


@pytest.mark.parametrize(
    ("keyspace", "keys", "field"),
    [
        ("accounts", [], "keys"),
        ("accounts", ["k"] * (MAX_ITEMS + 1), "keys"),
        ("small", ["ok", "k" * 17], "keys[1]"),
        ("nope", ["k"], "keyspace"),
    ],
)
async def test_bad_get_many_requests_name_the_field(
    client: MeridianClient, keyspace: str, keys: list[str], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        await client.get_many(keyspace, keys)
    assert err.value.field == field


async def test_http_get_many_and_put_many(agent: tuple[Agent, MeridianConfig]) -> None:
    base = agent[1].region("us-east").http_url
    run = unique("http")
    puts = [
        {"keyspace": "accounts", "key": f"{run}/{i}", "value": base64.b64encode(b"v").decode()}
        for i in range(3)
    ]
    status, resp = await http_post(f"{base}/v1/state/put-many", {"puts": puts})
    assert status == 200, resp
    assert [set(r) for r in resp["results"]] == [{"written"}] * 3
    status, resp = await http_post(
        f"{base}/v1/state/get-many",
        {"keyspace": "accounts", "keys": [f"{run}/0", f"{run}/x"]},
    )
    assert status == 200, resp
    assert base64.b64decode(resp["results"][0]["response"]["entry"]["value"]) == b"v"
    assert resp["results"][1]["error"]["code"] == "NOT_FOUND"
    for body in (b"{nope", b"[" * 100_000, b'{"puts": 5}', b'{"puts": [], "extra": 1}'):
        status, resp = await http_post(f"{base}/v1/state/put-many", body)
        assert status == 400, resp
        assert resp["error"]["field"] == "body"
    status, resp = await http_post(
        f"{base}/v1/state/put-many", {"puts": [{**puts[0], "keyspace": "nope"}]}
    )
    assert status == 400 and resp["error"]["field"] == "puts[0].keyspace", resp
