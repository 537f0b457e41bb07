"""The rounds of each figure, turned into report rows with their goals."""

from __future__ import annotations

import aiohttp

from bench.gateway.failover import (
    RoundResult,
    Settings,
    describe,
    finite,
    freeze_round,
    kill_round,
    wait_served_by_hint,
)
from bench.state.report import Report, Row
from bench.state.sandbox import BenchSandbox
from bench.state.stats import Summary

#: The goal of figure 1: every round's failover within this.
GOAL_MS = 2000.0


def _rows(figure: str, what: str, results: list[RoundResult], goal: bool) -> list[Row]:
    failover = Summary.of([r.failover_ms for r in results])
    met = bool(results) and all(r.failover_ms <= GOAL_MS for r in results) if goal else None
    failed = sum(r.failed for r in results)
    requests = sum(r.requests for r in results)
    rows = [
        Row(
            figure,
            f"{what}: fault -> first rerouted success",
            "ms",
            failover,
            goal=f"<= {GOAL_MS:.0f} ms every round" if goal else "",
            met=met,
            note=f"{failed} of {requests} client requests failed over {len(results)} rounds",
            extra=describe(results),
        ),
        Row(
            figure,
            f"{what}: fault -> gateway marks the region down",
            "ms",
            Summary.of(finite([r.detection_ms for r in results])),
        ),
        Row(
            figure,
            f"{what}: client requests failed per round",
            "req",
            Summary.of([float(r.failed) for r in results]),
        ),
        Row(
            figure,
            f"{what}: requests sent after the fault taking > 1 s, per round",
            "req",
            Summary.of([float(r.stuck) for r in results]),
        ),
        Row(
            figure,
            f"{what}: back in rotation "
            + ("(from `sandbox up`)" if figure == "1" else "(from SIGCONT)"),
            "ms",
            Summary.of(finite([r.recovery_ms for r in results])),
        ),
    ]
    return rows


async def measure(sb: BenchSandbox, s: Settings, report: Report) -> None:
    gw = sb.config.gateway
    report.meta["gateway"] = {
        "url": f"http://127.0.0.1:{gw.port}",
        "health_interval_s": gw.health_interval_s,
        "health_timeout_s": gw.health_timeout_s,
        "unhealthy_after": gw.unhealthy_after,
    }
    # No cap on connections: requests stuck behind a frozen agent must not hold up
    # the ones sent after it (aiohttp's default pool stops at 100).
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_served_by_hint(session, sb, s.region)
        if "1" in s.figures:
            kills: list[RoundResult] = []
            for i in range(s.rounds):
                kills.append(await kill_round(session, sb, s))
                print(f"  kill round {i + 1}: {_line(kills[-1])}", flush=True)
            report.rows += _rows("1", f"SIGKILL of {s.region}", kills, goal=True)
        if "2" in s.figures:
            freezes: list[RoundResult] = []
            for i in range(s.rounds):
                freezes.append(await freeze_round(session, sb, s))
                print(f"  freeze round {i + 1}: {_line(freezes[-1])}", flush=True)
            report.rows += _rows("2", f"SIGSTOP of {s.region}'s agent", freezes, goal=False)
            report.notes.append(
                "figure 2 has no goal: a frozen agent still accepts connections, so only the "
                f"health checks take it out: about health_interval_s ({gw.health_interval_s:g} s) "
                f"+ unhealthy_after ({gw.unhealthy_after}) x health_timeout_s "
                f"({gw.health_timeout_s:g} s)"
            )


def _line(r: RoundResult) -> str:
    detection = "-" if r.detection_ms is None else f"{r.detection_ms:.0f} ms"
    return (
        f"failover {r.failover_ms:.0f} ms, detection {detection}, failed {r.failed}, "
        f"stuck {r.stuck} of {r.requests}"
    )
