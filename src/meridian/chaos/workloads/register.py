"""CAS register on ``global``: a few keys, each an integer register.

Clients in every region run, at random:

- ``read``: a STRONG get; ok value the integer, or null if the key is absent;
- ``write``: a put of a value never written before;
- ``cas``: a STRONG get, then a put with ``if_revision`` of that read (or a
  create if the key was absent). Recorded as ``cas [from, to]`` with ``from``
  the value the get saw; if the put loses the race it fails (ConflictError), so
  an acknowledged cas replaced exactly ``from``: every write changes the
  revision, and the revision did not change between the get and the put.

Checked by :class:`~meridian.chaos.checkers.linearizable.LinearizableChecker`
(Porcupine) and, to pinpoint one way of failing it,
:class:`~meridian.chaos.checkers.refusals.RefusedWritesInvisibleChecker`. A
timeout is info, never fail.
"""

from __future__ import annotations

import asyncio
import itertools
from functools import partial

from meridian.chaos.checkers import Checker
from meridian.chaos.checkers.linearizable import LinearizableChecker
from meridian.chaos.checkers.refusals import RefusedWritesInvisibleChecker
from meridian.chaos.history import EventType
from meridian.chaos.workloads.base import (
    KeyspaceSpec,
    RunContext,
    pace,
    record,
    strong_reads_ready,
)
from meridian.client import MeridianClient, Strong
from meridian.core.errors import NotFoundError

KEYSPACE = "chaos_register"


class RegisterWorkload:
    name = "register"
    keyspaces = (KeyspaceSpec(KEYSPACE, "global"),)

    def __init__(
        self,
        keys: int = 3,
        clients_per_region: int = 2,
        pace_s: float = 0.05,
        *,
        keyspace: str = KEYSPACE,
    ) -> None:
        self.keyspace = keyspace
        self.n_keys = keys
        self.clients_per_region = clients_per_region
        self.pace_s = pace_s
        self._values = itertools.count(1)

    def keys(self, ctx: RunContext) -> list[str]:
        return [f"{ctx.run_id}-reg{i}" for i in range(self.n_keys)]

    async def setup(self, ctx: RunContext) -> None:
        await strong_reads_ready(ctx, self.keyspace)

    def writers(self, ctx: RunContext) -> tuple[str, ...]:
        """The regions whose clients run the register."""
        return ctx.regions

    async def run(self, ctx: RunContext, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for region in self.writers(ctx):
                for _ in range(self.clients_per_region):
                    tg.create_task(self._client(ctx, region, stop))

    async def _client(self, ctx: RunContext, region: str, stop: asyncio.Event) -> None:
        client = ctx.clients[region]
        process = ctx.new_process()
        keys = self.keys(ctx)
        while not stop.is_set():
            key = ctx.rng.choice(keys)
            roll = ctx.rng.random()
            if roll < 0.5:
                kind, _ = await record(
                    ctx, process, region, "read", key, None,
                    partial(_read, client, self.keyspace, key), has_effect=False,
                )  # fmt: skip
            elif roll < 0.75:
                value = next(self._values)
                kind, _ = await record(
                    ctx, process, region, "write", key, value,
                    partial(client.put, self.keyspace, key, str(value).encode()),
                    has_effect=True,
                )  # fmt: skip
            else:
                kind = await self._cas(ctx, client, process, region, key)
            if kind == "info":
                process = ctx.new_process()
            await pace(ctx, self.pace_s)

    async def _cas(
        self, ctx: RunContext, client: MeridianClient, process: int, region: str, key: str
    ) -> EventType:
        # ``from`` is only known once the get returns, so the invoke is recorded
        # then, backdated to when the cas began.
        to = next(self._values)
        invoke_at = ctx.history.now()
        try:
            got = await client.get(self.keyspace, key, consistency=Strong())
            current: int | None = int(got.entry.value)
            revision: int | None = got.entry.revision
        except NotFoundError:
            current, revision = None, None
        except Exception as exc:  # nothing was written: the cas was never attempted
            ctx.history.add("invoke", process, region, "cas", key, [None, to], at=invoke_at)
            ctx.history.add("fail", process, region, "cas", key, [None, to], error=f"get: {exc}")
            return "fail"

        async def put() -> None:
            if revision is None:
                await client.create(self.keyspace, key, str(to).encode())
            else:
                await client.put(self.keyspace, key, str(to).encode(), if_revision=revision)

        kind, _ = await record(
            ctx, process, region, "cas", key, [current, to], put,
            has_effect=True, invoke_at=invoke_at,
        )  # fmt: skip
        return kind

    def checkers(self, ctx: RunContext) -> list[Checker]:
        prefix = f"{ctx.run_id}-reg"
        return [
            LinearizableChecker(ctx.out_dir, prefix=prefix),
            RefusedWritesInvisibleChecker(prefix),
        ]

    async def finish(self, ctx: RunContext) -> None:
        # One last strong read of every key from every region.
        process = ctx.new_process()
        for region in self.writers(ctx):
            client = ctx.clients[region]
            for key in self.keys(ctx):
                await record(
                    ctx, process, region, "read", key, None,
                    partial(_read, client, self.keyspace, key), has_effect=False,
                )  # fmt: skip


async def _read(client: MeridianClient, keyspace: str, key: str) -> int | None:
    try:
        got = await client.get(keyspace, key, consistency=Strong())
    except NotFoundError:
        return None
    return int(got.entry.value)
