"""`replicated` keyspaces across the real sandbox: every region accepts writes, even
when cut off from all others, and after heal every region returns the same answer
under every conflict policy, with no counter increment and no set add lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meridian.client import Bounded, Entry, Eventual, MeridianClient, PutItem
from meridian.core.errors import MeridianError, NotFoundError, UnavailableError
from meridian.sandbox.wan_control import WanClient
from tests.conftest import eventually
from tests.e2e.conftest import REGIONS, SandboxHandle, ready_clients


@pytest.fixture
async def clients(sandbox: SandboxHandle) -> AsyncIterator[dict[str, MeridianClient]]:
    async def writable(client: MeridianClient, region: str) -> None:
        await client.put("carts", f"ready.{region}", b"1")
        await client.increment("stock", f"ready.{region}", 1)
        await client.set_add("tags", f"ready.{region}", "x")
        await client.put("notes", f"ready.{region}", b"1")

    async with ready_clients(sandbox, writable) as out:
        yield out


def view(entry: Entry | None) -> Any:
    """What a user compares across regions: everything but the region-local revision."""
    if entry is None:
        return None
    return (entry.value, entry.hlc, entry.region, entry.counter, entry.elements, entry.siblings)


async def read(client: MeridianClient, keyspace: str, key: str) -> Entry | None:
    try:
        return (await client.get(keyspace, key, consistency=Eventual())).entry
    except NotFoundError:
        return None


async def everywhere(
    clients: dict[str, MeridianClient], keyspace: str, key: str
) -> dict[str, Entry | None]:
    results = await asyncio.gather(*(read(clients[r], keyspace, key) for r in REGIONS))
    return dict(zip(REGIONS, results, strict=True))


def converged(results: dict[str, Entry | None]) -> bool:
    views = [view(e) for e in results.values()]
    return views[0] is not None and all(v == views[0] for v in views)


async def test_a_write_in_one_region_reaches_the_others(
    clients: dict[str, MeridianClient],
) -> None:
    key = f"hello.{time.monotonic_ns()}"
    await clients["us-east"].put("carts", key, b"cart-1")
    mine = await clients["us-east"].get("carts", key, consistency=Eventual())
    assert mine.entry.value == b"cart-1"  # read-your-writes in the writing agent
    results = await eventually(
        lambda: everywhere(clients, "carts", key), converged, what="replicated everywhere"
    )
    assert results["ap-south"] is not None
    assert results["ap-south"].value == b"cart-1"
    assert results["ap-south"].region == "us-east"


async def test_a_put_many_across_localities_reaches_every_region(
    clients: dict[str, MeridianClient],
) -> None:
    key = f"many.{time.monotonic_ns()}"
    written = await clients["eu-west"].put_many(
        [
            PutItem("carts", key, b"cart"),
            PutItem("notes", key, b"note"),
            PutItem("accounts", key, b"42"),
        ]
    )
    assert all(isinstance(w, int) for w in written), written
    # A multi-get in another region: each key as that region's view has it.
    got = await eventually(
        lambda: clients["ap-south"].get_many("carts", [key, f"{key}.none"], consistency=Eventual()),
        lambda rs: not isinstance(rs[0], NotFoundError),
        what="the batch's replicated write in ap-south",
    )
    first = got[0]
    assert not isinstance(first, MeridianError), first
    assert (first.entry.value, first.entry.region, first.served) == (b"cart", "eu-west", "eventual")
    assert isinstance(got[1], NotFoundError)
    (note,) = await eventually(
        lambda: clients["us-east"].get_many("notes", [key], consistency=Eventual()),
        lambda rs: not isinstance(rs[0], NotFoundError),
        what="the batch's multi_value write in us-east",
    )
    assert not isinstance(note, MeridianError) and note.entry.value == b"note"
    (acct,) = await clients["ap-south"].get_many("accounts", [key])
    assert not isinstance(acct, MeridianError)
    assert (acct.entry.value, acct.served) == (b"42", "strong")


async def test_partitioned_region_keeps_writing_and_everything_converges_after_heal(
    sandbox: SandboxHandle, clients: dict[str, MeridianClient]
) -> None:
    n = time.monotonic_ns()
    cart, counter, tagset, note = (f"{k}.{n}" for k in ("cart", "counter", "tags", "note"))
    await clients["eu-west"].set_add("tags", tagset, "a")
    await eventually(
        lambda: everywhere(clients, "tags", tagset), converged, what="tag a everywhere"
    )
    increments = {"us-east": [1, 1, 1], "eu-west": [10, 10], "ap-south": [100, 100, 100, 100]}
    async with WanClient(sandbox.config.wan.control_url) as wan:
        await wan.partition("ap-south")
        try:
            # Every region, including the one cut off from all others, accepts writes.
            await clients["us-east"].put("carts", cart, b"from us-east")
            await clients["ap-south"].put("carts", cart, b"from ap-south")
            for region, deltas in increments.items():
                for d in deltas:
                    await clients[region].increment("stock", counter, d)
            await clients["us-east"].set_add("tags", tagset, "b")
            await clients["ap-south"].set_add("tags", tagset, "c", "a")
            await clients["eu-west"].set_remove("tags", tagset, "a")  # removes only what it saw
            await clients["us-east"].put("notes", note, b"us draft")
            await clients["ap-south"].put("notes", note, b"ap draft")

            ap = await clients["ap-south"].get("stock", counter, consistency=Eventual())
            assert ap.entry.counter == 400  # its own writes, right away

            # Cut off, ap-south soon can't prove a 1 s bound on other regions' writes.
            async def bounded_refused() -> str:
                try:
                    await clients["ap-south"].get("carts", cart, consistency=Bounded(1.0))
                except UnavailableError as exc:
                    return exc.message
                return ""

            why = await eventually(bounded_refused, bool, timeout_s=30, what="bound refused")
            assert "confirmed" in why or "synced" in why
        finally:
            await wan.heal()

    start = time.monotonic()
    results = {}
    for keyspace, key in (("carts", cart), ("stock", counter), ("tags", tagset), ("notes", note)):
        results[keyspace] = await eventually(
            lambda ks=keyspace, k=key: everywhere(clients, ks, k),
            converged,
            timeout_s=120,
            interval_s=0.5,
            what=f"{keyspace} converged after heal",
        )
    print(f"\nall replicated keys equal in every region {time.monotonic() - start:.1f}s after heal")

    cart_entry = results["carts"]["us-east"]
    assert cart_entry is not None
    # LWW: the later HLC wins everywhere (ties broken by region id).
    assert cart_entry.value == b"from ap-south"
    assert results["stock"]["eu-west"].counter == sum(sum(d) for d in increments.values())
    # OR-set: ap-south's concurrent add of "a" survives eu-west's remove of the "a" it saw.
    assert results["tags"]["us-east"].elements == ("a", "b", "c")
    siblings = results["notes"]["eu-west"].siblings
    assert sorted(s.value for s in siblings) == [b"ap draft", b"us draft"]

    # A write naming both siblings resolves them, in every region.
    await clients["eu-west"].put("notes", note, b"merged", supersedes=[s.hlc for s in siblings])
    resolved = await eventually(
        lambda: everywhere(clients, "notes", note),
        lambda r: converged(r) and len(r["us-east"].siblings) == 1,
        what="siblings resolved everywhere",
    )
    assert resolved["ap-south"].value == b"merged"


async def test_typed_operations_on_the_wrong_keyspace_are_invalid(
    clients: dict[str, MeridianClient],
) -> None:
    from meridian.core.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as err:
        await clients["us-east"].increment("carts", "k", 1)
    assert err.value.field == "keyspace"
    with pytest.raises(InvalidArgumentError):
        await clients["us-east"].set_add("stock", "k", "x")
    with pytest.raises(InvalidArgumentError) as err:
        await clients["us-east"].put("carts", "k", b"v", if_revision=3)
    assert err.value.field == "if_revision"
    with pytest.raises(InvalidArgumentError):
        await clients["us-east"].create("carts", "k", b"v")
    with pytest.raises(InvalidArgumentError) as err:
        await clients["us-east"].set_add("tags", "k")
    assert err.value.field == "elements"
