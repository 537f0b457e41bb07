"""`regional` keyspaces across the real sandbox: a partition lives in its home
region, other allowed regions read their own copy, a region outside the
residency holds nothing and says RESIDENCY_VIOLATION, and re-homing a
partition under concurrent compare-and-set writers loses none of them.

The sandbox declares ``profiles`` (residency us-east and eu-west) and
``eu-records`` (eu-west only, ``forward = true``)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import nats
import nats.js.errors
import pytest
from nats.js import api

from meridian.client import Bounded, Eventual, MeridianClient, Strong
from meridian.core.errors import (
    ConflictError,
    DeadlineExceededError,
    InvalidArgumentError,
    MeridianError,
    NotFoundError,
    QuorumUnavailableError,
    ResidencyViolationError,
    UnavailableError,
)
from meridian.idempotency import StoredResponse
from meridian.sandbox.wan_control import WanClient
from meridian.state.model import regional
from tests.conftest import eventually
from tests.e2e.conftest import SandboxHandle, ready_clients

T = TypeVar("T")

_ids = itertools.count()


def fresh(prefix: str = "p") -> str:
    """A partition no other test wrote to."""
    return f"{prefix}{next(_ids)}x{id(object()) % 100000}"


@pytest.fixture
async def clients(sandbox: SandboxHandle) -> AsyncIterator[dict[str, MeridianClient]]:
    async def writable(client: MeridianClient, region: str) -> None:
        if region != "ap-south":
            await client.put("profiles", f"ready{region.replace('-', '')}.k", b"1")
        else:  # outside the residency: ready once it refuses, rather than "not ready"
            with pytest.raises(ResidencyViolationError):
                await client.get("profiles", "ready.k", consistency=Eventual())

    async with ready_clients(sandbox, writable) as out:
        yield out


async def bounded_read(client: MeridianClient, key: str) -> tuple[str, bytes]:
    """(served, value) of a BOUNDED(2 s) read, or (the error's code, b"")."""
    try:
        r = await client.get("profiles", key, consistency=Bounded(2.0))
    except MeridianError as exc:
        return exc.code, b""
    return r.served, r.entry.value


async def new_partition_written(client: MeridianClient) -> bool:
    """Whether a write to a partition never written before succeeds now (making a
    partition needs JetStream's meta leader, which is re-elected after a heal)."""
    try:
        await client.put("profiles", f"{fresh('settle')}.k", b"1")
    except MeridianError:
        return False
    return True


async def retried(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``call`` (an idempotent one) until it stops failing with an error the API
    says to retry: a regional cluster may still be electing after the previous
    test's partition (UNAVAILABLE, QUORUM_UNAVAILABLE, or a deadline on a
    stream's creation). The timeout is a hang guard."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            return await call()
        except (UnavailableError, QuorumUnavailableError, DeadlineExceededError):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{what}: still failing after 60 s") from None
            await asyncio.sleep(0.5)


async def placement(sandbox: SandboxHandle, stream: str) -> str | None:
    """The cluster a stream lives in, asked of JetStream directly (None: no such stream)."""
    nc = await nats.connect(sandbox.config.region("us-east").agent_nats_urls[0], tls=sandbox.ssl)
    try:
        try:
            info: api.StreamInfo = await nc.jetstream(timeout=5).stream_info(stream)
        except nats.js.errors.NotFoundError:
            return None
        return info.cluster.name if info.cluster else None
    finally:
        await nc.close()


async def test_home_writes_and_reads_and_the_copy_in_another_allowed_region(
    clients: dict[str, MeridianClient], sandbox: SandboxHandle
) -> None:
    part = fresh()
    us, eu = clients["us-east"], clients["eu-west"]
    first = await eu.put("profiles", f"{part}.alice", b"v1")
    # The partition is homed where it was first written, and copied to the
    # other allowed region only.
    assert await placement(sandbox, regional.stream("profiles", part)) == "eu-west"
    await eventually(
        lambda: placement(sandbox, regional.mirror("profiles", part, "us-east")),
        lambda c: c == "us-east",
        timeout_s=30,
        what="the us-east copy",
    )
    assert await placement(sandbox, regional.mirror("profiles", part, "ap-south")) is None

    # Writes from the other allowed region go to the home, linearizably per key.
    second = await us.put("profiles", f"{part}.alice", b"v2", if_revision=first)
    with pytest.raises(ConflictError) as lost:
        await eu.put("profiles", f"{part}.alice", b"stale", if_revision=first)
    assert lost.value.current_revision == second

    strong = await us.get("profiles", f"{part}.alice", consistency=Strong())
    assert (strong.entry.value, strong.served) == (b"v2", "strong")

    # us-east serves BOUNDED from its own copy once the copy has caught up.
    await eventually(
        lambda: bounded_read(us, f"{part}.alice"),
        lambda r: r == ("bounded", b"v2"),
        timeout_s=30,
        what="bounded",
    )
    page = await us.scan_page("profiles", f"{part}.", consistency=Eventual())
    assert [e.key for e in page.entries] == [f"{part}.alice"]

    with pytest.raises(NotFoundError):
        await us.get("profiles", f"{fresh()}.nobody", consistency=Strong())
    with pytest.raises(InvalidArgumentError) as bad:
        await us.put("profiles", "a=b.c", b"x")
    assert "partition" in str(bad.value)


async def test_a_region_outside_the_residency_holds_and_serves_nothing(
    clients: dict[str, MeridianClient], sandbox: SandboxHandle
) -> None:
    part = fresh()
    ap = clients["ap-south"]
    await clients["us-east"].put("profiles", f"{part}.k", b"v")
    for call in (
        ap.get("profiles", f"{part}.k", consistency=Eventual()),
        ap.put("profiles", f"{part}.k", b"x"),
        ap.scan_page("profiles", f"{part}."),
    ):
        with pytest.raises(ResidencyViolationError) as refused:
            await call
        assert "ap-south" in str(refused.value) and "eu-west" in str(refused.value)
    assert await placement(sandbox, regional.mirror("profiles", part, "ap-south")) is None
    assert (await clients["us-east"].get("profiles", f"{part}.k")).entry.value == b"v"


async def test_a_forwarding_keyspace_is_read_and_written_from_outside_without_a_copy(
    clients: dict[str, MeridianClient], sandbox: SandboxHandle
) -> None:
    part = fresh("de")
    us = clients["us-east"]
    revision = await us.put("eu-records", f"{part}.k", b"v")
    # Homed in eu-west, the only allowed region, though written from us-east.
    assert await placement(sandbox, regional.stream("eu-records", part)) == "eu-west"
    assert await placement(sandbox, regional.mirror("eu-records", part, "us-east")) is None
    read = await us.get("eu-records", f"{part}.k", consistency=Eventual())
    # Nothing is kept in us-east: every read is served by the home region.
    assert (read.entry.value, read.entry.revision, read.served) == (b"v", revision, "strong")
    with pytest.raises(ResidencyViolationError):
        await us.scan_page("eu-records", f"{part}.")


async def test_the_home_region_keeps_writing_when_cut_off_from_every_other_region(
    clients: dict[str, MeridianClient], sandbox: SandboxHandle
) -> None:
    part = fresh()
    us, eu = clients["us-east"], clients["eu-west"]
    await eu.put("profiles", f"{part}.k", b"v0")
    await eventually(
        lambda: bounded_read(us, f"{part}.k"),
        lambda r: r == ("bounded", b"v0"),
        timeout_s=30,
        what="us-east's copy",
    )
    async with WanClient(sandbox.config.wan.control_url) as wan:
        await wan.partition("eu-west")
        try:
            for i in range(5):
                await eu.put("profiles", f"{part}.k", f"v{i + 1}".encode())
            assert (await eu.get("profiles", f"{part}.k")).entry.value == b"v5"

            # us-east cannot prove its copy fresh: BOUNDED is never served stale.
            async def bounded() -> str:
                try:
                    r = await us.get("profiles", f"{part}.k", consistency=Bounded(1.0))
                except MeridianError as exc:
                    return exc.code
                return f"{r.served}:{r.entry.value.decode()}"

            await eventually(
                bounded, lambda r: not r.startswith("bounded:v0"), timeout_s=20, what="no stale"
            )
            # EVENTUAL keeps answering from the local copy, and says how stale.
            eventual = await us.get("profiles", f"{part}.k", consistency=Eventual())
            assert eventual.served == "eventual" and eventual.staleness_bound_s >= 1.0
        finally:
            await wan.heal()
    await eventually(
        lambda: bounded_read(us, f"{part}.k"),
        lambda r: r == ("bounded", b"v5"),
        timeout_s=90,
        what="us-east's copy after the heal",
    )
    # Leave the sandbox as found: JetStream's meta layer takes new partitions again.
    await eventually(
        lambda: new_partition_written(us), bool, timeout_s=120, what="JetStream after the heal"
    )


async def test_rehoming_under_concurrent_cas_writers_loses_no_acknowledged_write(
    clients: dict[str, MeridianClient], sandbox: SandboxHandle
) -> None:
    part = fresh()
    us, eu = clients["us-east"], clients["eu-west"]
    key = f"{part}.counter"
    await retried(lambda: us.put("profiles", key, b"0"), "the counter's first write")
    assert await placement(sandbox, regional.stream("profiles", part)) == "us-east"
    acknowledged: list[int] = []
    stop = asyncio.Event()

    async def writer(client: MeridianClient) -> None:
        """Increment by compare-and-set; record each acknowledged value."""
        while not stop.is_set():
            try:
                read = await client.get("profiles", key, consistency=Strong())
                value = int(read.entry.value) + 1
                await client.put(
                    "profiles", key, str(value).encode(), if_revision=read.entry.revision
                )
                acknowledged.append(value)
            except MeridianError:
                await asyncio.sleep(0.05)  # lost the race, or the hand-over: retry

    writers = [asyncio.create_task(writer(c)) for c in (us, eu, us, eu)]
    try:
        await asyncio.sleep(1.0)
        # An admin change waits for its audit entry: the global quorum may still
        # be settling after the previous test's heal (QUORUM_UNAVAILABLE, retryable).
        previous = ""
        for _ in range(60):
            try:
                previous, _ = await us.rehome("profiles", part, "eu-west")
                break
            except QuorumUnavailableError:
                await asyncio.sleep(0.5)
        assert previous == "us-east"
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert await placement(sandbox, regional.stream("profiles", part)) == "eu-west"
    # The old home keeps a read-only copy; the new home's copy is gone.
    assert await placement(sandbox, regional.mirror("profiles", part, "us-east")) == "us-east"
    assert await placement(sandbox, regional.mirror("profiles", part, "eu-west")) is None
    final = int((await eu.get("profiles", key, consistency=Strong())).entry.value)
    # Every acknowledged CAS increment happened exactly once, in order.
    assert sorted(acknowledged) == list(range(1, final + 1))
    assert len(acknowledged) >= 10

    # The move is in the audit log, with who asked for it.
    entries = [
        json.loads(line) for line in sandbox.cli("audit", "tail", "-n", "200").stdout.splitlines()
    ]
    moves = [e for e in entries if e["action"] == "admin:rehome" and part in json.dumps(e)]
    assert moves and moves[-1]["principal"].endswith("/operator/meridian"), entries[-3:]

    # Through the CLI, moved back; asking again is a no-op that says so.
    moved = sandbox.cli("state", "rehome", "profiles", part, "us-east", "--via", "eu-west")
    assert "eu-west -> us-east" in moved.stdout, moved.stdout
    assert (await us.rehome("profiles", part, "us-east"))[0] == "us-east"
    refused = sandbox.cli("state", "rehome", "profiles", part, "ap-south", check=False)
    assert refused.returncode == 2 and "RESIDENCY_VIOLATION" in refused.stderr
    with pytest.raises(ResidencyViolationError):
        await us.rehome("profiles", part, "ap-south")
    with pytest.raises(NotFoundError):
        await us.rehome("profiles", fresh(), "eu-west")
    for keyspace, partition, region, field in (
        ("accounts", "x", "eu-west", "keyspace"),  # global: no homes
        ("profiles", "a.b", "eu-west", "partition"),  # a key, not a partition
        ("profiles", "p" * 65, "eu-west", "partition"),
        ("profiles", "../../etc", "eu-west", "partition"),
        ("profiles", part, "", "region"),
        ("profiles", part, "mars", "region"),
    ):
        with pytest.raises(InvalidArgumentError) as bad:
            await us.rehome(keyspace, partition, region)
        assert field in str(bad.value), bad.value


async def test_idempotency_records_of_a_resident_scope_stay_in_its_regions(
    clients: dict[str, MeridianClient], sandbox: SandboxHandle
) -> None:
    key = f"pay-{fresh()}"
    eu, us = clients["eu-west"], clients["us-east"]
    begun = await retried(lambda: eu.begin("eu-payments", key, b'{"amount": 5}'), "begin")
    assert begun.outcome == "new"
    await eu.complete("eu-payments", key, begun.fencing_token, StoredResponse(200, b"paid"))
    again = await retried(lambda: eu.begin("eu-payments", key, b'{"amount": 5}'), "begin again")
    assert again.response == StoredResponse(200, b"paid")
    # The record, and the response it stores, are kept in eu-west only.
    assert await placement(sandbox, "KV_mg__idempotency_r_eu-west") == "eu-west"
    with pytest.raises(ResidencyViolationError):
        await us.begin("eu-payments", key, b'{"amount": 5}')
    # Other scopes keep their global, every-region records.
    assert (await us.begin("payments", key, b"{}")).outcome == "new"
