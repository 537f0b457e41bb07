"""The measurements, in order, each turned into report rows with its goal."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import until
from bench.events import idem, lag, publish
from bench.state import latency, load, native
from bench.state.agent import agent_pid, handler_time, watched
from bench.state.profile import Profiler
from bench.state.report import Report, Row
from bench.state.sandbox import BenchSandbox
from bench.state.stats import CpuUsage, Summary
from meridian.client import MeridianClient


@dataclass(frozen=True)
class Settings:
    figures: frozenset[str] = frozenset({"1", "2", "3"})
    # figure 1
    idem_rounds: int = 4
    idem_per_round: int = 10
    idem_warmup: int = 3
    # figure 2
    publish_region: str = "us-east"
    publish_rounds: int = 3
    publish_concurrency: int = 64
    publish_connections: int = 2
    #: Events per PublishBatch call (the batch path keeps publish_concurrency in flight).
    publish_batch: int = 32
    warmup_s: float = 3.0
    duration_s: float = 10.0
    #: "native": the Go load generator (bench/state/loadgen) publishes through the
    #: agent; "python": the Python client. The direct baseline is nats-py either way.
    load_client: str = "native"
    loadgen_procs: int = 1
    # figure 3
    lag_rounds: int = 3
    lag_samples: int = 100
    lag_interval_s: float = 0.02


async def wait_ready(sb: BenchSandbox, timeout_s: float = 180) -> None:
    """Every agent accepts a Publish and a Begin + Complete (its event streams and the
    idempotency bucket are set up)."""
    for r in sb.config.region_names:
        async with MeridianClient(sb.region(r).grpc_address, timeout_s=5) as client:

            async def ready(client: MeridianClient = client, r: str = r) -> bool:
                await client.publish("bench.ready", "k", b"1", event_id=f"ready-{uuid.uuid4()}")
                key = f"ready-{r}-{uuid.uuid4()}"
                begun = await client.begin(idem.SCOPE, key, b"{}")
                await client.complete(idem.SCOPE, key, begun.fencing_token, idem.RESPONSE)
                return True

            await until(f"agent {r} accepted no Publish or Begin", ready, timeout_s)


# -- figure 1 ------------------------------------------------------------------------


async def figure1(sb: BenchSandbox, s: Settings) -> list[Row]:
    results, leader, followers, leader_after = await idem.begin_complete(
        sb, rounds=s.idem_rounds, per_round=s.idem_per_round, warmup=s.idem_warmup
    )
    lead = latency.leader_region(leader)
    note_leader = f"{idem.STREAM} leader {leader}, followers {', '.join(followers)}"
    if leader_after != leader:
        note_leader += f", then {leader_after} (leader changed during the run: floor may not apply)"
    rows = []
    for r in results:
        limit = 1.2 * r.floor_ms + 5
        for call, agent_s, direct_name, direct_s in (
            ("Begin", r.begin_s, "direct KV create", r.direct_create_s),
            ("Complete", r.complete_s, "direct KV update", r.direct_update_s),
        ):
            summ = latency.summary_ms(agent_s)
            direct = latency.summary_ms(direct_s)
            rows.append(
                Row(
                    "1",
                    f"{call} from {r.region} (leader {lead})",
                    "ms",
                    summ,
                    baseline_name=f"floor; {direct_name} {direct.median:.1f} ms",
                    baseline_median=r.floor_ms,
                    ratio=summ.median / r.floor_ms if r.floor_ms else None,
                    goal=f"≤ 1.2xfloor+5 = {limit:.0f} ms",
                    met=summ.median <= limit,
                    note=f"{note_leader}; {direct_name} (nats-py, same region, same bucket) "
                    f"median {direct.median:.1f} ms, p10..p90 {direct.p10:.1f}..{direct.p90:.1f}",
                    extra={
                        "region": r.region,
                        "floor_ms": r.floor_ms,
                        "limit_ms": limit,
                        "direct_ms": direct.to_json(),
                    },
                )
            )
        both = latency.summary_ms([b + c for b, c in zip(r.begin_s, r.complete_s, strict=True)])
        rows.append(
            Row(
                "1",
                f"Begin + Complete from {r.region}",
                "ms",
                both,
                baseline_name="2 x floor",
                baseline_median=2 * r.floor_ms,
                ratio=both.median / (2 * r.floor_ms) if r.floor_ms else None,
                goal="diagnostic",
            )
        )
    return rows


# -- figure 2 ------------------------------------------------------------------------


def _rate_row(
    res: load.LoadResult, per_round: list[float], base: Summary | None, goal: str, met: bool | None
) -> Row:
    rates = Summary.of(res.slice_rates)
    lat = latency.summary_ms(res.latencies_s)
    note = (
        f"per-round medians {', '.join(f'{x:,.0f}' for x in per_round)}/s; latency median "
        f"{lat.median:.2f} ms, p99 {lat.p99:.2f} ms at {res.concurrency} in flight"
    )
    if res.errors:
        note += f"; {res.errors} failed calls, first: {res.first_error[:160]}"
    return Row(
        "2",
        res.name,
        "ops/s",
        rates,
        baseline_name="direct" if base else "",
        baseline_median=base.median if base else None,
        ratio=rates.median / base.median if base and base.median else None,
        goal=goal,
        met=met,
        note=note,
        cpu=res.cpu.to_json(res.ops),
        extra={
            "ops": res.ops,
            "errors": res.errors,
            "per_round_median": per_round,
            "latency_ms": lat.to_json(),
            "concurrency": res.concurrency,
        },
    )


def _pool(name: str, runs: list[load.LoadResult]) -> load.LoadResult:
    out = load.LoadResult(name, runs[0].concurrency, sum(r.duration_s for r in runs))
    out.cpu = CpuUsage()
    for r in runs:
        out.ops += r.ops
        out.errors += r.errors
        out.first_error = out.first_error or r.first_error
        out.slice_rates += r.slice_rates
        out.latencies_s += r.latencies_s
        out.cpu.add(r.cpu)
    return out


async def figure2(
    sb: BenchSandbox, s: Settings, loadgen: Path | None, profiler: Profiler
) -> list[Row]:
    region = s.publish_region
    pids = watched(sb, region)
    common = dict(
        concurrency=s.publish_concurrency, warmup_s=s.warmup_s, duration_s=s.duration_s, pids=pids
    )
    paths: dict[str, list[load.LoadResult]] = {"direct": [], "unary": [], "stream": [], "batch": []}
    if loadgen is None:
        del paths["stream"], paths["batch"]

    async def one(path: str) -> load.LoadResult:
        if path == "direct":
            return await publish.direct(sb, region, **common)  # type: ignore[arg-type]
        return await publish.through_agent(
            sb,
            region,
            loadgen=loadgen,
            connections=s.publish_connections,
            loadgen_procs=s.loadgen_procs,
            stream=path == "stream",
            batch=s.publish_batch if path == "batch" else 0,
            **common,  # type: ignore[arg-type]
        )

    before = await handler_time(sb, region, "Publish")
    order = list(paths)
    for r in range(s.publish_rounds):
        # Rotate the order so that no path always runs right after another.
        for path in order[r % len(order) :] + order[: r % len(order)]:
            if r == 0 and path != "direct":  # --py-spy: the first round of each agent path
                async with profiler.record(
                    agent_pid(sb, region), f"figure2-{path}", s.warmup_s + s.duration_s
                ):
                    paths[path].append(await one(path))
            else:
                paths[path].append(await one(path))
    after = await handler_time(sb, region, "Publish")
    pooled = {p: _pool(runs[0].name, runs) for p, runs in paths.items()}
    base = Summary.of(pooled["direct"].slice_rates)
    rows = []
    for path, res in pooled.items():
        per_round = [Summary.of(x.slice_rates).median for x in paths[path]]
        if path == "direct":
            rows.append(_rate_row(res, per_round, None, "baseline", None))
            continue
        rate = Summary.of(res.slice_rates).median
        row = _rate_row(res, per_round, base, "≥ 5,000/s", rate >= 5000)
        calls = after[1] - before[1]
        if path == "batch":
            row.note += f" (latencies are of whole calls of {s.publish_batch} events)"
        if path == "unary" and calls > 0:
            row.note += (
                "; mean time inside the agent's handler "
                f"{(after[0] - before[0]) / calls * 1000:.2f} ms (warm-up included)"
            )
        rows.append(row)
    if loadgen is None:
        rows[
            -1
        ].note += "; PublishStream and PublishBatch not measured (need the native load generator)"
    return rows


# -- figure 3 ------------------------------------------------------------------------


async def figure3(sb: BenchSandbox, s: Settings) -> list[Row]:
    pairs = await lag.delivery_lag(
        sb, rounds=s.lag_rounds, samples=s.lag_samples, interval_s=s.lag_interval_s
    )
    rows = []
    for pair in pairs:
        w, r = pair.writer, pair.reader
        one_way = sb.one_way_ms(w, r)
        limit = one_way + 100
        agent = latency.summary_ms(pair.lag_s[lag.AGENT])
        raw = latency.summary_ms(pair.lag_s[lag.RAW])
        round_p99 = [latency.summary_ms(x).p99 for x in pair.rounds_s[lag.AGENT] if x]
        missing = {p: n for p, n in pair.missing.items() if n}
        met = agent.n > 0 and agent.p99 <= limit and not missing.get(lag.AGENT)
        note = (
            f"p50 {agent.median:.1f} ms, p99 {agent.p99:.1f} ms; per-round p99 "
            f"{', '.join(f'{x:.0f}' for x in round_p99)} ms; raw consumer on EVA_{r}: "
            f"p50 {raw.median:.1f}, p99 {raw.p99:.1f} ms"
        )
        if missing:
            note += "; never arrived: " + ", ".join(f"{p} {n}" for p, n in missing.items())
        if pair.duplicates:
            note += f"; {pair.duplicates} events delivered twice"
        rows.append(
            Row(
                "3",
                f"lag {w}→{r}, agent Publish → group delivery",
                "ms",
                agent,
                baseline_name="raw EVA consumer",
                baseline_median=raw.median,
                ratio=agent.median / raw.median if raw.n and raw.median else None,
                goal=f"p99 ≤ {one_way:.0f}+100 = {limit:.0f} ms",
                met=met,
                note=note,
                extra={
                    "writer": w,
                    "reader": r,
                    "one_way_ms": one_way,
                    "limit_ms": limit,
                    "sent": pair.sent,
                    "missing": pair.missing,
                    "duplicates": pair.duplicates,
                    "raw_ms": raw.to_json(),
                    "round_p99_ms": round_p99,
                },
            )
        )
        rows.append(
            Row(
                "3",
                f"lag {w}→{r}, raw JetStream consumer on EVA_{r}",
                "ms",
                raw,
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
    await wait_ready(sb)
    report.meta["ready_after_s"] = round(time.monotonic() - t0, 1)
    leader, followers = await latency.stream_cluster(sb, s.publish_region, idem.STREAM)
    report.meta["idempotency_stream_leader"] = leader
    report.meta["idempotency_stream_followers"] = followers
    print(f"ready in {report.meta['ready_after_s']}s; {idem.STREAM} leader {leader}", flush=True)

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

    await step("1", "Begin + Complete latency from each region vs floor", lambda: figure1(sb, s))
    loadgen: Path | None = None
    if s.load_client == "native" and "2" in s.figures:
        try:
            loadgen = await asyncio.to_thread(native.build)
        except native.NativeUnavailable as exc:
            report.notes.append(f"native load generator unavailable ({exc}): Python client used")
    report.meta["load_client"] = "native" if loadgen else "python"
    await step(
        "2", "publish throughput of one agent vs direct", lambda: figure2(sb, s, loadgen, profiler)
    )
    await step("3", "cross-region delivery lag, per region pair", lambda: figure3(sb, s))
    report.profiles = profiler.summaries
