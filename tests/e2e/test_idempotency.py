"""Idempotent commands on the real sandbox, with its WAN latency: the same command
sent to all three regions at once runs once, and a command cut off by the loss
of its region completes exactly once after a retry in another region."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from meridian.client import MeridianClient, Strong
from meridian.core.errors import (
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    MeridianError,
    NotFoundError,
)
from meridian.idempotency.model import StoredResponse
from tests.conftest import eventually
from tests.e2e.conftest import REGIONS, SandboxHandle, ready_clients

ROUNDS = 50
WAVE = 10


@pytest.fixture
async def clients(sandbox: SandboxHandle) -> AsyncIterator[dict[str, MeridianClient]]:
    async def ready(client: MeridianClient, region: str) -> None:
        key = f"ready-{region}-{uuid.uuid4()}"
        begun = await client.begin("probe", key, b"{}")
        await client.abort("probe", key, begun.fencing_token)
        await client.put("accounts", f"ready-{region}", b"1")

    async with ready_clients(sandbox, ready) as out:
        yield out


async def effects(client: MeridianClient, key: str) -> int:
    """How many times the command took effect for ``key`` (a strong scan, retried
    while a region loss still has leaders moving)."""

    async def count() -> int | None:
        try:
            scan = client.scan("accounts", f"effect/{key}/", consistency=Strong())
            return len([e async for e in scan])
        except MeridianError:
            return None

    found = await eventually(count, lambda n: n is not None, timeout_s=60, what="strong scan")
    assert found is not None
    return found


def command_for(client: MeridianClient, key: str, region: str):  # type: ignore[no-untyped-def]
    async def command(token: int) -> StoredResponse:
        # The command's effect: one record per run, written through the region's agent.
        await client.create("accounts", f"effect/{key}/{token}", region.encode())
        return StoredResponse(201, f"order placed by {region} with token {token}".encode())

    return command


async def run_until_done(
    client: MeridianClient, key: str, request: bytes, region: str
) -> StoredResponse:
    """What a caller does: retry while another caller holds the key."""
    while True:
        try:
            result = await client.once("shop", key, request, command_for(client, key, region))
            return result.response
        except IdempotencyInProgressError:
            await asyncio.sleep(0.05)


async def test_the_same_command_sent_to_every_region_at_once_runs_once(
    clients: dict[str, MeridianClient],
) -> None:
    run = uuid.uuid4().hex[:8]

    async def one_round(i: int) -> None:
        key = f"order-{run}-{i}"
        request = f'{{"order":{i},"sku":"A-1","qty":1}}'.encode()
        responses = await asyncio.gather(
            *(run_until_done(clients[r], key, request, r) for r in REGIONS)
        )
        assert len(set(responses)) == 1, (key, responses)
        assert responses[0].status == 201
        assert await effects(clients["us-east"], key) == 1, key

    # Rounds run WAVE at a time (each round is its own key), so the 50 rounds
    # take a few WAN round trips each instead of one after another.
    for first in range(0, ROUNDS, WAVE):
        await asyncio.gather(*(one_round(i) for i in range(first, min(first + WAVE, ROUNDS))))


async def test_in_progress_and_mismatch_get_their_codes_across_regions(
    clients: dict[str, MeridianClient],
) -> None:
    key = f"held-{uuid.uuid4().hex[:8]}"
    holder = await clients["us-east"].begin("shop", key, b'{"qty":1}', lease_s=30)
    assert holder.outcome == "new"
    with pytest.raises(IdempotencyInProgressError):
        await clients["ap-south"].once(
            "shop", key, b'{"qty":1}', command_for(clients["ap-south"], key, "ap-south")
        )
    with pytest.raises(IdempotencyMismatchError):
        await clients["eu-west"].once(
            "shop", key, b'{"qty":2}', command_for(clients["eu-west"], key, "eu-west")
        )
    assert await effects(clients["us-east"], key) == 0
    await clients["us-east"].abort("shop", key, holder.fencing_token)


async def test_a_command_cut_off_by_region_loss_completes_once_after_a_retry_elsewhere(
    sandbox: SandboxHandle, clients: dict[str, MeridianClient]
) -> None:
    key = f"lost-{uuid.uuid4().hex[:8]}"
    request = b'{"sku":"A-1","qty":1}'
    east, west = clients["us-east"], clients["eu-west"]
    started = asyncio.Event()

    async def slow_command(token: int) -> StoredResponse:
        started.set()
        await asyncio.sleep(2)  # the region dies meanwhile
        return await command_for(east, key, "us-east")(token)

    first = asyncio.create_task(east.once("shop", key, request, slow_command, lease_s=3))
    await started.wait()
    try:
        sandbox.cli("sandbox", "kill", "us-east")
        with pytest.raises(MeridianError):
            await first  # its agent is gone: neither the effect nor Complete lands

        async def retry() -> StoredResponse | None:
            try:
                # Retry once the keyspace's quorum answers again: while leaders
                # are still moving, the command's own effect write can time out
                # and commit later (an indeterminate write the command reports
                # as failed), and the next retry would add a second effect that
                # no idempotency record could have prevented.
                with contextlib.suppress(NotFoundError):
                    await west.get("accounts", f"settled-{key}", consistency=Strong())
                return await run_until_done(west, key, request, "eu-west")
            except MeridianError:
                return None  # the global cluster may still be electing leaders

        response = await eventually(
            retry, lambda r: r is not None, timeout_s=120, interval_s=0.5, what="retry completes"
        )
        assert response is not None
        assert response.status == 201
        assert b"eu-west" in response.body
        n = await effects(west, key)
        if n != 1:
            scan = west.scan("accounts", f"effect/{key}/", consistency=Strong())
            made = [(e.key, e.value, e.revision) async for e in scan]
            raise AssertionError(f"{n} effects: {made}")
        # Every later attempt, anywhere, replays the same response.
        again = await clients["ap-south"].once(
            "shop", key, request, command_for(clients["ap-south"], key, "ap-south")
        )
        assert again.replayed
        assert again.response == response
        assert await effects(west, key) == 1
    finally:
        sandbox.cli("sandbox", "restart", "us-east")
