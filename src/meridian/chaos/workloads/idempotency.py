"""Idempotent commands (DESIGN §4): many callers in every region send the same
commands, with shared idempotency keys, through :meth:`MeridianClient.once`.

Keys are numbered by time: every ``key_period_s`` a new key opens, and each
client picks one of the ``window`` newest keys, so every key is sent by several
clients in several regions, concurrently and again after it completed. The
request of a key is fixed (its fingerprint never differs between callers).

The command's effect is one record in the ``global`` keyspace
:data:`KEYSPACE`: ``effect/<key>/<token>`` created with the fencing token the
caller was given, value the caller's region. Its response is ``201`` with body
``"<token>@<region>"``, i.e. it names the effect. The command is written the way
the fencing token is meant to be used:

- it first looks (strong scan of ``effect/<key>/``) for an effect of an earlier
  holder whose Complete never landed (a holder cut off or killed, whose lease
  then ran out) and, if there is one, adopts it: it returns that effect's
  response and creates nothing;
- a create whose outcome is unknown is retried with the same token (a conflict
  then means the earlier attempt landed); if it stays unknown the command
  raises, so ``once`` aborts the key and the next holder's scan decides.

Recorded ops:

- ``command`` (key: the idempotency key; invoke value ``{"request"}``): ok value
  ``{"status", "body", "replayed"}``; fail when the key was held by another
  caller (IN_PROGRESS: this caller ran nothing) or the agent refused the
  request; info otherwise (the command may have run);
- ``effects``, once after heal: ok value ``{key: ["<token>@<region>", ...]}``,
  every effect record found by a strong scan.

Checked by :class:`~meridian.chaos.checkers.effects.ExactlyOnceChecker` (one
effect per key, acknowledged keys have theirs) and
:class:`~meridian.chaos.checkers.effects.SameResponseChecker` (every ok caller
of a key got the identical response, the one naming the key's effect).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meridian.chaos.checkers import Checker
from meridian.chaos.checkers.effects import ExactlyOnceChecker, SameResponseChecker
from meridian.chaos.history import EventType
from meridian.chaos.workloads.base import CERTAIN_FAILURES, KeyspaceSpec, RunContext, pace
from meridian.client import MeridianClient, Strong
from meridian.core.errors import (
    ConflictError,
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    InvalidArgumentError,
    MeridianError,
)
from meridian.idempotency.model import StoredResponse

KEYSPACE = "chaos_effects"
SCOPE = "chaos"
EFFECT_PREFIX = "effect/"


def effect_key(key: str, token: int) -> str:
    return f"{EFFECT_PREFIX}{key}/{token}"


async def effects_of(client: MeridianClient, prefix: str) -> dict[str, list[str]]:
    """``{idempotency key: ["<token>@<region>", ...]}`` under ``effect/<prefix>``, read strongly."""
    out: dict[str, list[str]] = {}
    async for entry in client.scan(KEYSPACE, f"{EFFECT_PREFIX}{prefix}", consistency=Strong()):
        key, _, token = entry.key[len(EFFECT_PREFIX) :].rpartition("/")
        out.setdefault(key, []).append(f"{token}@{entry.value.decode()}")
    for ids in out.values():
        ids.sort(key=lambda i: int(i.split("@")[0]))
    return out


def _uncertain(exc: BaseException) -> bool:
    """True if a failed create may have landed."""
    if isinstance(exc, InvalidArgumentError):
        return False
    return not any(marker in str(exc) for marker in CERTAIN_FAILURES)


class IdempotencyWorkload:
    name = "idempotency"
    keyspaces = (KeyspaceSpec(KEYSPACE, "global"),)

    def __init__(
        self,
        clients_per_region: int = 2,
        key_period_s: float = 0.5,
        window: int = 4,
        pace_s: float = 0.05,
        lease_s: float = 8.0,
        create_attempts: int = 3,
    ) -> None:
        self.clients_per_region = clients_per_region
        self.key_period_s = key_period_s
        self.window = window
        self.pace_s = pace_s
        self.lease_s = lease_s
        self.create_attempts = create_attempts

    def prefix(self, ctx: RunContext) -> str:
        return f"{ctx.run_id}-cmd"

    def request(self, key: str) -> bytes:
        return json.dumps({"order": key, "sku": "A-1", "qty": 1}).encode()

    async def setup(self, ctx: RunContext) -> None:
        # Readiness: every region can Begin/Abort and read the effects strongly.
        for region, client in ctx.clients.items():
            key = f"{ctx.run_id}-ready-{region}-{time.monotonic_ns()}"
            begun = await client.begin(SCOPE, key, b"{}")
            await client.abort(SCOPE, key, begun.fencing_token)
            await effects_of(client, f"{ctx.run_id}-ready")

    async def run(self, ctx: RunContext, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for region in ctx.regions:
                for _ in range(self.clients_per_region):
                    tg.create_task(self._client(ctx, region, stop))

    def _command(
        self, client: MeridianClient, key: str, region: str
    ) -> Callable[[int], Awaitable[StoredResponse]]:
        async def command(token: int) -> StoredResponse:
            earlier = (await effects_of(client, f"{key}/")).get(key)
            if earlier:  # an earlier holder's effect whose Complete never landed
                return StoredResponse(201, earlier[0].encode())
            for attempt in range(1, self.create_attempts + 1):
                try:
                    await client.create(KEYSPACE, effect_key(key, token), region.encode())
                    break
                except ConflictError:
                    if attempt == 1:
                        raise  # nobody else writes our token's record: a real conflict
                    break  # an earlier attempt of ours landed
                except MeridianError as exc:
                    if attempt == self.create_attempts or not _uncertain(exc):
                        raise
            return StoredResponse(201, f"{token}@{region}".encode())

        return command

    async def _client(self, ctx: RunContext, region: str, stop: asyncio.Event) -> None:
        client = ctx.clients[region]
        process = ctx.new_process()
        prefix = self.prefix(ctx)
        while not stop.is_set():
            top = int(ctx.history.now() / 1e9 / self.key_period_s)
            key = f"{prefix}{ctx.rng.randint(max(0, top - self.window + 1), top)}"
            request = self.request(key)
            value: dict[str, Any] = {"request": request.decode()}
            ctx.history.add("invoke", process, region, "command", key, value)
            try:
                result = await asyncio.wait_for(
                    client.once(
                        SCOPE, key, request, self._command(client, key, region),
                        lease_s=self.lease_s,
                    ),
                    30.0,
                )  # fmt: skip
            except asyncio.CancelledError:
                ctx.history.add("info", process, region, "command", key, value, error="cancelled")
                raise
            except Exception as exc:  # classified, never lost
                error = f"{type(exc).__name__}: {exc}"
                certain = isinstance(
                    exc,
                    IdempotencyInProgressError | IdempotencyMismatchError | InvalidArgumentError,
                )
                kind: EventType = "fail" if certain else "info"
                ctx.history.add(kind, process, region, "command", key, value, error=error)
                if kind == "info":
                    process = ctx.new_process()
            else:
                response = {
                    "status": result.response.status,
                    "body": result.response.body.decode(errors="replace"),
                    "replayed": result.replayed,
                }
                ctx.history.add("ok", process, region, "command", key, response)
            await pace(ctx, self.pace_s)

    async def finish(self, ctx: RunContext) -> None:
        """One strong scan of every effect, retried while the cluster settles after heal."""
        process = ctx.new_process()
        client = ctx.clients[ctx.regions[0]]
        ctx.history.add("invoke", process, "", "effects", None, None)
        deadline = time.monotonic() + 90.0
        error = ""
        while time.monotonic() < deadline:
            try:
                found = await effects_of(client, self.prefix(ctx))
            except MeridianError as exc:
                error = str(exc)
                await asyncio.sleep(1.0)
                continue
            ctx.history.add("ok", process, "", "effects", None, found)
            return
        ctx.history.add("fail", process, "", "effects", None, None, error=error)

    def checkers(self, ctx: RunContext) -> list[Checker]:
        prefix = self.prefix(ctx)
        return [ExactlyOnceChecker(prefix), SameResponseChecker(prefix)]
