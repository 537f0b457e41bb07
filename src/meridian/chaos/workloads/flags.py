"""Feature flags through faults: one writer changing a flag, readers everywhere.

- Setup: the flag ``chaos-<run>`` at generation 0 (one variant, ``g0``, whose
  value is 0), written through us-east, then waited for in every region.
- One writer sets generation 1, 2, 3, ... (each a new single-variant
  definition), through a rotating region, by compare-and-set on the revision
  it last saw (a CONFLICT tells it the current one), so a write that timed
  out and commits late can never overwrite a newer generation.
- Two readers per region evaluate the flag through their region's agent.
- After the last heal, every region is polled until all serve one generation.

Checked by :class:`~meridian.chaos.checkers.flags.FlagsChecker`.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from meridian.chaos.checkers import Checker
from meridian.chaos.checkers.flags import FlagsChecker
from meridian.chaos.workloads.base import KeyspaceSpec, RunContext, pace, record
from meridian.client import MeridianClient
from meridian.core.errors import ConflictError


class FlagUnavailable(Exception):
    """An evaluation that served no value (its error code and details)."""


def definition(generation: int) -> dict[str, Any]:
    return {"variants": {f"g{generation}": generation}, "defaultVariant": f"g{generation}"}


async def served(client: MeridianClient, key: str) -> int:
    e = await client.flags.evaluate(key)
    if e.error_code or e.value is None:
        raise FlagUnavailable(f"{e.error_code}: {e.error_details}")
    return int(e.value)


class FlagsWorkload:
    name = "flags"
    keyspaces: tuple[KeyspaceSpec, ...] = ()

    def __init__(
        self, readers_per_region: int = 2, write_pace_s: float = 0.3, read_pace_s: float = 0.05,
        within_s: float = 60.0,
    ) -> None:  # fmt: skip
        self.readers = readers_per_region
        self.write_pace_s = write_pace_s
        self.read_pace_s = read_pace_s
        self.within_s = within_s
        self.revision = 0

    def key(self, ctx: RunContext) -> str:
        return "chaos-" + re.sub(r"[^A-Za-z0-9_.-]", "-", ctx.run_id)[:100]

    async def setup(self, ctx: RunContext) -> None:
        key = self.key(ctx)
        writer = ctx.clients[ctx.regions[0]]
        if self.revision == 0:
            self.revision = (await writer.flags.set(key, definition(0))).revision
        for client in ctx.clients.values():
            await served(client, key)  # raises until every region has it

    async def run(self, ctx: RunContext, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._writer(ctx, stop))
            for region in ctx.regions:
                for _ in range(self.readers):
                    tg.create_task(self._reader(ctx, region, stop))

    async def _writer(self, ctx: RunContext, stop: asyncio.Event) -> None:
        key = self.key(ctx)
        process = ctx.new_process()
        generation = 0
        turn = 0
        while not stop.is_set():
            generation += 1
            region = ctx.regions[turn % len(ctx.regions)]
            turn += 1
            client = ctx.clients[region]
            expected = self.revision

            async def write(
                g: int = generation, c: MeridianClient = client, expected: int = expected
            ) -> Any:
                try:
                    flag = await c.flags.set(key, definition(g), if_revision=expected)
                except ConflictError as exc:
                    if exc.current_revision:
                        self.revision = exc.current_revision
                    raise
                self.revision = flag.revision
                return g

            kind, _ = await record(
                ctx, process, region, "fset", key, generation, write, has_effect=True
            )
            if kind == "info":
                process = ctx.new_process()
            await pace(ctx, self.write_pace_s)

    async def _reader(self, ctx: RunContext, region: str, stop: asyncio.Event) -> None:
        key = self.key(ctx)
        client = ctx.clients[region]
        process = ctx.new_process()
        while not stop.is_set():
            await record(
                ctx, process, region, "feval", key, None, lambda: served(client, key),
                has_effect=False, timeout_s=10.0,
            )  # fmt: skip
            await pace(ctx, self.read_pace_s)

    async def finish(self, ctx: RunContext) -> None:
        key = self.key(ctx)
        deadline = time.monotonic() + self.within_s
        last: dict[str, int | str] = {}
        while True:
            for region, client in ctx.clients.items():
                try:
                    last[region] = await served(client, key)
                except Exception as exc:  # an agent still coming back: poll again
                    last[region] = f"{type(exc).__name__}: {exc}"
            values = set(last.values())
            if (
                len(values) == 1 and isinstance(next(iter(values)), int)
            ) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        for region, value in last.items():
            process = ctx.new_process()
            ctx.history.add("invoke", process, region, "fconverge", key, None)
            if isinstance(value, int):
                ctx.history.add("ok", process, region, "fconverge", key, value)
            else:
                ctx.history.add("fail", process, region, "fconverge", key, None, error=value)

    def checkers(self, ctx: RunContext) -> list[Checker]:
        return [FlagsChecker(initial=0)]
