"""backbone.feed.every: proofs started on a schedule, pipelined, never piling up."""

from __future__ import annotations

import asyncio

import pytest

from meridian.backbone.feed import every
from meridian.core.errors import QuorumUnavailableError


async def test_probes_do_not_wait_for_each_other_but_stop_at_the_in_flight_cap() -> None:
    started = 0
    release = asyncio.Event()

    async def probe() -> None:
        nonlocal started
        started += 1
        await release.wait()

    task = asyncio.create_task(every(0.001, probe, in_flight=3, what="test"))
    while started < 3:
        await asyncio.sleep(0.001)
    for _ in range(20):  # the fourth waits for a slot however long it takes
        await asyncio.sleep(0.002)
    assert started == 3
    release.set()
    while started < 6:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_probe_is_dropped_and_the_next_one_runs() -> None:
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise QuorumUnavailableError("no quorum")

    task = asyncio.create_task(every(0.001, probe, in_flight=2, what="test"))
    while calls < 5:
        await asyncio.sleep(0.001)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_unexpected_error_is_not_swallowed() -> None:
    async def probe() -> None:
        raise ValueError("a bug")

    with pytest.raises(ExceptionGroup) as err:
        await every(0.001, probe, in_flight=1, what="test")
    assert err.group_contains(ValueError)
