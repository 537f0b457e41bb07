"""backbone.feed.every: proofs started on a schedule, pipelined, never piling up."""

from __future__ import annotations

import asyncio

import pytest

from meridian.backbone.feed import every
from meridian.core.errors import QuorumUnavailableError


class Counter:
    """Counts calls; ``reached(n)`` waits until there have been ``n``."""

    def __init__(self) -> None:
        self.n = 0
        self._changed = asyncio.Condition()

    async def bump(self) -> None:
        async with self._changed:
            self.n += 1
            self._changed.notify_all()

    async def reached(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.n >= n)


async def test_probes_do_not_wait_for_each_other_but_stop_at_the_in_flight_cap() -> None:
    started = Counter()
    release = asyncio.Event()

    async def probe() -> None:
        await started.bump()
        await release.wait()

    task = asyncio.create_task(every(0.001, probe, in_flight=3, what="test"))
    await started.reached(3)  # three under way at once: none waited for another
    await asyncio.sleep(0.05)  # fifty intervals: the fourth waits for a slot
    assert started.n == 3
    release.set()
    await started.reached(6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_probe_is_dropped_and_the_next_one_runs() -> None:
    calls = Counter()

    async def probe() -> None:
        await calls.bump()
        if calls.n <= 2:
            raise QuorumUnavailableError("no quorum")

    task = asyncio.create_task(every(0.001, probe, in_flight=2, what="test"))
    await calls.reached(5)
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
