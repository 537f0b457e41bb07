"""Bounded staleness: one sequential writer per keyspace, BOUNDED readers everywhere.

For a ``global`` and a ``replicated`` (LWW) keyspace, one key each:

- a writer puts 1, 2, 3, … in order, one at a time, every ``write_pace_s``.
  The ``global`` writer starts in the first region and moves to the next
  region after a write that did not succeed (a write is linearizable from
  any region, so the order is still the order of the writes). The
  ``replicated`` writer stays in the first region: last-writer-wins orders
  one region's writes by its clock, which another region's would not follow;
- readers in every region loop on BOUNDED reads (``max_staleness`` drawn
  from ``bounds_s``) and record what was served and the bound reported.

Checked by :class:`~meridian.chaos.checkers.staleness.BoundedStalenessChecker`:
no answer older than the bound it reports, none above the bound asked for.
"""

from __future__ import annotations

import asyncio
import itertools
from functools import partial
from typing import Any

from meridian.chaos.checkers import Checker
from meridian.chaos.checkers.staleness import READ, WRITE, BoundedStalenessChecker
from meridian.chaos.workloads.base import (
    KeyspaceSpec,
    RunContext,
    pace,
    record,
    strong_reads_ready,
)
from meridian.client import Bounded, MeridianClient

GLOBAL = "chaos_bounded"
REPLICATED = "chaos_bounded_rep"


class BoundedWorkload:
    name = "bounded"
    keyspaces = (
        KeyspaceSpec(GLOBAL, "global"),
        KeyspaceSpec(REPLICATED, "replicated", "lww"),
    )

    def __init__(
        self,
        write_pace_s: float = 0.02,
        read_pace_s: float = 0.03,
        bounds_s: tuple[float, ...] = (0.5, 1.0),
    ) -> None:
        self.write_pace_s = write_pace_s
        self.read_pace_s = read_pace_s
        self.bounds_s = bounds_s

    def key(self, ctx: RunContext, keyspace: str) -> str:
        return f"{ctx.run_id}-{keyspace}"

    async def setup(self, ctx: RunContext) -> None:
        await strong_reads_ready(ctx, GLOBAL)

    async def run(self, ctx: RunContext, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._writer(ctx, GLOBAL, stop, follow_failures=True))
            tg.create_task(self._writer(ctx, REPLICATED, stop, follow_failures=False))
            for region in ctx.regions:
                for keyspace in (GLOBAL, REPLICATED):
                    tg.create_task(self._reader(ctx, keyspace, region, stop))

    async def _writer(
        self, ctx: RunContext, keyspace: str, stop: asyncio.Event, *, follow_failures: bool
    ) -> None:
        key = self.key(ctx, keyspace)
        regions = itertools.cycle(ctx.regions)
        region = next(regions)
        process = ctx.new_process()
        for value in itertools.count(1):
            if stop.is_set():
                return
            client = ctx.clients[region]
            kind, _ = await record(
                ctx, process, region, WRITE, key, value,
                partial(client.put, keyspace, key, str(value).encode()),
                has_effect=True, timeout_s=5.0,
            )  # fmt: skip
            if kind == "info":
                process = ctx.new_process()
            if kind != "ok" and follow_failures:
                region = next(regions)
            await asyncio.sleep(self.write_pace_s)

    async def _reader(
        self, ctx: RunContext, keyspace: str, region: str, stop: asyncio.Event
    ) -> None:
        client = ctx.clients[region]
        key = self.key(ctx, keyspace)
        process = ctx.new_process()
        while not stop.is_set():
            bound = ctx.rng.choice(self.bounds_s)
            await record(
                ctx, process, region, READ, key, {"max": bound},
                partial(_read, client, keyspace, key, bound),
                has_effect=False, timeout_s=10.0,
            )  # fmt: skip
            await pace(ctx, self.read_pace_s)

    def checkers(self, ctx: RunContext) -> list[Checker]:
        return [BoundedStalenessChecker(f"{ctx.run_id}-chaos_bounded")]

    async def finish(self, ctx: RunContext) -> None:
        return None


async def _read(client: MeridianClient, keyspace: str, key: str, bound: float) -> dict[str, Any]:
    """One BOUNDED read. NOT_FOUND (only before the first write lands) says neither
    the level served nor a bound, so it is left to fail the op: not checked."""
    got = await client.get(keyspace, key, consistency=Bounded(bound))
    return {
        "value": int(got.entry.value),
        "served": got.served,
        "bound": got.staleness_bound_s,
        "max": bound,
    }
