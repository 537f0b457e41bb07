"""The measurements, in order, each turned into report rows with its goal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from bench.common import until as _until
from bench.state import latency, load, native, replication
from bench.state.profile import Profiler
from bench.state.report import Report, Row
from bench.state.sandbox import BenchSandbox
from bench.state.stats import CpuUsage, Summary, Target
from meridian.client import Eventual, MeridianClient, PutItem

READ_KEY = "read-key"
#: Distinct keys a GetMany call of figure 3 reads (its batch size is at most this).
MANY_READ_KEYS = 256
VALUE = b"v" * 100


@dataclass(frozen=True)
class Settings:
    region: str = "us-east"
    figures: frozenset[str] = frozenset({"1", "2", "3", "4", "5"})
    # figure 1
    get_rounds: int = 6
    get_per_round: int = 300
    get_round_budget_s: float = 3.0
    get_warmup_s: float = 1.0
    # figure 2
    put_samples: int = 30
    put_warmup: int = 3
    # figures 3 and 4
    warmup_s: float = 3.0
    duration_s: float = 10.0
    read_processes: int = 2
    read_tasks: int = 16
    write_concurrency: int = 64
    write_regions: tuple[str, ...] = ("us-east", "leader")
    #: Keys per GetMany call, writes per PutMany call (native load generator only).
    many_batch: int = 32
    put_many_batch: int = 16
    #: GetMany calls at once (PutMany keeps write_concurrency writes in flight).
    many_read_calls: int = 4
    #: "native": the Go load generator (bench/state/loadgen) drives the agent in
    #: figures 3 and 4; "python": the Python gRPC clients. The direct baselines are
    #: nats-py either way.
    load_client: str = "native"
    #: GOMAXPROCS of the native load generator.
    loadgen_procs: int = 1
    # figure 5
    lag_samples: int = 100
    lag_interval_s: float = 0.02


def watched(sb: BenchSandbox, region: str) -> dict[str, Target]:
    """Whose CPU is reported: the agent (and its event-loop thread, the main thread),
    the region's two nats-servers, and the WAN emulator."""
    pids = sb.pids()
    names = {
        "agent": f"agent:{region}",
        "nats": f"nats:{region}",
        "nats-global": f"nats:global-{region}",
        "wan": "wan",
    }
    out: dict[str, Target] = {short: pids[full] for short, full in names.items() if full in pids}
    agent = pids[names["agent"]]
    out["agent-loop"] = (agent, agent)
    return out


def agent_pid(sb: BenchSandbox, region: str) -> int:
    return sb.pids()[f"agent:{region}"]


async def wait_ready(sb: BenchSandbox, region: str, timeout_s: float = 180) -> int:
    """Every agent accepts a Put, and ``region``'s agent serves the read key EVENTUAL
    from a synced view. Returns the read key's revision."""
    ks = sb.keyspace.name
    for r in sb.config.region_names:
        async with MeridianClient(sb.region(r).grpc_address, timeout_s=5) as client:

            async def put(client: MeridianClient = client, r: str = r) -> bool:
                await client.put(ks, f"ready-{r}", b"1")
                return True

            await _until(f"agent {r} accepted no Put on {ks!r}", put, timeout_s)
    async with MeridianClient(sb.region(region).grpc_address, timeout_s=5) as client:
        # The keys GetMany reads (READ_KEY-0, -1, ...), written before READ_KEY so
        # that a view serving READ_KEY has them too.
        await client.put_many(
            [PutItem(ks, f"{READ_KEY}-{i}", VALUE) for i in range(MANY_READ_KEYS)]
        )
        revision = await client.put(ks, READ_KEY, VALUE)

        async def synced() -> bool:
            got = await client.get(ks, READ_KEY, consistency=Eventual())
            return got.served == "eventual" and got.entry.revision == revision

        await _until(f"agent {region} did not serve {READ_KEY!r} EVENTUAL", synced, timeout_s)
    return revision


async def handler_time(
    sb: BenchSandbox, region: str, method: str, transport: str = "grpc"
) -> tuple[float, float]:
    """(total seconds, calls) of StateService ``method`` over ``transport``, as the
    agent's own latency histogram counts them: the time inside the agent's handler."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sb.region(region).http_url}/metrics") as resp,
    ):
        text = await resp.text()
    total = calls = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "meridian_api_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("method") != method or labels.get("transport") != transport:
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                calls += sample.value
    return total, calls


def _handler_note(before: tuple[float, float], after: tuple[float, float]) -> str:
    calls = after[1] - before[1]
    if calls <= 0:
        return ""
    mean_ms = (after[0] - before[0]) / calls * 1000
    return f"; mean time inside the agent's handler {mean_ms:.2f} ms (warm-up included)"


def _cpu_json(cpu: CpuUsage, ops: int) -> dict[str, object]:
    return cpu.to_json(ops)


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
                cpu=_cpu_json(p.cpu, len(p.latencies_s)),
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


# -- figure 3 ------------------------------------------------------------------------


def _load_row(
    figure: str, res: load.LoadResult, base: load.LoadResult | None, goal: str, met: bool | None
) -> Row:
    rates = Summary.of(res.slice_rates)
    lat = latency.summary_ms(res.latencies_s)
    base_rates = Summary.of(base.slice_rates) if base else None
    note = (
        f"latency median {lat.median:.2f} ms, p99 {lat.p99:.2f} ms at {res.concurrency} in flight"
    )
    if res.errors:
        note += f"; {res.errors} failed calls, first: {res.first_error[:160]}"
    return Row(
        figure,
        res.name,
        "ops/s",
        rates,
        baseline_name="direct" if base else "",
        baseline_median=base_rates.median if base_rates else None,
        ratio=rates.median / base_rates.median if base_rates and base_rates.median else None,
        goal=goal,
        met=met,
        note=note,
        cpu=_cpu_json(res.cpu, res.ops),
        extra={
            "ops": res.ops,
            "errors": res.errors,
            "mean_rate": res.rate,
            "latency_ms": lat.to_json(),
            "concurrency": res.concurrency,
        },
    )


def _cap_note(res: load.LoadResult) -> str:
    """Little's law: callers in flight / median latency bounds any closed-loop path."""
    lat_s = latency.summary_ms(res.latencies_s).median / 1000
    if not lat_s:
        return ""
    return (
        f"; {res.concurrency} in flight / {lat_s * 1000:.0f} ms per call caps a closed loop at "
        f"~{res.concurrency / lat_s:,.0f}/s"
    )


async def figure3(
    sb: BenchSandbox, s: Settings, profiler: Profiler, loadgen: Path | None
) -> list[Row]:
    rc = sb.region(s.region)
    pids = watched(sb, s.region)
    common = dict(
        key=READ_KEY,
        processes=s.read_processes,
        tasks=s.read_tasks,
        warmup_s=s.warmup_s,
        duration_s=s.duration_s,
        pids=pids,
    )
    direct = await load.read_load_processes(
        "EVENTUAL reads/s, direct nats-py KV get",
        target=sb.nats_url(s.region),
        keyspace=sb.keyspace.bucket,
        mode="nats",
        **common,  # type: ignore[arg-type]
    )
    callers = s.read_processes * s.read_tasks
    runs: list[tuple[str, str, Callable[[], Awaitable[load.LoadResult]]]] = []
    if loadgen is None:
        runs.append(
            (
                "grpc",
                f"EVENTUAL reads/s, one agent, gRPC ({s.read_processes}x{s.read_tasks} "
                "Python callers)",
                lambda: load.read_load_processes(
                    "",
                    target=rc.grpc_address,
                    keyspace=sb.keyspace.name,
                    mode="grpc",
                    **common,  # type: ignore[arg-type]
                ),
            )
        )
    else:
        for transport, mode, target in (
            ("grpc", "grpc-get", rc.grpc_address),
            ("http", "http-get", f"{rc.listen_host}:{rc.http_port}"),
        ):
            runs.append(
                (
                    transport,
                    f"EVENTUAL reads/s, one agent, {'gRPC' if transport == 'grpc' else 'HTTP/JSON'}"
                    f" ({callers} native callers)",
                    lambda mode=mode, target=target: native.closed_loop(  # type: ignore[misc]
                        loadgen,
                        "",
                        mode=mode,
                        target=target,
                        keyspace=sb.keyspace.name,
                        key=READ_KEY,
                        concurrency=callers,
                        connections=s.read_processes,
                        warmup_s=s.warmup_s,
                        duration_s=s.duration_s,
                        pids=pids,
                        procs=s.loadgen_procs,
                    ),
                )
            )
        batch = min(s.many_batch, MANY_READ_KEYS)
        runs.append(
            (
                "grpc",
                f"EVENTUAL reads/s, one agent, gRPC GetMany of {batch} keys, "
                f"{s.many_read_calls} calls at once (native client)",
                lambda: native.closed_loop(
                    loadgen,
                    "",
                    mode="grpc-get-many",
                    target=rc.grpc_address,
                    keyspace=sb.keyspace.name,
                    key=READ_KEY,
                    concurrency=s.many_read_calls,
                    connections=1,
                    warmup_s=s.warmup_s,
                    duration_s=s.duration_s,
                    pids=pids,
                    procs=s.loadgen_procs,
                    batch=batch,
                ),
            )
        )
    drow = _load_row("3", direct, None, "baseline", None)
    drow.note += _cap_note(direct)
    rows = [drow]
    for transport, name, run in runs:
        method = "GetMany" if "GetMany" in name else "Get"
        method_before = await handler_time(sb, s.region, method, transport)
        async with profiler.record(
            agent_pid(sb, s.region),
            f"figure3-reads-{transport}-{method.lower()}",
            s.warmup_s + s.duration_s,
        ):
            agent = await run()
        agent.name = name
        method_after = await handler_time(sb, s.region, method, transport)
        rate = Summary.of(agent.slice_rates).median
        arow = _load_row("3", agent, direct, "≥ 5,000/s per agent process", rate >= 5000)
        arow.note += _handler_note(method_before, method_after)
        rows.append(arow)
    return rows


# -- figure 4 ------------------------------------------------------------------------


async def _agent_writes(
    sb: BenchSandbox, s: Settings, region: str, pids: dict[str, Target], loadgen: Path | None
) -> load.LoadResult:
    ks = sb.keyspace
    if loadgen is not None:
        return await native.closed_loop(
            loadgen,
            f"STRONG writes/s from {region}, agent gRPC Put (native client)",
            mode="grpc-put",
            target=sb.region(region).grpc_address,
            keyspace=ks.name,
            key=f"a-{region}",
            value=VALUE,
            concurrency=s.write_concurrency,
            connections=1,
            warmup_s=s.warmup_s,
            duration_s=s.duration_s,
            pids=pids,
            procs=s.loadgen_procs,
        )
    async with MeridianClient(sb.region(region).grpc_address) as client:

        async def put(key: str, client: MeridianClient = client) -> object:
            return await client.put(ks.name, key, VALUE)

        return await load.closed_loop(
            f"STRONG writes/s from {region}, agent gRPC Put (Python client)",
            load.write_ops(put, f"a-{region}"),
            concurrency=s.write_concurrency,
            warmup_s=s.warmup_s,
            duration_s=s.duration_s,
            pids=pids,
        )


async def _agent_put_many(
    sb: BenchSandbox, s: Settings, region: str, pids: dict[str, Target], loadgen: Path
) -> load.LoadResult:
    calls = max(1, s.write_concurrency // s.put_many_batch)
    res = await native.closed_loop(
        loadgen,
        f"STRONG writes/s from {region}, agent gRPC PutMany of {s.put_many_batch}, {calls} calls "
        "at once (native client)",
        mode="grpc-put-many",
        target=sb.region(region).grpc_address,
        keyspace=sb.keyspace.name,
        key=f"m-{region}",
        value=VALUE,
        concurrency=calls,
        connections=1,
        warmup_s=s.warmup_s,
        duration_s=s.duration_s,
        pids=pids,
        procs=s.loadgen_procs,
        batch=s.put_many_batch,
    )
    res.concurrency = calls * s.put_many_batch  # writes in flight, as for the other paths
    return res


async def figure4(
    sb: BenchSandbox, s: Settings, leader: str, profiler: Profiler, loadgen: Path | None
) -> list[Row]:
    lead = latency.leader_region(leader)
    regions = []
    for r in s.write_regions:
        r = lead if r == "leader" else r
        if r not in regions:
            regions.append(r)
    rows = []
    ks = sb.keyspace
    for region in regions:
        pids = watched(sb, region)
        nc = await nats.connect(sb.nats_url(region), allow_reconnect=False)
        js = nc.jetstream()
        prefix = f"$KV.{ks.bucket}."
        try:

            async def publish(key: str, js: JetStreamContext = js, prefix: str = prefix) -> object:
                return await js.publish(prefix + key, VALUE, timeout=10)

            direct = await load.closed_loop(
                f"STRONG writes/s from {region}, direct nats-py publish",
                load.write_ops(publish, f"d-{region}"),
                concurrency=s.write_concurrency,
                warmup_s=s.warmup_s,
                duration_s=s.duration_s,
                pids=pids,
            )
        finally:
            await nc.close()
        before = await handler_time(sb, region, "Put")
        async with profiler.record(
            agent_pid(sb, region), f"figure4-writes-{region}", s.warmup_s + s.duration_s
        ):
            agent = await _agent_writes(sb, s, region, pids, loadgen)
        after = await handler_time(sb, region, "Put")
        d = Summary.of(direct.slice_rates).median
        need_abs = d >= 1000
        goal = "≥ 0.8x direct and ≥ 1,000/s" if need_abs else "≥ 0.8x direct (direct < 1,000/s)"
        drow = _load_row("4", direct, None, "baseline", None)
        drow.note += _cap_note(direct)
        if not need_abs:
            drow.note += "; the direct path itself is below 1,000/s"
        rows.append(drow)
        paths = [(agent, _handler_note(before, after))]
        if loadgen is not None:
            before = await handler_time(sb, region, "PutMany")
            async with profiler.record(
                agent_pid(sb, region), f"figure4-putmany-{region}", s.warmup_s + s.duration_s
            ):
                many = await _agent_put_many(sb, s, region, pids, loadgen)
            after = await handler_time(sb, region, "PutMany")
            paths.append((many, _handler_note(before, after) + " (per call)"))
        for res, note in paths:
            a = Summary.of(res.slice_rates).median
            met = a >= 0.8 * d and (a >= 1000 or not need_abs)
            arow = _load_row("4", res, direct, goal, met)
            arow.note += note
            rows.append(arow)
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
                    cpu=_cpu_json(pair.cpu, pair.samples),
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
