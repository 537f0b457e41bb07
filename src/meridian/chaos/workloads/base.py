"""What every workload shares: the run context, the protocol, and op recording."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meridian.chaos.checkers import Checker
from meridian.chaos.history import EventType, History
from meridian.client import MeridianClient, Strong
from meridian.config import MeridianConfig
from meridian.core.errors import (
    ClockSkewError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResidencyViolationError,
)


@dataclass(frozen=True)
class KeyspaceSpec:
    """A keyspace a workload needs in the sandbox configuration."""

    name: str
    locality: str  # global | replicated | regional
    conflict: str = "lww"
    #: The regions that may hold it (empty: every region).
    residency: tuple[str, ...] = ()


@dataclass(frozen=True)
class TopicSpec:
    """A resident topic a workload needs declared (``[[topic]]``)."""

    name: str
    residency: tuple[str, ...]


@dataclass
class RunContext:
    """Everything a workload touches during a run."""

    config: MeridianConfig
    history: History
    clients: dict[str, MeridianClient]
    out_dir: Path
    run_id: str
    rng: random.Random = field(default_factory=random.Random)
    _processes: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def regions(self) -> tuple[str, ...]:
        return self.config.region_names

    def new_process(self) -> int:
        """A fresh process number (a client after an info op must take a new one)."""
        return next(self._processes)


class Workload(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def keyspaces(self) -> tuple[KeyspaceSpec, ...]: ...

    async def setup(self, ctx: RunContext) -> None:
        """Create the initial state; raises while the sandbox is not ready (retried)."""

    async def run(self, ctx: RunContext, stop: asyncio.Event) -> None:
        """Run clients until ``stop`` is set, recording every op in ``ctx.history``."""

    async def finish(self, ctx: RunContext) -> None:
        """After every fault is healed: final reads (convergence, balances)."""

    def checkers(self, ctx: RunContext) -> list[Checker]: ...


class Refused(Exception):
    """The op decided not to act (e.g. a CAS whose expected value was not there): a fail."""


#: Error texts that prove a write was never applied. The agent's error codes do not
#: say so (QUORUM_UNAVAILABLE covers both "no leader answered" and "no answer in
#: time"), so the text is matched: "the write was not applied" is a CAS the leader
#: refused with no committed winner, "no JetStream leader is reachable" is NATS's
#: no-responders (nobody received the write), the others mean no agent was reached.
CERTAIN_FAILURES = (
    "the write was not applied",
    "no JetStream leader is reachable",
    "failed to connect",
    "Connection refused",
)


def outcome(exc: BaseException, *, has_effect: bool) -> EventType:
    """fail if ``exc`` proves the op did not take effect, info if it may have.

    Reads have no effect, so any error is a fail. A write fails for certain
    only when the agent refused it (conflict, bad input, clock skew) or the
    client never reached an agent; a timeout or a lost quorum may hide a write
    that committed.
    """
    if not has_effect:
        return "fail"
    if isinstance(
        exc,
        Refused
        | ConflictError
        | InvalidArgumentError
        | ClockSkewError
        | ResidencyViolationError
        | PermissionDeniedError,
    ):
        return "fail"  # the agent refused before doing anything
    if isinstance(exc, NotFoundError):
        return "fail"
    text = str(exc)
    if any(marker in text for marker in CERTAIN_FAILURES):
        return "fail"
    return "info"


async def record(
    ctx: RunContext,
    process: int,
    region: str,
    f: str,
    key: str | None,
    value: Any,
    call: Callable[[], Awaitable[Any]],
    *,
    has_effect: bool,
    timeout_s: float = 15.0,
    invoke_at: int | None = None,
) -> tuple[EventType, Any]:
    """Record ``invoke``, run ``call``, record its completion; return (type, ok value).

    ``call`` returns the value to record on ok (None keeps the invoke's value).
    The timeout is a hang guard behind the client's own deadline. ``invoke_at``
    backdates the invoke, for an op that did some work before its value was known.
    """
    ctx.history.add("invoke", process, region, f, key, value, at=invoke_at)
    try:
        result = await asyncio.wait_for(call(), timeout_s)
    except asyncio.CancelledError:
        ctx.history.add("info", process, region, f, key, value, error="cancelled")
        raise
    except Exception as exc:  # every failure is classified, never lost
        kind = outcome(exc, has_effect=has_effect)
        ctx.history.add(kind, process, region, f, key, value, error=f"{type(exc).__name__}: {exc}")
        return kind, None
    ctx.history.add("ok", process, region, f, key, value if result is None else result)
    return "ok", result


async def pace(ctx: RunContext, mean_s: float) -> None:
    await asyncio.sleep(ctx.rng.uniform(0, 2 * mean_s))


async def strong_reads_ready(ctx: RunContext, keyspace: str) -> None:
    """Return once every region reads ``keyspace`` strongly (a probe key that is
    absent); raises while one cannot (setup is retried)."""
    for client in ctx.clients.values():
        with contextlib.suppress(NotFoundError):
            await client.get(keyspace, f"{ctx.run_id}-probe", consistency=Strong())
