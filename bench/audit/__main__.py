"""What the audit log can take from one agent (issue 16: >= 2,000 entries/s,
and an audited admin call's p50 added latency <= 1 global write).

Runs a real three-server ``global`` JetStream cluster on loopback (no WAN
delay) and the agent's own audit component (:class:`~meridian.audit.store.AuditLog`)
on one connection, as an agent runs it: batched, pipelined appends to the R3
stream with ``deny_delete``/``deny_purge``, its tree following the stream.

1. **Throughput**: ``--entries`` denials queued as fast as the caller can
   (``record_nowait``), timed until the stream holds them all; entries/s.
2. **Latency under load**: while denials keep arriving at ``--rate`` per
   second, ``--admin`` admin changes one after another (``await record``),
   each timed; the baseline in the same run is a global write (a KV put to
   an R3 bucket in the same cluster), timed the same way. The figure is the
   ratio of the p50s.

Each measurement is repeated ``--runs`` times; the report gives the median
and the range and writes ``bench/results/audit-<UTC>.json``.

    uv run --frozen python -m bench.audit [--entries 20000] [--rate 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from nats.js import api

from bench.common import RESULTS, stamp
from meridian.audit import AuditEntry
from meridian.audit.store import ENTRIES_STREAM, AuditLog
from meridian.backbone.connection import BackboneConnection
from meridian.core.errors import UnavailableError
from meridian.core.hlc import HybridLogicalClock, SystemClock
from meridian.testing.nats_server import NatsCluster


def entry(
    hlc: HybridLogicalClock, action: str = "state:write", decision: str = "deny"
) -> AuditEntry:
    return AuditEntry(
        request_id=uuid.uuid4().hex,
        principal="spiffe://meridian.local/service/inventory",
        action=action,
        resource='Keyspace::"orders"',
        decision=decision,
        region="us-east",
        hlc=hlc.now().encode(),
        detail={"key": "o-1"},
    )


async def stored(conn: BackboneConnection) -> int:
    info = await conn.jetstream(5).stream_info(ENTRIES_STREAM)
    return int(info.state.last_seq)


async def throughput(
    log: AuditLog, conn: BackboneConnection, hlc: HybridLogicalClock, n: int
) -> float:
    start_seq = await stored(conn)
    entries = [entry(hlc) for _ in range(n)]
    t0 = time.perf_counter()
    for e in entries:
        log.record_nowait(e)
        if log._queue.qsize() > 10_000:  # the caller backs off rather than dropping
            await asyncio.sleep(0.001)
    # Polled: the figure is when the stream holds them, which only the server says.
    while await stored(conn) < start_seq + n:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return n / (time.perf_counter() - t0)


async def latencies(
    log: AuditLog, conn: BackboneConnection, hlc: HybridLogicalClock, rate: float, count: int
) -> tuple[list[float], list[float]]:
    """(admin record latencies, global write latencies) in seconds, under load."""
    js = conn.jetstream(5)
    kv = await js.create_key_value(
        api.KeyValueConfig(bucket="bench_audit_baseline", replicas=3, history=1)
    )
    stop = asyncio.Event()

    async def load() -> None:
        interval = 1 / rate
        next_at = time.perf_counter()
        while not stop.is_set():
            log.record_nowait(entry(hlc))
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    loader = asyncio.create_task(load())
    admin: list[float] = []
    write: list[float] = []
    try:
        await asyncio.sleep(1.0)
        for i in range(count):  # alternate, so both see the same load
            t0 = time.perf_counter()
            await log.record(entry(hlc, "admin:policies", "permit"))
            admin.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await kv.put(f"k{i % 100}", b"x" * 200)
            write.append(time.perf_counter() - t0)
    finally:
        stop.set()
        await loader
    return admin, write


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with NatsCluster("global") as cluster:
        conn = BackboneConnection(cluster.urls, name="bench-audit")
        await conn.connect()
        hlc = HybridLogicalClock(SystemClock())
        log = AuditLog(
            conn,
            region="us-east",
            trust_domain="meridian.local",
            keys_dir=None,
            replicas=3,
            timeout_s=5.0,
            checkpoint_interval_s=5.0,
            hlc=hlc,
        )
        rates: list[float] = []
        ratios: list[float] = []
        admin_p50: list[float] = []
        write_p50: list[float] = []
        try:
            async with log:
                for _ in range(300):  # until the component has made its streams
                    try:
                        await log.record(entry(hlc))
                        break
                    except UnavailableError:
                        await asyncio.sleep(0.1)
                await throughput(log, conn, hlc, 1000)  # warm up
                for _ in range(args.runs):
                    rates.append(await throughput(log, conn, hlc, args.entries))
                for _ in range(args.runs):
                    admin, write = await latencies(log, conn, hlc, args.rate, args.admin)
                    admin_p50.append(pct(admin, 0.5) * 1e3)
                    write_p50.append(pct(write, 0.5) * 1e3)
                    ratios.append(pct(admin, 0.5) / pct(write, 0.5))
        finally:
            await conn.aclose()
    return {
        "entries": args.entries,
        "rate": args.rate,
        "admin_calls": args.admin,
        "runs": args.runs,
        "dropped": log.dropped,
        "entries_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
        "admin_p50_ms": {
            "median": statistics.median(admin_p50),
            "min": min(admin_p50),
            "max": max(admin_p50),
        },
        "global_write_p50_ms": {
            "median": statistics.median(write_p50),
            "min": min(write_p50),
            "max": max(write_p50),
        },
        "admin_over_write_p50": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--admin", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"audit-{stamp()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    e, a, w, r = (
        report["entries_per_s"],
        report["admin_p50_ms"],
        report["global_write_p50_ms"],
        report["admin_over_write_p50"],
    )
    print(f"appends: {e['median']:.0f} entries/s ({e['min']:.0f}-{e['max']:.0f})")
    print(
        f"admin call p50 under {args.rate:.0f}/s: {a['median']:.2f} ms ({a['min']:.2f}-{a['max']:.2f}); "
        f"global write p50 {w['median']:.2f} ms; ratio {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
    )
    print(f"dropped: {report['dropped']}; written to {path}")


if __name__ == "__main__":
    main()
