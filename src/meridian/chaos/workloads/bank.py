"""Bank transfers on ``global``: money is conserved, no balance goes negative.

All accounts of the bank live in one ``global`` key as JSON, so every read is
an atomic snapshot and every transfer is one compare-and-set: a STRONG get,
then a put with ``if_revision``. A transfer that would overdraw is refused
(fail) without writing. Readers in every region take snapshots, mostly STRONG,
some BOUNDED: a bounded read may be stale, but a stale snapshot must still
conserve money.

Checked by :class:`~meridian.chaos.checkers.bank.BankChecker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from functools import partial

from meridian.chaos.checkers import Checker
from meridian.chaos.checkers.bank import BankChecker
from meridian.chaos.workloads.base import KeyspaceSpec, Refused, RunContext, pace, record
from meridian.client import Bounded, MeridianClient, ReadConsistency, Strong
from meridian.core.errors import ConflictError

KEYSPACE = "chaos_bank"


def _encode(balances: dict[str, int]) -> bytes:
    return json.dumps(balances, sort_keys=True).encode()


class BankWorkload:
    name = "bank"
    keyspaces = (KeyspaceSpec(KEYSPACE, "global"),)

    def __init__(
        self,
        accounts: int = 5,
        balance: int = 100,
        clients_per_region: int = 2,
        pace_s: float = 0.05,
    ) -> None:
        self.accounts = [f"a{i}" for i in range(accounts)]
        self.balance = balance
        self.clients_per_region = clients_per_region
        self.pace_s = pace_s

    @property
    def total(self) -> int:
        return self.balance * len(self.accounts)

    def key(self, ctx: RunContext) -> str:
        return f"{ctx.run_id}-bank"

    async def setup(self, ctx: RunContext) -> None:
        client = ctx.clients[ctx.regions[0]]
        with contextlib.suppress(ConflictError):  # a retried setup whose first create landed
            await client.create(
                KEYSPACE, self.key(ctx), _encode(dict.fromkeys(self.accounts, self.balance))
            )
        for c in ctx.clients.values():
            await c.get(KEYSPACE, self.key(ctx), consistency=Strong())

    async def run(self, ctx: RunContext, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for region in ctx.regions:
                for i in range(self.clients_per_region):
                    worker = self._transfers if i % 2 == 0 else self._reads
                    tg.create_task(worker(ctx, region, stop))

    async def _snapshot(
        self, client: MeridianClient, key: str, c: ReadConsistency
    ) -> dict[str, int]:
        got = await client.get(KEYSPACE, key, consistency=c)
        return {str(k): int(v) for k, v in json.loads(got.entry.value).items()}

    async def _reads(self, ctx: RunContext, region: str, stop: asyncio.Event) -> None:
        client, key = ctx.clients[region], self.key(ctx)
        process = ctx.new_process()
        while not stop.is_set():
            c: ReadConsistency = Strong() if ctx.rng.random() < 0.7 else Bounded(1.0)
            await record(
                ctx, process, region, "balances", key, None,
                partial(self._snapshot, client, key, c), has_effect=False,
            )  # fmt: skip
            await pace(ctx, self.pace_s)

    async def _transfers(self, ctx: RunContext, region: str, stop: asyncio.Event) -> None:
        client, key = ctx.clients[region], self.key(ctx)
        process = ctx.new_process()
        while not stop.is_set():
            a, b = ctx.rng.sample(self.accounts, 2)
            amount = ctx.rng.randint(1, 20)

            async def transfer(a: str = a, b: str = b, amount: int = amount) -> None:
                got = await client.get(KEYSPACE, key, consistency=Strong())
                balances = {str(k): int(v) for k, v in json.loads(got.entry.value).items()}
                if balances[a] < amount:
                    raise Refused(f"insufficient funds in {a}")
                balances[a] -= amount
                balances[b] += amount
                await client.put(KEYSPACE, key, _encode(balances), if_revision=got.entry.revision)

            kind, _ = await record(
                ctx, process, region, "transfer", key, {"from": a, "to": b, "amount": amount},
                transfer, has_effect=True,
            )  # fmt: skip
            if kind == "info":
                process = ctx.new_process()
            await pace(ctx, self.pace_s)

    async def finish(self, ctx: RunContext) -> None:
        process = ctx.new_process()
        for region, client in ctx.clients.items():
            await record(
                ctx, process, region, "balances", self.key(ctx), None,
                partial(self._snapshot, client, self.key(ctx), Strong()), has_effect=False,
            )  # fmt: skip

    def checkers(self, ctx: RunContext) -> list[Checker]:
        return [BankChecker(self.total, self.accounts, key=self.key(ctx))]
