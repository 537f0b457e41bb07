"""Figures 3 and 4: EVENTUAL read and STRONG write throughput of one agent, each
path (unary, HTTP, GetMany, PutMany) against a direct nats-py baseline in the
same run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.js import JetStreamContext

from bench.state import latency, load, native
from bench.state.agent import (
    MANY_READ_KEYS,
    READ_KEY,
    VALUE,
    Settings,
    agent_pid,
    cpu_json,
    handler_note,
    handler_time,
    watched,
)
from bench.state.profile import Profiler
from bench.state.report import Row
from bench.state.sandbox import BenchSandbox
from bench.state.stats import Summary, Target
from meridian.client import MeridianClient

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
        cpu=cpu_json(res.cpu, res.ops),
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
        arow.note += handler_note(method_before, method_after)
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
        paths = [(agent, handler_note(before, after))]
        if loadgen is not None:
            before = await handler_time(sb, region, "PutMany")
            async with profiler.record(
                agent_pid(sb, region), f"figure4-putmany-{region}", s.warmup_s + s.duration_s
            ):
                many = await _agent_put_many(sb, s, region, pids, loadgen)
            after = await handler_time(sb, region, "PutMany")
            paths.append((many, handler_note(before, after) + " (per call)"))
        for res, note in paths:
            a = Summary.of(res.slice_rates).median
            met = a >= 0.8 * d and (a >= 1000 or not need_abs)
            arow = _load_row("4", res, direct, goal, met)
            arow.note += note
            rows.append(arow)
    return rows
