"""Invocation benchmarks, measured on a fresh sandbox with real test-service processes.

Figure 1, overhead: open-loop POSTs of 1 KiB at ``rate`` per second to one
HTTP test service (``meridian.sandbox.testservice``) in us-east, alternating
in rounds between a direct call to the instance and the same call through the
us-east agent (``/v1/invoke/bench/echo``). Same client, same process, same
payload; the figure is the agent's median and p99 minus the direct ones, per
round, then the median and spread over the rounds.

Figure 2, failover after a region kill, via agent-to-agent calls: the service
runs in eu-west and ap-south only; a client in us-east calls it through the
us-east agent every ``interval`` ms (GET, so one per in-flight call). The
eu-west region (its NATS servers, its agent and its instance) is SIGKILLed;
the figure is the time from the kill to the first success served by ap-south.
The region is brought back between rounds. The gateway's failover is measured
by ``./scripts/bench-gateway``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import RESULTS, drive, stamp, until
from bench.state.report import Report, Row
from bench.state.sandbox import BenchSandbox
from bench.state.stats import Summary
from meridian.sandbox.supervisor import Sandbox

PAYLOAD = b"x" * 1024
SERVICE = "bench"
FAR_SERVICE = "bench-far"


@dataclass(frozen=True)
class Settings:
    figures: frozenset[str] = frozenset({"1", "2"})
    rate: float = 500.0
    duration_s: float = 8.0
    warmup_s: float = 2.0
    rounds: int = 5
    failover_rounds: int = 3
    interval_ms: float = 10.0


class Service:
    """One test-service process."""

    def __init__(
        self,
        sb: BenchSandbox,
        service: str,
        region: str,
        *,
        agent_url: str = "",
        tls_dir: Path | None = None,
    ) -> None:
        """Registered with ``agent_url`` (default: the region's agent), as the
        identity in ``tls_dir`` if the agent is mTLS."""
        cmd = [
            sys.executable, "-m", "meridian.sandbox.testservice",
            "--service", service, "--region", region,
            "--agent", agent_url or sb.region(region).http_url,
            "--ttl", "3", "--check-interval", "0.3",
            *(["--tls-dir", str(tls_dir)] if tls_dir else []),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline() or "{}")
        if "port" not in ready:
            raise RuntimeError(f"test service {service} in {region} did not start")
        self.instance_id: str = ready["instance_id"]
        self.port: int = ready["port"]
        self.region = region

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


async def _served_by(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        await resp.read()
        return resp.headers.get("Meridian-Region", "") if resp.status == 200 else ""


# -- figure 1 ------------------------------------------------------------------


async def open_loop(
    session: aiohttp.ClientSession, url: str, rate: float, warmup_s: float, duration_s: float
) -> tuple[list[float], int]:
    """POST ``PAYLOAD`` at ``rate``/s for warm-up + duration; latencies (s) after the warm-up."""
    latencies: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    measure_from = start + warmup_s
    end = measure_from + duration_s
    n = 0

    async def one() -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=PAYLOAD) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, OSError):
            ok = False
        t1 = time.perf_counter()
        if t0 >= measure_from:
            if ok:
                latencies.append(t1 - t0)
            else:
                errors += 1

    while True:
        due = start + n / rate
        if due >= end:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.gather(*tasks)
    return latencies, errors


@dataclass
class Overhead:
    """Per round, the agent's p50 and p99 minus the direct ones; every sample."""

    added_p50: list[float] = field(default_factory=list)
    added_p99: list[float] = field(default_factory=list)
    direct_ms: list[float] = field(default_factory=list)
    agent_ms: list[float] = field(default_factory=list)
    errors: int = 0


async def overhead_rounds(
    session: aiohttp.ClientSession,
    direct: str,
    via_agent: str,
    *,
    rounds: int,
    rate: float,
    warmup_s: float,
    duration_s: float,
    agent_name: str = "agent",
) -> Overhead:
    """Open-loop rounds alternating between ``direct`` and ``via_agent`` (the
    order swapped every other round), same client and payload."""
    out = Overhead()
    for r in range(rounds):
        order = [("direct", direct), ("agent", via_agent)]
        if r % 2:
            order.reverse()
        got: dict[str, Summary] = {}
        for name, url in order:
            lat, err = await open_loop(session, url, rate, warmup_s, duration_s)
            out.errors += err
            got[name] = Summary.of([x * 1000 for x in lat])
            (out.direct_ms if name == "direct" else out.agent_ms).extend(x * 1000 for x in lat)
        out.added_p50.append(got["agent"].median - got["direct"].median)
        out.added_p99.append(got["agent"].p99 - got["direct"].p99)
        print(
            f"  round {r + 1}: direct p50 {got['direct'].median:.3f} ms p99 "
            f"{got['direct'].p99:.3f}; {agent_name} p50 {got['agent'].median:.3f} p99 "
            f"{got['agent'].p99:.3f}",
            flush=True,
        )
    return out


async def figure1(sb: BenchSandbox, s: Settings) -> list[Row]:
    svc = Service(sb, SERVICE, "us-east")
    try:
        agent = sb.region("us-east").http_url
        via_agent = f"{agent}/v1/invoke/{SERVICE}/echo"
        direct = f"http://127.0.0.1:{svc.port}/echo"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:

            async def reachable() -> bool:
                return await _served_by(session, via_agent) == "us-east"

            await until("the bench service callable through the agent", reachable, 60)
            o = await overhead_rounds(
                session,
                direct,
                via_agent,
                rounds=s.rounds,
                rate=s.rate,
                warmup_s=s.warmup_s,
                duration_s=s.duration_s,
            )
    finally:
        svc.stop()
    added_p50, added_p99, errors = o.added_p50, o.added_p99, o.errors
    direct_all, agent_all = o.direct_ms, o.agent_ms
    p50 = Summary.of(added_p50)
    p99 = Summary.of(added_p99)
    d, a = Summary.of(direct_all), Summary.of(agent_all)
    note = (
        f"{s.rounds} rounds of {s.duration_s:g} s at {s.rate:g}/s, 1 KiB POST; all samples: "
        f"direct p50 {d.median:.3f} ms p99 {d.p99:.3f} ms, through the agent p50 "
        f"{a.median:.3f} ms p99 {a.p99:.3f} ms; {errors} failed calls"
    )
    return [
        Row("1", "added latency at p50 (agent - direct, per round)", "ms", p50,
            baseline_name="direct", baseline_median=d.median, goal="≤ 1.0 ms",
            met=p50.median <= 1.0, note=note,
            extra={"per_round": added_p50, "direct_ms": d.to_json(), "agent_ms": a.to_json()}),
        Row("1", "added latency at p99 (agent - direct, per round)", "ms", p99,
            baseline_name="direct", baseline_median=d.p99, goal="≤ 3 ms",
            met=p99.median <= 3.0, extra={"per_round": added_p99}),
    ]  # fmt: skip


# -- figure 2 ------------------------------------------------------------------


async def figure2(sb: BenchSandbox, s: Settings) -> list[Row]:
    box = Sandbox(sb.config, str(sb.config_path))
    url = f"{sb.region('us-east').http_url}/v1/invoke/{FAR_SERVICE}/echo"
    south = Service(sb, FAR_SERVICE, "ap-south")
    times: list[float] = []
    failed_calls: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            for r in range(s.failover_rounds):
                west = Service(sb, FAR_SERVICE, "eu-west")

                async def via_west(session: aiohttp.ClientSession = session) -> bool:
                    return await _served_by(session, url) == "eu-west"

                await until("us-east routing to eu-west", via_west, 120)
                served: list[tuple[float, str]] = []
                stop = asyncio.Event()

                async def client(session: aiohttp.ClientSession = session) -> None:
                    while not stop.is_set():
                        try:
                            region = await _served_by(session, url)
                        except (aiohttp.ClientError, OSError, TimeoutError):
                            region = ""
                        served.append((time.monotonic(), region))
                        await asyncio.sleep(s.interval_ms / 1000)

                task = asyncio.create_task(client())
                await asyncio.sleep(1.0)
                killed_at = time.monotonic()
                await asyncio.to_thread(box.kill_region, "eu-west")
                west.kill()

                async def rerouted() -> bool:
                    return any(t > killed_at and reg == "ap-south" for t, reg in served)

                await until("a call served by ap-south after the kill", rerouted, 60)
                stop.set()
                await task
                first = min(t for t, reg in served if t > killed_at and reg == "ap-south")
                times.append(first - killed_at)
                failed_calls.append(sum(1 for t, reg in served if t > killed_at and not reg))
                print(
                    f"  round {r + 1}: first rerouted success {1000 * times[-1]:.0f} ms after "
                    f"the kill, {failed_calls[-1]} failed calls",
                    flush=True,
                )
                await asyncio.to_thread(box.up)
    finally:
        south.stop()
    summary = Summary.of([t * 1000 for t in times])
    return [
        Row("2", "failover after a region kill, agent-to-agent (us-east -> eu-west x -> ap-south)",
            "ms", summary, goal="≤ 2000 ms", met=summary.median <= 2000,
            note=f"{s.failover_rounds} rounds, a call every {s.interval_ms:g} ms; failed calls "
                 f"per round {failed_calls}",
            extra={"per_round_ms": [t * 1000 for t in times], "failed_calls": failed_calls}),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.invoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-port", type=int, default=19000)
    p.add_argument("--figures", default="1,2", help="comma-separated: 1 overhead, 2 failover")
    p.add_argument("--rounds", type=int, default=Settings.rounds)
    p.add_argument("--rate", type=float, default=Settings.rate)
    p.add_argument("--duration", type=float, default=Settings.duration_s)
    p.add_argument("--failover-rounds", type=int, default=Settings.failover_rounds)
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 s; 1 failover round")
    p.add_argument("--nice", type=int, default=None)
    args = p.parse_args(argv)
    s = Settings(
        figures=frozenset(args.figures.split(",")),
        rate=args.rate,
        duration_s=3.0 if args.quick else args.duration,
        rounds=2 if args.quick else args.rounds,
        failover_rounds=1 if args.quick else args.failover_rounds,
    )

    async def measure(sb: BenchSandbox, report: Report) -> None:
        if "1" in s.figures:
            print("figure 1: overhead through one agent ...", flush=True)
            report.rows += await figure1(sb, s)
        if "2" in s.figures:
            print("figure 2: failover after a region kill ...", flush=True)
            report.rows += await figure2(sb, s)

    out: Path = RESULTS / f"invoke-{stamp()}.json"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return drive(
        base_port=args.base_port,
        out=out,
        settings=s.__dict__,
        measure=measure,
        nice=args.nice,
    )
