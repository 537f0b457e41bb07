"""Failover through the gateway: a hinted client loop, a region killed or frozen,
and the time until the client's requests are served elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from bench.common import until
from bench.state.sandbox import BenchSandbox, SandboxError
from meridian.sandbox.processes import ProcessRecord, StateFile

HINT_HEADER = "Meridian-Region"
SERVED_HEADER = "Meridian-Gateway-Region"


@dataclass(frozen=True)
class Settings:
    figures: frozenset[str] = frozenset({"1", "2"})
    rounds: int = 5
    #: The region killed or frozen, and the one every request asks for.
    region: str = "eu-west"
    #: Between two requests of the client loop.
    interval_s: float = 0.01
    #: Client loop before the fault, and after the first rerouted success.
    settle_s: float = 1.0
    after_s: float = 1.0
    #: A client request with no answer by then counts as failed.
    request_timeout_s: float = 10.0
    #: Give up on a round if no request is rerouted by then.
    reroute_timeout_s: float = 60.0


@dataclass(frozen=True)
class Answer:
    """One client request: monotonic send and answer times, HTTP status (0: no answer)."""

    sent: float
    done: float
    status: int
    region: str
    error: str = ""


@dataclass
class RoundResult:
    failover_ms: float
    detection_ms: float | None
    failed: int
    #: Requests sent after the fault that took more than a second (answered or not).
    stuck: int
    requests: int
    #: Kill: from `sandbox up` to the region serving its hinted requests again.
    #: Freeze: from SIGCONT to the same.
    recovery_ms: float | None = None
    errors: list[str] = field(default_factory=list)


class HintedClient:
    """``GET /v1/status`` through the gateway with the hint header every ``interval_s``;
    each request runs on its own, so a stuck one holds up no other."""

    def __init__(self, session: aiohttp.ClientSession, url: str, s: Settings) -> None:
        self.session = session
        self.url = f"{url}/v1/status"
        self.s = s
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Until :meth:`stop`; returns once every request sent has its answer (or failed)."""
        async with asyncio.TaskGroup() as tg:
            next_at = time.monotonic()
            while not self._stop.is_set():
                tg.create_task(self._one())
                next_at += self.s.interval_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _one(self) -> None:
        sent = time.monotonic()
        try:
            async with self.session.get(
                self.url,
                headers={HINT_HEADER: self.s.region},
                timeout=aiohttp.ClientTimeout(total=self.s.request_timeout_s),
            ) as resp:
                body = await resp.read()
                region = resp.headers.get(SERVED_HEADER, "")
                error = "" if resp.status == 200 else body[:200].decode(errors="replace")
                self.answers.append(Answer(sent, time.monotonic(), resp.status, region, error))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.answers.append(Answer(sent, time.monotonic(), 0, "", f"{type(exc).__name__}"))

    async def first(self, accept: Callable[[Answer], bool], timeout_s: float) -> Answer:
        """The earliest answer ``accept`` holds for, waiting up to ``timeout_s`` for one."""
        deadline = time.monotonic() + timeout_s
        while True:
            hits = [a for a in self.answers if accept(a)]
            if hits:
                return min(hits, key=lambda a: a.done)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no such answer within {timeout_s:.0f}s")
            await asyncio.sleep(0.005)


def gateway_url(sb: BenchSandbox) -> str:
    return f"http://127.0.0.1:{sb.config.gateway.port}"


def _records(sb: BenchSandbox) -> dict[str, ProcessRecord]:
    return StateFile(sb.workdir / "sandbox.json").load()


async def served_by(session: aiohttp.ClientSession, sb: BenchSandbox, hint: str) -> str:
    async with session.get(
        f"{gateway_url(sb)}/v1/status",
        headers={HINT_HEADER: hint},
        timeout=aiohttp.ClientTimeout(total=5),
    ) as resp:
        return resp.headers.get(SERVED_HEADER, "") if resp.status == 200 else ""


async def wait_served_by_hint(
    session: aiohttp.ClientSession, sb: BenchSandbox, region: str, timeout_s: float = 120
) -> None:
    async def ok() -> bool:
        try:
            return await served_by(session, sb, region) == region
        except (aiohttp.ClientError, TimeoutError):
            return False

    await until(f"the gateway served no {region}-hinted request from {region}", ok, timeout_s)


async def _went_down_at(
    session: aiohttp.ClientSession, sb: BenchSandbox, region: str
) -> float | None:
    """Wall-clock time the gateway took ``region`` out of rotation; None if it is up."""
    async with session.get(
        f"{gateway_url(sb)}/gateway/status", timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        data: dict[str, Any] = await resp.json()
    for r in data["regions"]:
        if r["region"] == region and not r["up"]:
            return datetime.fromisoformat(r["since"]).timestamp()
    return None


def _summarise(
    client: HintedClient,
    fault_at: float,
    fault_wall: float,
    rerouted: Answer,
    down_at: float | None,
) -> RoundResult:
    after = [a for a in client.answers if a.done > fault_at]
    failed = [a for a in after if a.status != 200]
    stuck = [a for a in client.answers if a.sent >= fault_at and a.done - a.sent > 1.0]
    return RoundResult(
        failover_ms=(rerouted.done - fault_at) * 1000,
        detection_ms=None if down_at is None else (down_at - fault_wall) * 1000,
        failed=len(failed),
        stuck=len(stuck),
        requests=len(client.answers),
        errors=sorted({f"{a.status} {a.error}" for a in failed})[:3],
    )


@contextlib.asynccontextmanager
async def running(client: HintedClient) -> AsyncIterator[HintedClient]:
    """The client loop runs inside the block; on exit it stops and every request ends."""
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        client.stop()
        await task


def _rerouted(s: Settings, fault_at: float) -> Callable[[Answer], bool]:
    return lambda a: a.status == 200 and a.region != s.region and a.done > fault_at


async def kill_round(session: aiohttp.ClientSession, sb: BenchSandbox, s: Settings) -> RoundResult:
    """SIGKILL every process of ``s.region`` under a hinted client loop; then ``sandbox up``."""
    await wait_served_by_hint(session, sb, s.region)
    victims = [r for r in _records(sb).values() if r.region == s.region]
    client = HintedClient(session, gateway_url(sb), s)
    try:
        async with running(client):
            await asyncio.sleep(s.settle_s)
            fault_wall, fault_at = time.time(), time.monotonic()
            for rec in victims:  # what `meridian sandbox kill` does, without its start-up
                os.killpg(rec.pid, signal.SIGKILL)
            rerouted = await client.first(_rerouted(s, fault_at), s.reroute_timeout_s)
            await asyncio.sleep(s.after_s)
        down_at = await _went_down_at(session, sb, s.region)
        result = _summarise(client, fault_at, fault_wall, rerouted, down_at)
    finally:
        # The region comes back the way an operator brings it back.
        restart_at = time.monotonic()
        up = await asyncio.to_thread(sb.cli, "sandbox", "up")
        if up.returncode != 0:
            raise SandboxError(f"sandbox up after the kill exited {up.returncode}: {up.stderr}")
    await wait_served_by_hint(session, sb, s.region)
    result.recovery_ms = (time.monotonic() - restart_at) * 1000
    return result


async def freeze_round(
    session: aiohttp.ClientSession, sb: BenchSandbox, s: Settings
) -> RoundResult:
    """SIGSTOP ``s.region``'s agent under a hinted client loop; then SIGCONT."""
    await wait_served_by_hint(session, sb, s.region)
    agent = _records(sb)[f"agent:{s.region}"]
    client = HintedClient(session, gateway_url(sb), s)
    async with running(client):
        await asyncio.sleep(s.settle_s)
        fault_wall, fault_at = time.time(), time.monotonic()
        os.killpg(agent.pid, signal.SIGSTOP)
        try:
            rerouted = await client.first(_rerouted(s, fault_at), s.reroute_timeout_s)
            await asyncio.sleep(s.after_s)
            down_at = await _went_down_at(session, sb, s.region)
        finally:
            os.killpg(agent.pid, signal.SIGCONT)
            cont_at = time.monotonic()
    result = _summarise(client, fault_at, fault_wall, rerouted, down_at)
    await wait_served_by_hint(session, sb, s.region)
    result.recovery_ms = (time.monotonic() - cont_at) * 1000
    return result


def describe(results: list[RoundResult]) -> dict[str, Any]:
    """Per-round figures for the report's JSON."""
    return {
        "rounds": [
            {
                "failover_ms": round(r.failover_ms, 1),
                "detection_ms": None if r.detection_ms is None else round(r.detection_ms, 1),
                "failed_requests": r.failed,
                "stuck_requests": r.stuck,
                "requests": r.requests,
                "recovery_ms": None if r.recovery_ms is None else round(r.recovery_ms, 1),
                "errors": r.errors,
            }
            for r in results
        ]
    }


def finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]
