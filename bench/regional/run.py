"""What a ``regional`` keyspace costs and saves, measured on one sandbox in one run.

Issue text: "a ``regional`` write from its home region ≤ 1.2 x the local
quorum floor + 5 ms (no WAN round trip), bounded reads elsewhere served
locally."

Figure 1, writes. Partition ``home`` of the regional keyspace is first written
from us-east, so it is homed there. Each round, sequentially and one after the
other (which goes first alternates):

- Puts through us-east's agent to that partition (the figure);
- the *local quorum floor*: nats-py JetStream publishes, with the same value
  and the same headers the agent adds, to a stream of the same shape placed in
  us-east's cluster with the same replica count (``agent.regional_replicas``),
  from a connection to us-east's NATS server.

Then, alternating, for context: Puts through us-east's agent to the
``global`` keyspace (a quorum across the WAN) and Puts through eu-west's agent
to the us-east partition (forwarded to the home: one WAN round trip). Goal:
the regional Put's p50 ≤ 1.2 x the floor's p50 + 5 ms. Per round the ratio
and the excess of the p50s; their median and range over the rounds.

Figure 2, reads elsewhere. Each round, from eu-west's agent, BOUNDED(1 s)
Gets of keys of the us-east partition, with a STRONG Get of the same key
every tenth read (the STRONG one must reach the home). Goal: at least 99 %
served ``bounded`` (from eu-west's copy), with a p50 far below the WAN round
trip to the home (taken as under a tenth of it: 7 ms of 70).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.js import JetStreamContext, api

from bench.common import RESULTS, drive, stamp, until
from bench.regional.sandbox import RegionalSandbox
from bench.state.latency import floor_ms, leader_region
from bench.state.report import Report, Row
from bench.state.sandbox import SandboxError
from bench.state.stats import CpuMeter, Summary
from meridian.client import Bounded, MeridianClient, Strong
from meridian.core.errors import MeridianError
from meridian.core.hlc import HybridLogicalClock, SystemClock
from meridian.security.pki import client_ssl
from meridian.state.global_store import HLC_HEADER, REGION_HEADER, bucket_config
from meridian.state.model import regional

T = TypeVar("T")

HOME = "us-east"
OTHER = "eu-west"
PARTITION = "home"
FLOOR_BUCKET = "bench_floor"
VALUE = b"v" * 100

REGIONAL = "regional Put from its home (us-east agent)"
FLOOR = "local quorum floor (nats-py publish, us-east cluster)"
GLOBAL = "global Put from us-east (WAN quorum)"
FORWARDED = "regional Put from eu-west (forwarded to the home)"
BOUNDED = "BOUNDED(1 s) Get from eu-west"
STRONG = "STRONG Get from eu-west"


@dataclass(frozen=True)
class Settings:
    rounds: int = 5
    #: Regional Puts and floor publishes per round (each).
    puts: int = 300
    #: Untimed calls of each path before the first round.
    warmup: int = 30
    #: Global Puts and forwarded Puts per round (each crosses the WAN).
    wan_puts: int = 30
    #: BOUNDED reads per round from eu-west.
    reads: int = 100
    #: STRONG reads per round from eu-west (one every reads / strong_reads).
    strong_reads: int = 10
    #: Distinct keys each path cycles through.
    keys: int = 100
    bounded_s: float = 1.0


@dataclass
class Series:
    """One measured path: latencies (ms) per round, and the calls that failed."""

    name: str
    rounds: list[list[float]] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def all(self) -> list[float]:
        return [x for r in self.rounds for x in r]

    def p50s(self) -> list[float]:
        """The p50 of each round (NaN for a round without a success)."""
        return [Summary.of(r).median for r in self.rounds]

    async def time(self, call: Awaitable[T]) -> T | None:
        """Await ``call``, adding its latency to the current round; None if it failed."""
        t0 = time.perf_counter()
        try:
            got = await call
        except (MeridianError, TimeoutError, nats.errors.Error) as exc:
            self.errors += 1
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
            return None
        self.rounds[-1].append((time.perf_counter() - t0) * 1000)
        return got

    def to_json(self) -> dict[str, Any]:
        s = Summary.of(self.all())
        return {
            "p50_ms": s.median,
            "p90_ms": s.p90,
            "p99_ms": s.p99,
            "n": s.n,
            "per_round_p50_ms": self.p50s(),
            "errors": self.errors,
            "first_error": self.first_error,
        }


@dataclass
class Placement:
    cluster: str
    leader: str
    replicas: int


async def placement(js: JetStreamContext, stream: str) -> Placement:
    info = await js.stream_info(stream)
    c = info.cluster
    if c is None or not c.name or not c.leader:
        raise SandboxError(f"stream {stream} has no cluster or leader yet")
    return Placement(c.name, c.leader, 1 + len(c.replicas or []))


class Floor:
    """The local quorum floor: the agent's JetStream write, without the agent."""

    def __init__(self, js: JetStreamContext, hlc: HybridLogicalClock) -> None:
        self.js = js
        self.hlc = hlc

    async def publish(self, key: str) -> api.PubAck:
        headers = {HLC_HEADER: self.hlc.now().encode(), REGION_HEADER: HOME}
        return await self.js.publish(
            f"$KV.{FLOOR_BUCKET}.{key}", VALUE, headers=headers, timeout=5.0
        )


@dataclass
class Reads:
    """Figure 2's BOUNDED reads: latency by what was served, staleness bounds."""

    served: dict[str, list[float]] = field(default_factory=dict)
    per_round_share: list[float] = field(default_factory=list)
    staleness_s: list[float] = field(default_factory=list)


async def setup(
    sb: RegionalSandbox,
    clients: dict[str, MeridianClient],
    js: JetStreamContext,
    s: Settings,
    report: Report,
) -> None:
    ks, gks = sb.regional.name, sb.keyspace.name
    home, other = clients[HOME], clients[OTHER]

    async def home_put() -> bool:
        await home.put(ks, f"{PARTITION}.first", VALUE)
        return True

    async def put_global(client: MeridianClient) -> bool:
        await client.put(gks, "ready", VALUE)
        return True

    # The partition is homed where it is first written: us-east, before anyone else.
    await until(f"us-east's agent takes a Put to {ks}/{PARTITION}", home_put, 120)
    for region, client in clients.items():
        await until(
            f"{region}'s agent takes a Put to {gks}", functools.partial(put_global, client), 120
        )
    part = await placement(js, regional.stream(ks, PARTITION))
    if part.cluster != HOME:
        raise SandboxError(f"partition {PARTITION} is homed in {part.cluster}, not {HOME}")
    for i in range(s.keys):
        await home.put(ks, f"{PARTITION}.r{i}", VALUE)
    config = bucket_config(
        sb.regional,
        FLOOR_BUCKET,
        "bench.regional: the local quorum floor",
        cluster=HOME,
        replicas=sb.config.agent.regional_replicas,
    )
    await js.add_stream(config)
    floor = await placement(js, config.name or "")
    if (floor.cluster, floor.replicas) != (part.cluster, part.replicas):
        raise SandboxError(f"floor stream placed {floor}, partition {part}")

    # eu-west reads the us-east partition from its own copy once it follows it.
    t0 = time.monotonic()

    async def served_locally() -> bool:
        got = await other.get(ks, f"{PARTITION}.r0", consistency=Bounded(s.bounded_s))
        return got.served == "bounded"

    await until("eu-west serves the us-east partition BOUNDED", served_locally, 120)
    copy_after_s = time.monotonic() - t0
    mirror = await placement(js, regional.mirror(ks, PARTITION, OTHER))
    glob = await placement(js, f"KV_{sb.keyspace.bucket}")
    report.meta["placement"] = {
        "partition": asdict(part),
        "floor_stream": asdict(floor),
        "eu_west_mirror": asdict(mirror),
        "global_bucket": asdict(glob),
        "first_bounded_read_served_locally_after_s": round(copy_after_s, 2),
    }
    print(
        f"  partition {PARTITION}: {part}; floor stream: {floor}; eu-west copy: {mirror}; "
        f"global bucket: {glob}",
        flush=True,
    )


async def measure(sb: RegionalSandbox, report: Report, s: Settings) -> None:
    ks, gks = sb.regional.name, sb.keyspace.name
    hlc = HybridLogicalClock(SystemClock())
    async with AsyncExitStack() as stack:
        clients = {
            r: await stack.enter_async_context(
                MeridianClient(sb.region(r).grpc_address, timeout_s=10, tls=sb.operator)
            )
            for r in sb.config.region_names
        }
        nc = await nats.connect(
            sb.nats_url(HOME), tls=client_ssl(sb.config), name="bench-regional-floor"
        )
        stack.push_async_callback(nc.close)
        js = nc.jetstream(timeout=10)
        print("setting up: partition, floor stream, eu-west's copy ...", flush=True)
        await setup(sb, clients, js, s, report)
        floor = Floor(js, hlc)
        home, other = clients[HOME], clients[OTHER]
        paths = {n: Series(n) for n in (REGIONAL, FLOOR, GLOBAL, FORWARDED, BOUNDED, STRONG)}
        ops: dict[str, Callable[[int], Awaitable[Any]]] = {
            REGIONAL: lambda i: home.put(ks, f"{PARTITION}.w{i % s.keys}", VALUE),
            FLOOR: lambda i: floor.publish(f"w{i % s.keys}"),
            GLOBAL: lambda i: home.put(gks, f"g{i % s.keys}", VALUE),
            FORWARDED: lambda i: other.put(ks, f"{PARTITION}.f{i % s.keys}", VALUE),
            STRONG: lambda i: other.get(ks, f"{PARTITION}.r{i % s.keys}", consistency=Strong()),
        }

        print("warming up ...", flush=True)
        for p in paths.values():
            p.rounds.append([])
        for i in range(s.warmup):
            await paths[REGIONAL].time(ops[REGIONAL](i))
            await paths[FLOOR].time(ops[FLOOR](i))
            await paths[BOUNDED].time(
                other.get(ks, f"{PARTITION}.r{i % s.keys}", consistency=Bounded(s.bounded_s))
            )
        for i in range(max(3, s.warmup // 10)):
            for name in (GLOBAL, FORWARDED, STRONG):
                await paths[name].time(ops[name](i))
        for p in paths.values():
            p.rounds.clear()
            p.errors, p.first_error = 0, ""

        reads = Reads()
        # us-east's agent and NATS server: CPU per regional Put (including the
        # partition's background freshness barriers, a few per second).
        pids = sb.pids()
        meter = CpuMeter({"agent": pids[f"agent:{HOME}"], "nats": pids[f"nats:{HOME}"]})
        cpu_us: dict[str, list[float]] = {"agent": [], "nats": [], "machine": []}
        for r in range(s.rounds):
            for p in paths.values():
                p.rounds.append([])
            load = os.getloadavg()[0]
            # Figure 1: the regional Put and its floor, one after the other.
            pair = (REGIONAL, FLOOR) if r % 2 == 0 else (FLOOR, REGIONAL)
            meter.start()
            for i in range(s.puts):
                for name in pair if i % 2 == 0 else reversed(pair):
                    await paths[name].time(ops[name](i))
            used = meter.stop()
            for who in cpu_us:
                spent = used.processes.get(who)
                if who == "machine" and spent is not None:
                    cpu_us[who].append(spent / used.wall_s)  # cores busy
                elif spent is not None:
                    cpu_us[who].append(spent / s.puts * 1e6)
            # For context: writes that cross the WAN.
            for i in range(s.wan_puts):
                for name in (GLOBAL, FORWARDED) if i % 2 == 0 else (FORWARDED, GLOBAL):
                    await paths[name].time(ops[name](i))
            # Figure 2: BOUNDED reads from eu-west, a STRONG one every so often.
            every = max(1, s.reads // max(1, s.strong_reads))
            local = 0
            for i in range(s.reads):
                k = r * s.reads + i
                key = f"{PARTITION}.r{k % s.keys}"
                got = await paths[BOUNDED].time(
                    other.get(ks, key, consistency=Bounded(s.bounded_s))
                )
                if got is not None:
                    reads.served.setdefault(got.served, []).append(paths[BOUNDED].rounds[-1][-1])
                    if got.served == "bounded":
                        local += 1
                        reads.staleness_s.append(got.staleness_bound_s)
                if (i + 1) % every == 0:
                    await paths[STRONG].time(ops[STRONG](k))
            reads.per_round_share.append(100.0 * local / s.reads)
            reg, flo = Summary.of(paths[REGIONAL].rounds[-1]), Summary.of(paths[FLOOR].rounds[-1])
            print(
                f"  round {r + 1}/{s.rounds} (load {load:.1f}): regional p50 {reg.median:.2f} ms, "
                f"floor {flo.median:.2f} ms (x{reg.median / flo.median:.2f}); global "
                f"{Summary.of(paths[GLOBAL].rounds[-1]).median:.1f} ms; forwarded "
                f"{Summary.of(paths[FORWARDED].rounds[-1]).median:.1f} ms; bounded from "
                f"eu-west {Summary.of(paths[BOUNDED].rounds[-1]).median:.2f} ms, "
                f"{reads.per_round_share[-1]:.0f} % local; strong "
                f"{Summary.of(paths[STRONG].rounds[-1]).median:.1f} ms",
                flush=True,
            )
        glob_after = await placement(js, f"KV_{sb.keyspace.bucket}")
    report.meta.setdefault("placement", {})["global_bucket_after"] = asdict(glob_after)
    report.meta["figure1_cpu"] = {
        "agent_us_per_regional_put": cpu_us["agent"],
        "us_east_nats_us_per_put_and_publish": cpu_us["nats"],
        "machine_cores_busy": cpu_us["machine"],
    }
    report.rows += figure1_rows(sb, paths, report.meta["placement"])
    if cpu_us["agent"]:
        report.notes.append(
            f"figure 1, CPU per round (median, range): us-east agent "
            f"{_spread(cpu_us['agent'], '.0f')} µs per regional Put; us-east nats-server "
            f"{_spread(cpu_us['nats'], '.0f')} µs per Put + publish pair; machine "
            f"{_spread(cpu_us['machine'])} cores busy of {os.cpu_count()}"
        )
    report.rows += figure2_rows(sb, paths, reads, s)
    report.meta["paths"] = {n: p.to_json() for n, p in paths.items()}
    for p in paths.values():
        if p.errors:
            report.notes.append(f"{p.name}: {p.errors} failed calls, first: {p.first_error}")


def _spread(xs: list[float], fmt: str = ".2f") -> str:
    xs = [x for x in xs if x == x]
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}..{max(xs):{fmt}})" if xs else "-"


def figure1_rows(sb: RegionalSandbox, paths: dict[str, Series], where: dict[str, Any]) -> list[Row]:
    reg, flo = paths[REGIONAL], paths[FLOOR]
    r_all, f_all = Summary.of(reg.all()), Summary.of(flo.all())
    limit = 1.2 * f_all.median + 5.0
    # Rounds where every call of a path failed have no p50 and are left out.
    pairs = [(a, b) for a, b in zip(reg.p50s(), flo.p50s(), strict=True) if a == a and b == b]
    ratios = [a / b for a, b in pairs]
    excess = [a - b for a, b in pairs]
    rounds_met = sum(a <= 1.2 * b + 5.0 for a, b in pairs)
    glob = where.get("global_bucket", {})
    leader = leader_region(glob.get("leader", ""))
    followers = [r for r in sb.config.region_names if r != leader]
    wan_floor = floor_ms(sb, HOME, leader, followers) if leader in sb.config.region_names else None
    rtt = sb.rtt_ms(HOME, OTHER)
    return [
        Row("1", REGIONAL, "ms", r_all, baseline_name="floor", baseline_median=f_all.median,
            ratio=r_all.median / f_all.median, goal=f"p50 ≤ 1.2 x floor + 5 = {limit:.2f} ms",
            met=r_all.median <= limit,
            note=f"sequential, alternating with the floor call by call; {reg.errors} failed; "
                 f"per-round p50 {_spread(reg.p50s())} ms; criterion met in {rounds_met} of "
                 f"{len(ratios)} rounds",
            extra={"path": reg.to_json()}),
        Row("1", FLOOR, "ms", f_all,
            note=f"R{where['floor_stream']['replicas']} stream in the {where['floor_stream']['cluster']} "
                 f"cluster (same shape, replicas and cluster as the partition's bucket), the "
                 f"agent's headers and value; per-round p50 {_spread(flo.p50s())} ms",
            extra={"path": flo.to_json()}),
        Row("1", "regional / floor p50, per round", "x", Summary.of(ratios),
            extra={"per_round": ratios}),
        Row("1", "regional - floor p50, per round", "ms", Summary.of(excess),
            goal="≤ 0.2 x floor + 5 ms", met=rounds_met == len(ratios) if ratios else None,
            extra={"per_round": excess}),
        Row("1", GLOBAL, "ms", Summary.of(paths[GLOBAL].all()),
            baseline_name=f"WAN floor, leader {leader or '?'}", baseline_median=wan_floor,
            ratio=Summary.of(paths[GLOBAL].all()).median / wan_floor if wan_floor else None,
            note=f"context; per-round p50 {_spread(paths[GLOBAL].p50s(), '.1f')} ms",
            extra={"path": paths[GLOBAL].to_json()}),
        Row("1", FORWARDED, "ms", Summary.of(paths[FORWARDED].all()),
            baseline_name="RTT eu-west-us-east", baseline_median=rtt,
            ratio=Summary.of(paths[FORWARDED].all()).median / rtt,
            note=f"context; per-round p50 {_spread(paths[FORWARDED].p50s(), '.1f')} ms",
            extra={"path": paths[FORWARDED].to_json()}),
    ]  # fmt: skip


def figure2_rows(
    sb: RegionalSandbox, paths: dict[str, Series], reads: Reads, s: Settings
) -> list[Row]:
    rtt = sb.rtt_ms(OTHER, HOME)
    b = Summary.of(paths[BOUNDED].all())
    n = sum(len(v) for v in reads.served.values())
    local = len(reads.served.get("bounded", []))
    share = 100.0 * local / n if n else 0.0
    fallbacks = reads.served.get("strong", [])
    fell_back = f"p50 {Summary.of(fallbacks).median:.1f} ms" if fallbacks else "none"
    stale = Summary.of(reads.staleness_s).scaled(1000)
    by_served = ", ".join(f"{k} {len(v)}" for k, v in sorted(reads.served.items()))
    strong = Summary.of(paths[STRONG].all())
    return [
        Row("2", BOUNDED, "ms", b, baseline_name="WAN RTT to the home", baseline_median=rtt,
            ratio=b.median / rtt, goal=f"≥ 99 % served bounded, p50 < {rtt / 10:g} ms",
            met=share >= 99.0 and b.median < rtt / 10,
            note=f"{s.rounds} x {s.reads} reads of {s.keys} keys; served: {by_served}; "
                 f"{share:.2f} % bounded; fallbacks to strong: {fell_back}; "
                 f"staleness bound p50 {stale.median:.0f} ms (p90 {stale.p90:.0f}); "
                 f"{paths[BOUNDED].errors} failed",
            extra={"path": paths[BOUNDED].to_json(), "served": {k: len(v) for k, v in reads.served.items()},
                   "staleness_bound_ms": stale.to_json()}),
        Row("2", "share served bounded (eu-west's copy), per round", "%",
            Summary.of(reads.per_round_share), goal="≥ 99 %",
            met=min(reads.per_round_share, default=0) >= 99.0,
            extra={"per_round": reads.per_round_share, "overall": share}),
        Row("2", STRONG, "ms", strong, baseline_name="WAN RTT to the home", baseline_median=rtt,
            ratio=strong.median / rtt,
            note=f"context: a barrier through the home's quorum, then the read; per-round p50 "
                 f"{_spread(paths[STRONG].p50s(), '.1f')} ms",
            extra={"path": paths[STRONG].to_json()}),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.regional", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-port", type=int, default=17500)
    p.add_argument("--rounds", type=int, default=Settings.rounds)
    p.add_argument("--puts", type=int, default=Settings.puts)
    p.add_argument("--wan-puts", type=int, default=Settings.wan_puts)
    p.add_argument("--reads", type=int, default=Settings.reads)
    p.add_argument("--quick", action="store_true", help="2 rounds, a third of the calls")
    p.add_argument("--keep-workdir", action="store_true")
    args = p.parse_args(argv)
    s = Settings(
        rounds=2 if args.quick else args.rounds,
        puts=100 if args.quick else args.puts,
        wan_puts=10 if args.quick else args.wan_puts,
        reads=50 if args.quick else args.reads,
        strong_reads=5 if args.quick else Settings.strong_reads,
    )

    async def run(sb: RegionalSandbox, report: Report) -> None:
        await measure(sb, report, s)

    out: Path = RESULTS / f"regional-{stamp()}.json"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return drive(
        base_port=args.base_port,
        out=out,
        settings=asdict(s),
        measure=run,
        keep_workdir=args.keep_workdir,
        sandbox=RegionalSandbox,
    )
