"""Health checks of every region's agent, fed into the gateway's :class:`HealthBoard`.

Each region is checked on its own loop: ``GET {agent}/v1/health`` every
``interval_s``, each check bounded by ``timeout_s``. A 200 (SERVING or DEGRADED)
is a success and its round trip feeds the region's moving average; any other
status (the agent's 503 NOT_SERVING), a timeout or a broken connection is a
failure; a connection that cannot be made at all (refused, no route) makes the
region unreachable, which takes it out of rotation at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import aiohttp

from meridian.gateway.metrics import GatewayMetrics
from meridian.gateway.model import HealthBoard, Transition
from meridian.security.tls import ClientTls

log = logging.getLogger(__name__)

Clock = Callable[[], float]
OnTransition = Callable[[Transition], None]


def describe(exc: BaseException) -> str:
    """A one-line account of a client error, for ``last_error`` and logs."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, TimeoutError):
        return f"timed out ({type(exc).__name__})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class HealthChecker:
    """Checks every region in ``targets`` (region → agent base URL) until cancelled.

    ``on_transition`` is called for each region that goes up or down. The
    checker owns no session: the gateway's one keep-alive session is passed in.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        targets: Mapping[str, str],
        board: HealthBoard,
        metrics: GatewayMetrics,
        *,
        interval_s: float,
        timeout_s: float,
        clock: Clock,
        on_transition: OnTransition,
        upstream_tls: ClientTls | None = None,
    ) -> None:
        self.session = session
        self.upstream_tls = upstream_tls
        self.targets = dict(targets)
        self.board = board
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.clock = clock
        self.on_transition = on_transition

    async def check(self, region: str) -> None:
        """One check of ``region``, recorded on the board. Raises only CancelledError."""
        url = f"{self.targets[region]}/v1/health"
        started = self.clock()
        result = "ok"
        transition: Transition | None
        try:
            tls = self.upstream_tls.current() if self.upstream_tls else True
            async with self.session.get(
                url, timeout=self.timeout, allow_redirects=False, ssl=tls
            ) as resp:
                await resp.read()
                status = resp.status
            elapsed_ms = (self.clock() - started) * 1000
            if status == 200:
                transition = self.board.record_success(
                    region, elapsed_ms, self.clock(), started=started
                )
                rtt = self.board.get(region).rtt_ms
                if rtt is not None:
                    self.metrics.region_rtt.labels(region).set(rtt / 1000)
            else:
                result = "unhealthy"
                transition = self.board.record_failure(
                    region, f"health check answered HTTP {status}", self.clock(), started=started
                )
        except aiohttp.ClientConnectorError as exc:
            result = "unreachable"
            transition = self.board.record_unreachable(
                region, describe(exc), self.clock(), started=started
            )
        except TimeoutError as exc:
            result = "timeout"
            transition = self.board.record_failure(
                region, describe(exc), self.clock(), started=started
            )
        except aiohttp.ClientError as exc:
            result = "error"
            transition = self.board.record_failure(
                region, describe(exc), self.clock(), started=started
            )
        self.metrics.health_checks.labels(region, result).inc()
        if transition is not None:
            self.on_transition(transition)

    async def check_all(self) -> None:
        """One check of every region, concurrently."""
        await asyncio.gather(*(self.check(r) for r in self.targets))

    async def run(self) -> None:
        """Check every region every ``interval_s`` until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for region in self.targets:
                tg.create_task(self._loop(region), name=f"gateway-health-{region}")

    async def _loop(self, region: str) -> None:
        while True:
            started = self.clock()
            await self.check(region)
            await asyncio.sleep(max(0.0, self.interval_s - (self.clock() - started)))
