"""Residency-tagged data through faults: a ``regional`` keyspace and a resident topic.

- A CAS register (the :mod:`register` workload's ops) on a ``regional``
  keyspace allowed in us-east and eu-west, with one partition homed in each
  (made in setup by a first write from its home). Clients in both allowed
  regions run it, so every op on the other region's partition crosses the
  WAN to its home. Checked linearizable per key (Porcupine), as ``global``.
- Events on a topic allowed in eu-west only, published in eu-west.
- ``outside`` ops: ap-south reads and writes the keyspace, us-east and
  ap-south publish on the topic; each must be refused (RESIDENCY_VIOLATION).
- ``residency-check``, once every fault is healed: ``meridian residency
  check``'s inventory of every server, judged
  (:class:`~meridian.chaos.checkers.residency.ResidencyChecker`).
"""

from __future__ import annotations

import asyncio
import itertools
from functools import partial
from typing import Any

from meridian.chaos.checkers import Checker
from meridian.chaos.checkers.linearizable import LinearizableChecker
from meridian.chaos.checkers.refusals import RefusedWritesInvisibleChecker
from meridian.chaos.checkers.residency import ResidencyChecker
from meridian.chaos.workloads.base import (
    KeyspaceSpec,
    RunContext,
    TopicSpec,
    pace,
    record,
)
from meridian.chaos.workloads.register import RegisterWorkload
from meridian.client import Eventual, MeridianClient

KEYSPACE = "chaos_resident"
RESIDENCY = ("us-east", "eu-west")
TOPIC = "chaos-eu"
TOPIC_RESIDENCY = ("eu-west",)
#: Each partition's home: where setup first writes it.
HOMES = {"us": "us-east", "eu": "eu-west"}


class ResidencyWorkload(RegisterWorkload):
    name = "residency"
    keyspaces = (KeyspaceSpec(KEYSPACE, "regional", residency=RESIDENCY),)
    topics = (TopicSpec(TOPIC, TOPIC_RESIDENCY),)

    def __init__(self, keys_per_partition: int = 2, pace_s: float = 0.05) -> None:
        super().__init__(keys=keys_per_partition, clients_per_region=2, pace_s=pace_s)
        self.keyspace = KEYSPACE
        self._events = itertools.count(1)

    def partition(self, ctx: RunContext, short: str) -> str:
        return f"r{ctx.run_id}{short}"

    def keys(self, ctx: RunContext) -> list[str]:
        return [
            f"{self.partition(ctx, short)}.reg{i}" for short in HOMES for i in range(self.n_keys)
        ]

    def writers(self, ctx: RunContext) -> tuple[str, ...]:
        return tuple(r for r in ctx.regions if r in RESIDENCY)

    async def setup(self, ctx: RunContext) -> None:
        """Home each partition in its region: its first write is made there."""
        for short, home in HOMES.items():
            await ctx.clients[home].put(KEYSPACE, f"{self.partition(ctx, short)}.setup", b"0")

    async def run(self, ctx: RunContext, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(super().run(ctx, stop))
            tg.create_task(self._publisher(ctx, stop))
            for region in ctx.regions:
                tg.create_task(self._outsider(ctx, region, stop))

    async def _publisher(self, ctx: RunContext, stop: asyncio.Event) -> None:
        """Resident events, published where they may be."""
        client = ctx.clients[TOPIC_RESIDENCY[0]]
        process = ctx.new_process()
        while not stop.is_set():
            n = next(self._events)
            kind, _ = await record(
                ctx, process, TOPIC_RESIDENCY[0], "publish", f"{TOPIC}.placed", n,
                partial(_publish, client, n, ctx.run_id), has_effect=True,
            )  # fmt: skip
            if kind == "info":
                process = ctx.new_process()
            await pace(ctx, 0.2)

    async def _outsider(self, ctx: RunContext, region: str, stop: asyncio.Event) -> None:
        """Calls a region outside a residency must refuse, whatever the faults."""
        client = ctx.clients[region]
        calls: list[tuple[str, Any]] = []
        if region not in RESIDENCY:
            key = f"{self.partition(ctx, 'eu')}.reg0"
            calls += [
                (f"get {key}", partial(client.get, KEYSPACE, key, consistency=Eventual())),
                (f"put {key}", partial(client.put, KEYSPACE, key, b"outside")),
            ]
        if region not in TOPIC_RESIDENCY:
            calls.append((f"publish {TOPIC}", partial(_publish, client, 0, ctx.run_id)))
        if not calls:
            return
        process = ctx.new_process()
        while not stop.is_set():
            what, call = ctx.rng.choice(calls)
            kind, _ = await record(
                ctx, process, region, "outside", what, None, call, has_effect=True
            )
            if kind == "info":
                process = ctx.new_process()
            await pace(ctx, 0.3)

    async def finish(self, ctx: RunContext) -> None:
        await super().finish(ctx)
        from meridian.residency.check import check_config

        async def check() -> dict[str, Any]:
            inventory, judgement = await check_config(ctx.config)
            return {
                "streams": len(inventory.streams),
                "violations": [v.to_json() for v in judgement.violations],
                "unchecked": list(judgement.unchecked),
            }

        await record(
            ctx, ctx.new_process(), ctx.regions[0], "residency-check", None, None, check,
            has_effect=False, timeout_s=120.0,
        )  # fmt: skip

    def checkers(self, ctx: RunContext) -> list[Checker]:
        prefix = f"r{ctx.run_id}"
        return [
            LinearizableChecker(ctx.out_dir, prefix=prefix),
            RefusedWritesInvisibleChecker(prefix),
            ResidencyChecker(),
        ]


async def _publish(client: MeridianClient, n: int, run_id: str) -> None:
    await client.publish(
        f"{TOPIC}.placed", f"order-{n}", b"{}", event_id=f"{run_id}-{n}-{id(client)}"
    )
