"""The `global` keyspace across the real three-region sandbox, with WAN latency:
linearizable per key, CAS races across regions, and QUORUM_UNAVAILABLE in a
region cut off from the quorum."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import pytest

from meridian.client import Eventual, MeridianClient, Strong
from meridian.core.errors import ConflictError, NotFoundError, QuorumUnavailableError
from meridian.sandbox.wan_control import WanClient
from tests.conftest import eventually
from tests.e2e.conftest import REGIONS, SandboxHandle, ready_clients


@pytest.fixture
async def clients(sandbox: SandboxHandle) -> AsyncIterator[dict[str, MeridianClient]]:
    async def writable(client: MeridianClient, region: str) -> None:
        await client.put("accounts", f"ready.{region}", b"1")

    async with ready_clients(sandbox, writable) as out:
        yield out


async def test_a_write_acknowledged_in_one_region_is_read_strongly_in_every_other(
    clients: dict[str, MeridianClient],
) -> None:
    for writer in REGIONS:
        for reader in REGIONS:
            if reader == writer:
                continue
            key = f"lin.{writer}.{reader}.{time.monotonic_ns()}"
            revision = await clients[writer].put("accounts", key, writer.encode())
            got = await clients[reader].get("accounts", key, consistency=Strong())
            assert got.entry.value == writer.encode()
            assert got.entry.revision == revision
            assert got.entry.region == writer


async def test_two_regions_cas_the_same_revision_and_exactly_one_wins(
    clients: dict[str, MeridianClient],
) -> None:
    for round_ in range(5):
        key = f"race.{round_}.{time.monotonic_ns()}"
        base = await clients["eu-west"].put("accounts", key, b"0")
        results = await asyncio.gather(
            clients["us-east"].put("accounts", key, b"us", if_revision=base),
            clients["ap-south"].put("accounts", key, b"ap", if_revision=base),
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, int)]
        losses = [r for r in results if isinstance(r, ConflictError)]
        assert (len(wins), len(losses)) == (1, 1), results
        assert losses[0].current_revision == wins[0]
        final = await clients["eu-west"].get("accounts", key, consistency=Strong())
        assert final.entry.revision == wins[0]


async def test_strong_put_latency_per_region_is_reported(
    clients: dict[str, MeridianClient],
) -> None:
    """Not a speed check: prints what a user sees, for the README and the benchmarks."""
    lines = []
    for region in REGIONS:
        samples = []
        for i in range(10):
            start = time.perf_counter()
            await clients[region].put("accounts", f"lat.{region}.{i}", b"x")
            samples.append((time.perf_counter() - start) * 1000)
        lines.append(
            f"Put STRONG from {region}: median {statistics.median(samples):.0f} ms "
            f"(min {min(samples):.0f}, max {max(samples):.0f})"
        )
        assert all(s > 0 for s in samples)
    print("\n" + "\n".join(lines))


async def test_a_region_cut_off_from_the_quorum_gets_quorum_unavailable(
    sandbox: SandboxHandle, clients: dict[str, MeridianClient]
) -> None:
    key = f"cut.{time.monotonic_ns()}"
    await clients["us-east"].put("accounts", key, b"before")

    async def cached_in_ap_south() -> bytes | None:
        try:
            got = await clients["ap-south"].get("accounts", key, consistency=Eventual())
        except NotFoundError:
            return None
        return got.entry.value

    await eventually(cached_in_ap_south, lambda v: v == b"before", what="ap-south cache has it")
    async with WanClient(sandbox.config.wan.control_url) as wan:
        await wan.partition("ap-south")
        try:
            with pytest.raises(QuorumUnavailableError) as err:
                await clients["ap-south"].put("accounts", key, b"from ap-south")
            assert "ap-south" in err.value.message
            with pytest.raises(QuorumUnavailableError):
                await clients["ap-south"].get("accounts", key, consistency=Strong())
            # Eventual reads still answer from the cache, and say how stale they may be.
            cached = await clients["ap-south"].get("accounts", key, consistency=Eventual())
            assert cached.entry.value == b"before"
            assert cached.served == "eventual"

            # The majority keeps writing (after an election if the leader was in ap-south).
            async def majority_writes() -> bool:
                try:
                    await clients["us-east"].put("accounts", key, b"during")
                except QuorumUnavailableError:
                    return False
                return True

            await eventually(majority_writes, bool, timeout_s=60, interval_s=0.5, what="majority")

            # The majority's strong reads see it (once JetStream has settled its leaders).
            async def strong_from_eu_west() -> bytes | None:
                try:
                    got = await clients["eu-west"].get("accounts", key, consistency=Strong())
                except QuorumUnavailableError:
                    return None
                return got.entry.value

            assert (
                await eventually(strong_from_eu_west, lambda v: v is not None, what="eu-west read")
                == b"during"
            )
        finally:
            await wan.heal()

    async def ap_writes() -> bool:
        try:
            await clients["ap-south"].put("accounts", key, b"after")
        except QuorumUnavailableError:
            return False
        return True

    await eventually(
        ap_writes, bool, timeout_s=90, interval_s=0.5, what="ap-south writes after heal"
    )

    # Rejoining can trigger one more leader election; strong reads resume after it.
    async def strong_from_us_east() -> bytes | None:
        try:
            return (await clients["us-east"].get("accounts", key, consistency=Strong())).entry.value
        except QuorumUnavailableError:
            return None

    after = await eventually(
        strong_from_us_east, lambda v: v is not None, timeout_s=60, what="strong read after heal"
    )
    assert after == b"after"
