"""The Idempotency API through real agents on a real 3-server JetStream cluster:
the four Begin outcomes, stored responses replayed (errors included), lease
takeover with fencing, abort, retried Complete, concurrent duplicates, bad input
on both transports, and retention that really forgets."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meridian.agent.app import Agent
from meridian.client import MeridianClient
from meridian.config import MeridianConfig
from meridian.core.canonical import PayloadKind, fingerprint
from meridian.core.errors import (
    FencedError,
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    InvalidArgumentError,
    UnavailableError,
)
from meridian.idempotency.model import StoredResponse
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, http_post, running_agent

_seq = itertools.count()


def unique(name: str) -> str:
    return f"{name}-{next(_seq)}-{id(object())}"


ORDER = b'{"sku":"A-1","qty":2}'
OK = StoredResponse(201, b'{"order":"o-1"}', (("content-type", "application/json"),))


@pytest.fixture(scope="module")
def cluster() -> Any:
    with NatsCluster("global") as c:
        yield c


@pytest.fixture(scope="module")
def config(cluster: NatsCluster) -> MeridianConfig:
    return agent_config(
        cluster,
        peers=("eu-west", "ap-south"),
        idempotency={"default_lease_s": 5, "max_lease_s": 60},
    )


async def _ready(agent: Agent) -> Agent:
    await asyncio.wait_for(agent.idempotency.wait_serving(), 120)  # a hang guard
    return agent


@pytest.fixture
async def agents(config: MeridianConfig) -> AsyncIterator[dict[str, Agent]]:
    async with (
        running_agent(config) as east,
        running_agent(config, region="eu-west") as west,
    ):
        yield {"us-east": await _ready(east), "eu-west": await _ready(west)}


@pytest.fixture
async def clients(
    agents: dict[str, Agent], config: MeridianConfig
) -> AsyncIterator[dict[str, MeridianClient]]:
    async with (
        MeridianClient(config.region("us-east").grpc_address) as east,
        MeridianClient(config.region("eu-west").grpc_address) as west,
    ):
        yield {"us-east": east, "eu-west": west}


async def test_new_then_completed_replays_the_stored_response(
    clients: dict[str, MeridianClient],
) -> None:
    east = clients["us-east"]
    key = unique("order")
    first = await east.begin("shop", key, ORDER)
    assert first.outcome == "new"
    assert first.fencing_token > 0
    assert first.fingerprint == fingerprint(ORDER)
    await east.complete("shop", key, first.fencing_token, OK)
    # Same request, reordered and respaced: the same fingerprint, so a replay.
    again = await east.begin("shop", key, b'{ "qty": 2, "sku": "A-1" }')
    assert again.outcome == "completed"
    assert again.response == OK
    # Another region sees the same record.
    west = await clients["eu-west"].begin("shop", key, ORDER)
    assert west.outcome == "completed"
    assert west.response == OK


async def test_an_error_response_is_stored_and_replayed_like_a_success(
    clients: dict[str, MeridianClient],
) -> None:
    east = clients["us-east"]
    key = unique("declined")
    failed = StoredResponse(402, b'{"error":"card declined"}')
    runs = 0

    async def command(token: int) -> StoredResponse:
        nonlocal runs
        runs += 1
        return failed

    first = await east.once("shop", key, ORDER, command)
    second = await east.once("shop", key, ORDER, command)
    assert (first.replayed, second.replayed) == (False, True)
    assert first.response == second.response == failed
    assert runs == 1


async def test_a_key_reused_for_another_request_is_a_mismatch(
    clients: dict[str, MeridianClient],
) -> None:
    east = clients["us-east"]
    key = unique("reuse")
    begun = await east.begin("shop", key, ORDER)
    other = b'{"sku":"A-1","qty":3}'
    # A mismatch wins even while the first request is still in progress.
    assert (await east.begin("shop", key, other)).outcome == "mismatch"
    await east.complete("shop", key, begun.fencing_token, OK)
    mismatch = await east.begin("shop", key, other)
    assert mismatch.outcome == "mismatch"
    assert mismatch.fingerprint == fingerprint(ORDER)
    with pytest.raises(IdempotencyMismatchError):
        await east.once("shop", key, other, lambda t: asyncio.sleep(0, OK))
    # Binary payloads are fingerprinted as bytes: the same JSON text respaced differs.
    bkey = unique("binary")
    await east.begin("shop", bkey, ORDER, kind=PayloadKind.BINARY)
    respaced = await east.begin("shop", bkey, b'{ "sku":"A-1","qty":2}', kind=PayloadKind.BINARY)
    assert respaced.outcome == "mismatch"


async def test_scope_separates_callers(clients: dict[str, MeridianClient]) -> None:
    east = clients["us-east"]
    key = unique("shared")
    assert (await east.begin("team-a", key, ORDER)).outcome == "new"
    assert (await east.begin("team-b", key, b'{"other":1}')).outcome == "new"


async def test_a_live_lease_is_in_progress_for_everyone_else(
    clients: dict[str, MeridianClient],
) -> None:
    key = unique("busy")
    holder = await clients["us-east"].begin("shop", key, ORDER, lease_s=30)
    busy = await clients["eu-west"].begin("shop", key, ORDER)
    assert busy.outcome == "in_progress"
    assert busy.lease_expires_at == pytest.approx(holder.lease_expires_at, abs=0.01)
    with pytest.raises(IdempotencyInProgressError):
        await clients["eu-west"].once("shop", key, ORDER, lambda t: asyncio.sleep(0, OK))


async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(
    clients: dict[str, MeridianClient],
) -> None:
    key = unique("slow")
    old = await clients["us-east"].begin("shop", key, ORDER, lease_s=0.2)
    await asyncio.sleep(0.4)
    new = await clients["eu-west"].begin("shop", key, ORDER, lease_s=30)
    assert new.outcome == "new"
    assert new.took_over
    assert new.fencing_token > old.fencing_token
    # The late holder can neither complete nor abort.
    with pytest.raises(FencedError):
        await clients["us-east"].complete("shop", key, old.fencing_token, OK)
    with pytest.raises(FencedError):
        await clients["us-east"].abort("shop", key, old.fencing_token)
    await clients["eu-west"].complete("shop", key, new.fencing_token, OK)
    assert (await clients["us-east"].begin("shop", key, ORDER)).response == OK


async def test_abort_releases_the_key_and_a_retried_complete_is_a_no_op(
    clients: dict[str, MeridianClient],
) -> None:
    east, west = clients["us-east"], clients["eu-west"]
    key = unique("abort")
    first = await east.begin("shop", key, ORDER)
    await east.abort("shop", key, first.fencing_token)
    second = await east.begin("shop", key, ORDER)
    assert second.outcome == "new"
    assert second.fencing_token > first.fencing_token
    with pytest.raises(FencedError):
        await east.abort("shop", key, first.fencing_token)
    # Complete through the agent that granted the lease, then again through the
    # other region's agent (which has to read the record): both succeed.
    expires = await east.complete("shop", key, second.fencing_token, OK)
    again = await west.complete("shop", key, second.fencing_token, OK)
    assert again == pytest.approx(expires, abs=1.0)
    with pytest.raises(FencedError):
        await west.complete("shop", key, first.fencing_token, OK)


async def test_a_command_that_raises_releases_its_key(clients: dict[str, MeridianClient]) -> None:
    east = clients["us-east"]
    key = unique("crash")

    async def boom(token: int) -> StoredResponse:
        raise RuntimeError("handler crashed")

    with pytest.raises(RuntimeError):
        await east.once("shop", key, ORDER, boom)
    result = await east.once("shop", key, ORDER, lambda t: asyncio.sleep(0, OK))
    assert result == type(result)(OK, replayed=False)


async def test_concurrent_duplicates_in_two_regions_run_the_command_once(
    clients: dict[str, MeridianClient],
) -> None:
    for round_ in range(5):
        key = unique(f"race{round_}")
        effects: list[int] = []

        async def command(token: int, effects: list[int] = effects) -> StoredResponse:
            effects.append(token)
            await asyncio.sleep(0.05)
            return StoredResponse(200, f"token {token}".encode())

        async def caller(client: MeridianClient, key: str = key) -> StoredResponse:
            while True:
                try:
                    return (await client.once("shop", key, ORDER, command)).response
                except IdempotencyInProgressError:
                    await asyncio.sleep(0.02)

        responses = await asyncio.gather(
            *(caller(clients[r]) for r in ("us-east", "eu-west") for _ in range(5))
        )
        assert len(effects) == 1, effects
        assert len(set(responses)) == 1


@pytest.mark.parametrize(
    ("scope", "key", "field"),
    [
        ("", "k", "scope"),
        ("has space", "k", "scope"),
        ("s" * 129, "k", "scope"),
        ("shop", "", "key"),
        ("shop", "k" * 256, "key"),
        ("shop", "tab\there", "key"),
        ("shop", "caf\u00e9", "key"),
    ],
)
async def test_bad_scope_and_key_are_invalid_and_write_nothing(
    clients: dict[str, MeridianClient], agents: dict[str, Agent], scope: str, key: str, field: str
) -> None:
    store = agents["us-east"].idempotency.store

    async def last_seq() -> int:
        return int((await store.conn.jetstream(2.0).stream_info(store.stream)).state.last_seq)

    before = await last_seq()
    with pytest.raises(InvalidArgumentError) as err:
        await clients["us-east"].begin(scope, key, ORDER)
    assert err.value.field == field
    assert await last_seq() == before


async def test_bad_payload_lease_token_and_response_are_invalid(
    clients: dict[str, MeridianClient],
) -> None:
    east = clients["us-east"]
    with pytest.raises(InvalidArgumentError, match="payload"):
        await east.begin("shop", "k", b'{"a":1,"a":2}')
    with pytest.raises(InvalidArgumentError) as err:
        await east.begin("shop", unique("lease"), ORDER, lease_s=3600)
    assert err.value.field == "lease"
    with pytest.raises(InvalidArgumentError) as err:
        await east.complete("shop", "k", 0, OK)
    assert err.value.field == "fencing_token"
    key = unique("big")
    begun = await east.begin("shop", key, ORDER)
    with pytest.raises(InvalidArgumentError) as err:
        await east.complete("shop", key, begun.fencing_token, StoredResponse(200, b"x" * (2 << 20)))
    assert err.value.field == "response.body"
    # Nothing was stored: the key is still in progress, and completes normally.
    await east.complete("shop", key, begun.fencing_token, OK)


async def test_http_begin_complete_and_errors(
    agents: dict[str, Agent], config: MeridianConfig
) -> None:
    url = config.region("us-east").http_url
    key = unique("http")
    payload = base64.b64encode(ORDER).decode()
    status, body = await http_post(
        f"{url}/v1/idempotency/begin", {"scope": "shop", "key": key, "payload": payload}
    )
    assert status == 200, body
    assert body["outcome"] == "OUTCOME_NEW"
    assert body["fingerprint"] == fingerprint(ORDER)
    token = body["fencingToken"]
    response = {"status": 201, "body": base64.b64encode(b"done").decode()}
    status, body = await http_post(
        f"{url}/v1/idempotency/complete",
        {"scope": "shop", "key": key, "fencingToken": token, "response": response},
    )
    assert status == 200, body
    status, body = await http_post(
        f"{url}/v1/idempotency/begin",
        {"scope": "shop", "key": key, "fingerprint": fingerprint(ORDER)},
    )
    assert body["outcome"] == "OUTCOME_COMPLETED"
    assert base64.b64decode(body["response"]["body"]) == b"done"
    status, body = await http_post(
        f"{url}/v1/idempotency/abort", {"scope": "shop", "key": key, "fencingToken": "1"}
    )
    assert status == 409
    assert body["error"]["code"] == "FENCED"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b'{"scope": 5}', "body"),
        (b'{"scope": "shop", "key": "k", "lease": "forever"}', "body"),
        (b'{"scope": "shop", "key": "k", "fingerprint": "abc"}', "fingerprint"),
        (b'{"scope": "shop", "key": "k", "fingerprint": "' + b"A" * 64 + b'"}', "fingerprint"),
        (
            b'{"scope": "shop", "key": "k", "payload": "e30=", "fingerprint": "'
            + b"a" * 64
            + b'"}',
            "payload",
        ),
        (b'{"scope": "shop", "key": "k", "payload": "' + b"W" * 100 + b'"}', "payload"),
        (b'{"scope": "shop", "key": "k", "payloadKind": "PAYLOAD_KIND_XML"}', "body"),
        (b"[" * 100_000 + b"]" * 100_000, "body"),
    ],
)
async def test_http_malformed_and_hostile_begin_bodies(
    agents: dict[str, Agent], config: MeridianConfig, body: bytes, field: str
) -> None:
    url = config.region("us-east").http_url
    status, resp = await http_post(f"{url}/v1/idempotency/begin", body)
    assert status == 400, resp
    assert resp["error"]["code"] == "INVALID_ARGUMENT"
    assert resp["error"]["field"] == field


async def test_retention_forgets_completed_keys(cluster: NatsCluster) -> None:
    # Regional storage in a cluster of its own, so its bucket's retention is 1 s.
    with NatsCluster("us-east") as regional:
        config = agent_config(
            regional,
            idempotency={
                "storage": "regional",
                "retention_s": 1,
                "default_lease_s": 0.5,
                "max_lease_s": 1,
            },
        )
        async with running_agent(config) as agent:
            await _ready(agent)
            assert agent.idempotency.store.cluster == "us-east"
            async with MeridianClient(config.region("us-east").grpc_address) as client:
                key = unique("short")
                begun = await client.begin("shop", key, ORDER)
                await client.complete("shop", key, begun.fencing_token, OK)
                assert (await client.begin("shop", key, ORDER)).outcome == "completed"

                # JetStream's max_age removes the record; then the key is new again.
                # Right as it expires, a begin may race the expiry and be told
                # UNAVAILABLE ("retry"), which is what a client then does.
                async def begin_again() -> Any:
                    try:
                        return await client.begin("shop", key, b'{"different":true}')
                    except UnavailableError as exc:
                        return exc

                again = await eventually(
                    begin_again,
                    lambda b: not isinstance(b, UnavailableError) and b.outcome == "new",
                    what="the completed key expires",
                    timeout_s=30,
                )
                assert again.fingerprint == fingerprint(b'{"different":true}')
