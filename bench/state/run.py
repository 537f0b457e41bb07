"""The measurements, in order, each turned into report rows with its goal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import until as _until
from bench.state import latency, native, replication
from bench.state.agent import (
    READ_KEY,
    VALUE,
    Settings,
    cpu_json,
    wait_ready,
    watched,
)
from bench.state.profile import Profiler
from bench.state.report import Report, Row
from bench.state.sandbox import BenchSandbox
from bench.state.throughput import figure3, figure4
from meridian.client import MeridianClient

# -- figure 1 ------------------------------------------------------------------------


async def figure1(sb: BenchSandbox, s: Settings) -> list[Row]:
    paths = await latency.eventual_get(
        sb,
        READ_KEY,
        region=s.region,
        rounds=s.get_rounds,
        per_round=s.get_per_round,
        warmup_s=s.get_warmup_s,
        round_budget_s=s.get_round_budget_s,
        pids=watched(sb, s.region),
    )
    base = latency.summary_ms(paths[0].latencies_s)
    rows = []
    # A direct get is answered by any of the three replicas, so most answers cross the
    # WAN. Those under half the shortest RTT to another region came from the local one.
    near = min(sb.rtt_ms(s.region, r) for r in sb.config.region_names if r != s.region) / 2
    local = [x for x in paths[0].latencies_s if x * 1000 < near]
    local_summ = latency.summary_ms(local)
    for i, p in enumerate(paths):
        summ = latency.summary_ms(p.latencies_s)
        ratio = summ.median / base.median
        rows.append(
            Row(
                "1",
                f"Get EVENTUAL, {p.name}",
                "ms",
                summ,
                baseline_name="" if i == 0 else "direct",
                baseline_median=None if i == 0 else base.median,
                ratio=None if i == 0 else ratio,
                goal="baseline" if i == 0 else "≤ 1.0x direct",
                met=None if i == 0 else ratio <= 1.0,
                cpu=cpu_json(p.cpu, len(p.latencies_s)),
                note=(
                    f"{len(local) / len(p.latencies_s):.0%} of direct gets answered by the "
                    f"local replica (< {near:.0f} ms)"
                    if i == 0
                    else f"{summ.median / local_summ.median:.2f}x the direct gets that the "
                    "local replica answered"
                    if local
                    else ""
                ),
            )
        )
        if i == 0 and local:
            rows.append(
                Row(
                    "1",
                    "Get EVENTUAL, direct, local-replica answers only",
                    "ms",
                    local_summ,
                    goal="diagnostic",
                    note="the subset of the direct gets above; not a separate run",
                )
            )
    return rows


# -- figure 2 ------------------------------------------------------------------------


async def figure2(sb: BenchSandbox, s: Settings) -> list[Row]:
    results, before, after = await latency.put_strong(
        sb, samples=s.put_samples, warmup=s.put_warmup, value=VALUE
    )
    rows = []
    for r in results:
        summ = latency.summary_ms(r.latencies_s)
        limit = 1.2 * r.floor_ms + 5
        note = f"stream leader {before}"
        if after != before:
            note += f", then {after} (leader changed during the run: floor may not apply)"
        rows.append(
            Row(
                "2",
                f"Put STRONG from {r.region} (leader {r.leader_region})",
                "ms",
                summ,
                baseline_name="floor",
                baseline_median=r.floor_ms,
                ratio=summ.median / r.floor_ms if r.floor_ms else None,
                goal=f"≤ 1.2xfloor+5 = {limit:.0f} ms",
                met=summ.median <= limit,
                note=note,
                extra={"floor_ms": r.floor_ms, "limit_ms": limit},
            )
        )
    return rows


# -- figure 5 ------------------------------------------------------------------------


async def wait_replicated_ready(sb: BenchSandbox, timeout_s: float = 120) -> None:
    """Every agent accepts a Put on the replicated keyspace."""
    ks = sb.replicated.name
    for r in sb.config.region_names:
        async with MeridianClient(sb.region(r).grpc_address, timeout_s=5) as client:

            async def put(client: MeridianClient = client, r: str = r) -> bool:
                await client.put(ks, f"ready-{r}", b"1")
                return True

            await _until(f"agent {r} accepted no Put on {ks!r}", put, timeout_s)


def _ms(samples_s: list[float]) -> str:
    return f"{latency.summary_ms(samples_s).median:.1f}" if samples_s else "-"


async def figure5(sb: BenchSandbox, s: Settings) -> list[Row]:
    await wait_replicated_ready(sb)
    runs = await replication.replication_lag(
        sb,
        samples=s.lag_samples,
        interval_s=s.lag_interval_s,
        pids=lambda r: watched(sb, r),
    )
    rows = []
    for run in runs:
        for pair in run.pairs:
            w, r = pair.writer, pair.reader
            one_way = sb.one_way_ms(w, r)
            limit = one_way + 50
            arr = pair.arrivals_s
            watch = latency.summary_ms(arr[replication.WATCH])
            core = latency.summary_ms(arr[replication.CORE])
            missing = {p: pair.missing(p) for p in replication.PATHS if pair.missing(p)}
            met = watch.n > 0 and watch.p99 <= limit and not missing.get(replication.WATCH)
            note = (
                f"{watch.median - core.median:+.1f} ms over core NATS at the median; split: Put at {w} → stored in {w}'s stream {_ms(run.stored_s)} ms "
                f"(Put acked after {_ms(run.ack_s)}), JetStream sourcing into {r}'s aggregate "
                f"{_ms(pair.sourcing_s)} ms, aggregate → Watch event {_ms(pair.delivery_s)} ms "
                f"(raw consumer {_ms(pair.raw_delivery_s)}); raw consumers at {r}: "
                f"aggregate {_ms(arr[replication.AGGREGATE])} ms, {w}'s own stream "
                f"(the direct peer feed's path) {_ms(arr[replication.PEER])} ms"
            )
            if missing:
                note += "; never arrived: " + ", ".join(f"{p} {n}" for p, n in missing.items())
            extra = {
                "writer": w,
                "reader": r,
                "one_way_ms": one_way,
                "limit_ms": limit,
                "missing": missing,
                "paths_ms": {p: latency.summary_ms(v).to_json() for p, v in arr.items() if v},
                "put_ack_ms": latency.summary_ms(run.ack_s).to_json(),
                "send_to_stored_at_writer_ms": latency.summary_ms(run.stored_s).to_json(),
                "sourcing_ms": latency.summary_ms(pair.sourcing_s).to_json(),
                "aggregate_to_watch_ms": latency.summary_ms(pair.delivery_s).to_json(),
                "aggregate_to_raw_consumer_ms": latency.summary_ms(pair.raw_delivery_s).to_json(),
            }
            rows.append(
                Row(
                    "5",
                    f"lag {w}→{r}, agent Put → Watch",
                    "ms",
                    watch,
                    baseline_name="core NATS",
                    baseline_median=core.median,
                    ratio=watch.median / core.median if core.n and core.median else None,
                    goal=f"p99 ≤ {one_way:.0f}+50 = {limit:.0f} ms",
                    met=met,
                    note=note,
                    cpu=cpu_json(pair.cpu, pair.samples),
                    extra=extra,
                )
            )
            rows.append(
                Row(
                    "5",
                    f"lag {w}→{r}, core NATS publish",
                    "ms",
                    core,
                    goal="baseline",
                    note=f"one way in the WAN matrix: {one_way:.0f} ms",
                )
            )
    return rows


# -- all -----------------------------------------------------------------------------


async def measure(sb: BenchSandbox, s: Settings, profiler: Profiler, report: Report) -> None:
    await profiler.check()
    if profiler.problem:
        report.notes.append(profiler.problem)
    t0 = time.monotonic()
    await wait_ready(sb, s.region)
    report.meta["ready_after_s"] = round(time.monotonic() - t0, 1)
    leader, followers = await latency.stream_cluster(sb, s.region)
    report.meta["stream_leader"] = leader
    report.meta["stream_followers"] = followers
    print(
        f"ready in {report.meta['ready_after_s']}s; KV_{sb.keyspace.bucket} leader {leader}",
        flush=True,
    )

    async def step(fig: str, title: str, work: Callable[[], Awaitable[list[Row]]]) -> None:
        if fig not in s.figures:
            return
        print(f"figure {fig}: {title} ...", flush=True)
        started = time.monotonic()
        try:
            report.rows += await work()
        except Exception as exc:  # one failed figure must not lose the others
            report.errors.append(f"figure {fig}: {type(exc).__name__}: {exc}")
        print(f"  done in {time.monotonic() - started:.1f}s", flush=True)

    await step("1", "Get EVENTUAL latency, agent vs direct", lambda: figure1(sb, s))
    await step("2", "Put STRONG latency from each region vs floor", lambda: figure2(sb, s))
    loadgen: Path | None = None
    if s.load_client == "native" and s.figures & {"3", "4"}:
        try:
            loadgen = await asyncio.to_thread(native.build)
        except native.NativeUnavailable as exc:
            report.notes.append(f"native load generator unavailable ({exc}): Python clients used")
    report.meta["load_client"] = "native" if loadgen else "python"
    await step(
        "3", "EVENTUAL read throughput of one agent", lambda: figure3(sb, s, profiler, loadgen)
    )
    await step(
        "4",
        "STRONG write throughput, agent vs direct",
        lambda: figure4(sb, s, leader, profiler, loadgen),
    )
    await step(
        "5", "replication lag of a replicated keyspace, per region pair", lambda: figure5(sb, s)
    )
    report.profiles = profiler.summaries
