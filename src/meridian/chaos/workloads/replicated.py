"""``replicated`` keyspaces: writes everywhere, even when cut off; convergence after heal.

Clients in every region, concurrently:

- ``rput``: write a never-written integer to one of a few ``lww`` keys, so
  regions conflict on the same keys;
- ``incr``: add a small delta to a ``counter`` key;
- ``rget``: an EVENTUAL read of an ``lww`` key, which also reports the HLC and
  region of the write it returns (the HLC checker's observations).

``finish`` runs after the last heal: it polls every region's view of every
key until all regions agree and hold every acknowledged key, or ``within_s``
passes, and records one ``converge`` op with the last snapshots it saw.

Checked by :class:`~meridian.chaos.checkers.convergence.ConvergenceChecker`,
:class:`~meridian.chaos.checkers.clocks.HlcChecker` and
:class:`~meridian.chaos.checkers.availability.AlwaysWritableChecker`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from functools import partial
from typing import Any

from meridian.chaos.checkers import Checker
from meridian.chaos.checkers.availability import AlwaysWritableChecker
from meridian.chaos.checkers.clocks import HlcChecker
from meridian.chaos.checkers.convergence import ConvergenceChecker
from meridian.chaos.workloads.base import KeyspaceSpec, RunContext, pace, record
from meridian.client import Eventual, MeridianClient
from meridian.core.errors import NotFoundError

LWW = "chaos_lww"
COUNTER = "chaos_counter"


class ReplicatedWorkload:
    name = "replicated"
    keyspaces = (
        KeyspaceSpec(LWW, "replicated", "lww"),
        KeyspaceSpec(COUNTER, "replicated", "counter"),
    )

    def __init__(
        self,
        keys: int = 4,
        clients_per_region: int = 1,
        pace_s: float = 0.05,
        within_s: float = 60.0,
        max_offset_ms: int = 250,
    ) -> None:
        self.n_keys = keys
        self.clients_per_region = clients_per_region
        self.pace_s = pace_s
        self.within_s = within_s
        self.max_offset_ms = max_offset_ms
        self._values = itertools.count(1)

    def _lww_keys(self, ctx: RunContext) -> list[str]:
        return [f"{ctx.run_id}-k{i}" for i in range(self.n_keys)]

    def _counter_key(self, ctx: RunContext) -> str:
        return f"{ctx.run_id}-count"

    async def setup(self, ctx: RunContext) -> None:
        for region, client in ctx.clients.items():
            await client.put(LWW, f"{ctx.run_id}-ready-{region}", b"ready")
            await client.increment(COUNTER, f"{ctx.run_id}-ready", 0)

    async def run(self, ctx: RunContext, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for region in ctx.regions:
                for _ in range(self.clients_per_region):
                    tg.create_task(self._client(ctx, region, stop))

    async def _client(self, ctx: RunContext, region: str, stop: asyncio.Event) -> None:
        client = ctx.clients[region]
        process = ctx.new_process()
        while not stop.is_set():
            roll = ctx.rng.random()
            key = ctx.rng.choice(self._lww_keys(ctx))
            if roll < 0.45:
                value = next(self._values)
                kind, _ = await record(
                    ctx, process, region, "rput", f"{LWW}/{key}", value,
                    partial(client.put, LWW, key, str(value).encode()), has_effect=True,
                )  # fmt: skip
            elif roll < 0.6:
                delta = ctx.rng.randint(1, 5)
                ckey = self._counter_key(ctx)
                kind, _ = await record(
                    ctx, process, region, "incr", f"{COUNTER}/{ckey}", delta,
                    partial(client.increment, COUNTER, ckey, delta), has_effect=True,
                )  # fmt: skip
            else:
                kind, _ = await record(
                    ctx, process, region, "rget", f"{LWW}/{key}", None,
                    partial(_lww_entry, client, key), has_effect=False,
                )  # fmt: skip
            if kind == "info":
                process = ctx.new_process()
            await pace(ctx, self.pace_s)

    async def _snapshot(self, ctx: RunContext, client: MeridianClient) -> dict[str, Any]:
        snap: dict[str, Any] = {}
        for key in self._lww_keys(ctx):
            entry = await _lww_entry(client, key)
            if entry is not None:
                snap[f"{LWW}/{key}"] = entry
        ckey = self._counter_key(ctx)
        try:
            got = await client.get(COUNTER, ckey, consistency=Eventual())
            snap[f"{COUNTER}/{ckey}"] = {
                "value": "", "hlc": 0, "region": "", "counter": got.entry.counter,
            }  # fmt: skip
        except NotFoundError:
            pass
        return snap

    async def finish(self, ctx: RunContext) -> None:
        acked = {op.key for op in ctx.history.ops() if op.f in ("rput", "incr") and op.type == "ok"}
        process = ctx.new_process()
        ctx.history.add("invoke", process, "", "converge", None, None)
        deadline = time.monotonic() + self.within_s
        snaps: dict[str, dict[str, Any]] = {}
        polls = 0
        converged = False
        while True:
            polls += 1
            for region, client in ctx.clients.items():
                try:
                    snaps[region] = await self._snapshot(ctx, client)
                except Exception as exc:  # an agent still coming back: poll again
                    snaps[region] = {"error": {"value": "", "hlc": 0, "region": str(exc)}}
            views = list(snaps.values())
            converged = all(v == views[0] for v in views) and acked <= set(views[0])
            if converged or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        ctx.history.add(
            "ok", process, "", "converge", None,
            {"regions": snaps, "converged": converged, "polls": polls},
        )  # fmt: skip

    def checkers(self, ctx: RunContext) -> list[Checker]:
        return [
            ConvergenceChecker(self.within_s),
            HlcChecker(self.max_offset_ms),
            AlwaysWritableChecker(),
        ]


async def _lww_entry(client: MeridianClient, key: str) -> dict[str, Any] | None:
    try:
        got = await client.get(LWW, key, consistency=Eventual())
    except NotFoundError:
        return None
    e = got.entry
    return {"value": e.value.hex(), "hlc": e.hlc, "region": e.region, "counter": 0}
