"""Freshness benchmarks: what sound proofs of freshness cost, against the code before them.

Freshness is proven by quorum commits (read barriers, own writes) for
``global`` keyspaces and by each writing region's own stream for
``replicated`` ones (:mod:`meridian.state.model.view`). The *baseline* is the agent
of ``--baseline-rev`` (by default the last commit before that change, which
took a server's report of its last sequence as proof), started from a copy of
that revision's ``src/``. It runs as a second agent of a region, on the same
NATS servers, beside a second agent of this tree started the same way, so the
two compared agents have the same role (the sandbox's own agents keep serving
the other regions). Every figure alternates between the two in the same run.

Figure 1, BOUNDED reads served locally: from each region in turn, rounds of
sequential BOUNDED Gets (``max_staleness`` 1 s) of one key of the ``global``
keyspace and one of the ``replicated`` keyspace, alternating per round between
this tree's agent and the baseline's. Per agent: p50 over the rounds (median
and spread of the per-round p50s) and the share answered at LEVEL_BOUNDED.
Goal: ≥ 95 % BOUNDED, p50 within 0.1 ms of the baseline's.

Figure 2, the bound a ``replicated`` keyspace proves: from each region, EVENTUAL
Gets report the bound the agent can prove; p50 and p95, against the one-way
latency from the farthest writing region + 100 ms.

Figure 4, under write load: while writers in us-east keep ``writers`` STRONG
Puts in flight on other keys of the ``global`` keyspace, BOUNDED(1 s) Gets
from each region, this tree's agent against the baseline's: the share served
BOUNDED (a proof settles only once the change feed has caught up, so a feed
that never catches up would turn every read STRONG) and the p50.

Figure 3, background cost with no client load: the ``global`` keyspace's stream
grows by barriers only, so its sequence gives the quorum writes per second per
agent (goal ≤ one per freshness interval); and each agent's CPU while idle,
this tree's against the baseline's in the same region.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats

from bench.common import REPO, RESULTS, drive, stamp, until
from bench.state.report import Report, Row
from bench.state.sandbox import BenchSandbox, config_text
from bench.state.stats import Summary, proc_cpu_s
from meridian.client import Bounded, Eventual, MeridianClient, Strong
from meridian.core.errors import MeridianError

#: The last commit whose agent proved freshness from a server's report of its
#: last sequence (STREAM.INFO) and replicated sources from JetStream's own
#: source lag: "today" for these figures.
BASELINE_REV = "264df7e"
KEY = "fresh-key"
BOUND_S = 1.0


@dataclass(frozen=True)
class Settings:
    figures: frozenset[str] = frozenset({"1", "2", "3", "4"})
    writers: int = 16
    regions: tuple[str, ...] = ("us-east", "eu-west", "ap-south")
    rounds: int = 6
    round_s: float = 2.0
    bound_samples_s: float = 5.0
    idle_s: float = 10.0
    baseline_rev: str = BASELINE_REV


class ExtraAgent:
    """A second agent for one region, from the source tree ``src``, on ports of its own."""

    def __init__(
        self, sb: BenchSandbox, src: Path, name: str, region: str, grpc: int, http: int
    ) -> None:
        self.name = name
        self.region = region
        self.keyspace = sb.keyspace.name
        self.grpc_address = f"127.0.0.1:{grpc}"
        text = config_text(sb.config.sandbox.base_port)
        text = text.replace(
            f'name = "{region}"\n', f'name = "{region}"\ngrpc_port = {grpc}\nhttp_port = {http}\n'
        )
        self.config = sb.root / f"{name}-{region}.toml"
        self.config.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(src)}
        self.log = (sb.root / f"{name}-{region}.log").open("wb")
        argv = [sys.executable, "-m", "meridian.cli.main", "--config", str(self.config)]
        self.proc = subprocess.Popen(
            [*argv, "agent", "run", "--region", region],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=sb.root,
        )

    async def ready(self) -> None:
        async with MeridianClient(self.grpc_address) as client:

            async def synced() -> bool:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the {self.name} agent exited {self.proc.returncode}")
                got = await client.get(self.keyspace, KEY, consistency=Bounded(BOUND_S))
                return got.served == "bounded"

            await until(f"the {self.name} agent in {self.region} serves BOUNDED", synced, 120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def baseline_src(rev: str) -> Path:
    """``src/`` of ``rev``, extracted from git into a temporary directory."""
    out = Path(tempfile.mkdtemp(prefix="meridian-baseline-"))
    archive = out / "src.tar"
    subprocess.run(
        ["git", "archive", "--format=tar", "-o", str(archive), rev, "src/meridian"],
        cwd=REPO,
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return out / "src"


@contextlib.asynccontextmanager
async def extra_agents(
    sb: BenchSandbox, src: Path, region: str
) -> AsyncIterator[dict[str, ExtraAgent]]:
    """A baseline agent and one of this tree in ``region``: {"baseline": …, "this tree": …}."""
    port = sb.region(region).grpc_port + 20  # free in the region's block of 100 ports
    agents = {
        "baseline": ExtraAgent(sb, src, "baseline", region, port, port + 1),
        "this tree": ExtraAgent(sb, REPO / "src", "tree", region, port + 10, port + 11),
    }
    try:
        for agent in agents.values():
            await agent.ready()
        yield agents
    finally:
        for agent in agents.values():
            agent.stop()


async def _reads(
    address: str, keyspace: str, seconds: float, consistency: Bounded | Eventual
) -> tuple[list[float], list[str], list[float]]:
    """Sequential Gets for ``seconds``: latencies (s), levels served ("error" for a
    failure), bounds reported (s)."""
    lat: list[float] = []
    served: list[str] = []
    bounds: list[float] = []
    async with MeridianClient(address) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                got = await client.get(keyspace, KEY, consistency=consistency)
            except MeridianError:
                served.append("error")
                await asyncio.sleep(0.01)
                continue
            lat.append(time.perf_counter() - t0)
            served.append(got.served)
            bounds.append(got.staleness_bound_s)
    return lat, served, bounds


def _ms(values: list[float]) -> Summary:
    return Summary.of(sorted(v * 1000 for v in values))


async def figures_1_and_2(sb: BenchSandbox, s: Settings, src: Path) -> list[Row]:
    rows: list[Row] = []
    for region in s.regions:
        async with extra_agents(sb, src, region) as extra:
            agents = {name: agent.grpc_address for name, agent in extra.items()}
            if "1" in s.figures:
                for ks in (sb.keyspace.name, sb.replicated.name):
                    p50s: dict[str, list[float]] = {name: [] for name in agents}
                    levels: dict[str, list[str]] = {name: [] for name in agents}
                    for i in range(s.rounds):
                        order = list(agents) if i % 2 == 0 else list(agents)[::-1]
                        for name in order:
                            lat, served, _ = await _reads(
                                agents[name], ks, s.round_s, Bounded(BOUND_S)
                            )
                            if lat:
                                p50s[name].append(statistics.median(lat) * 1000)
                            levels[name] += served
                    rows += _figure1_rows(region, ks, p50s, levels)
            if "2" in s.figures:
                samples: dict[str, list[float]] = {name: [] for name in agents}
                for i in range(2):
                    for name in list(agents) if i == 0 else list(agents)[::-1]:
                        _, _, bounds = await _reads(
                            agents[name], sb.replicated.name, s.bound_samples_s / 2, Eventual()
                        )
                        samples[name] += bounds
                rows += _figure2_rows(sb, region, samples)
    return rows


def _figure1_rows(
    region: str, ks: str, p50s: dict[str, list[float]], levels: dict[str, list[str]]
) -> list[Row]:
    base = statistics.median(p50s["baseline"]) if p50s["baseline"] else None
    rows = []
    for name in ("baseline", "this tree"):
        served = levels[name]
        share = served.count("bounded") / len(served) if served else 0.0
        summ = Summary.of(sorted(p50s[name])) if p50s[name] else None
        ours = name == "this tree"
        met = None
        if ours and summ is not None and base is not None:
            met = share >= 0.95 and summ.median - base <= 0.1
        rows.append(
            Row(
                "1",
                f"{region}: Get BOUNDED(1s) {ks}, {name}",
                "ms (per-round p50)",
                summ,
                baseline_name="baseline" if ours else "",
                baseline_median=base if ours else None,
                ratio=None if not ours or summ is None or not base else summ.median / base,
                goal="≥ 95% BOUNDED, p50 ≤ baseline + 0.1 ms" if ours else "baseline",
                met=met,
                note=f"{share:.1%} BOUNDED, {served.count('strong')} STRONG, "
                f"{served.count('error')} errors of {len(served)}",
            )
        )
    return rows


def _figure2_rows(sb: BenchSandbox, region: str, samples: dict[str, list[float]]) -> list[Row]:
    farthest = max(sb.one_way_ms(r, region) for r in sb.config.region_names)
    goal_ms = farthest + 100
    rows = []
    for name in ("baseline", "this tree"):
        bounds = samples[name]
        summ = _ms(bounds) if bounds else None
        ours = name == "this tree"
        rows.append(
            Row(
                "2",
                f"{region}: bound proven for {sb.replicated.name} (replicated), {name}",
                "ms",
                summ,
                goal=f"≤ {goal_ms:.0f} ms (one-way from the farthest writer + 100 ms)"
                if ours
                else "baseline",
                met=None if not ours or summ is None else summ.median <= goal_ms,
                note=f"{len(bounds)} EVENTUAL reads; RTT to the farthest writer "
                f"{2 * farthest:.0f} ms",
            )
        )
    return rows


async def figure4(sb: BenchSandbox, s: Settings, src: Path) -> list[Row]:
    rows: list[Row] = []
    stop = asyncio.Event()
    written = 0

    async def writer(client: MeridianClient, n: int) -> None:
        nonlocal written
        i = 0
        while not stop.is_set():
            with contextlib.suppress(MeridianError):
                await client.put(sb.keyspace.name, f"load-{n}-{i % 100}", b"w" * 100)
                written += 1
            i += 1

    async with (
        MeridianClient(sb.region("us-east").grpc_address) as load,
        asyncio.TaskGroup() as tg,
    ):
        for n in range(s.writers):
            tg.create_task(writer(load, n))
        try:
            for region in s.regions:
                async with extra_agents(sb, src, region) as extra:
                    agents = {name: agent.grpc_address for name, agent in extra.items()}
                    p50s: dict[str, list[float]] = {name: [] for name in agents}
                    levels: dict[str, list[str]] = {name: [] for name in agents}
                    start_written, t0 = written, time.monotonic()
                    for i in range(s.rounds):
                        order = list(agents) if i % 2 == 0 else list(agents)[::-1]
                        for name in order:
                            lat, served, _ = await _reads(
                                agents[name], sb.keyspace.name, s.round_s, Bounded(BOUND_S)
                            )
                            if lat:
                                p50s[name].append(statistics.median(lat) * 1000)
                            levels[name] += served
                    rate = (written - start_written) / (time.monotonic() - t0)
                    for row in _figure1_rows(region, sb.keyspace.name, p50s, levels):
                        row.figure = "4"
                        row.name += f", {rate:.0f} writes/s"
                        rows.append(row)
        finally:
            stop.set()
    return rows


async def figure3(sb: BenchSandbox, s: Settings, src: Path) -> list[Row]:
    stream = f"KV_{sb.keyspace.bucket}"
    region = s.regions[0]
    pids = sb.pids()
    async with extra_agents(sb, src, region) as extra:
        nc = await nats.connect(sb.nats_url(region))
        try:
            js = nc.jetstream()
            await asyncio.sleep(2.0)  # let the extra agents' start-up settle
            targets = {f"agent:{r}": pids[f"agent:{r}"] for r in sb.config.region_names}
            targets.update({name: agent.proc.pid for name, agent in extra.items()})
            for r in sb.config.region_names:
                targets[f"nats:global-{r}"] = pids[f"nats:global-{r}"]
            cpu0 = {name: proc_cpu_s(pid) for name, pid in targets.items()}
            seq0 = (await js.stream_info(stream)).state.last_seq
            t0 = time.monotonic()
            await asyncio.sleep(s.idle_s)
            seq1 = (await js.stream_info(stream)).state.last_seq
            wall = time.monotonic() - t0
            cpu1 = {name: proc_cpu_s(pid) for name, pid in targets.items()}
        finally:
            await nc.close()
    agents = len(sb.config.region_names) + 1  # and this tree's extra; the baseline writes none
    per_agent = (seq1 - seq0) / wall / agents
    interval = sb.config.agent.freshness_interval_s
    limit = 1 / interval
    cores = {
        name: None if cpu0[name] is None or cpu1[name] is None else (cpu1[name] - cpu0[name]) / wall  # type: ignore[operator]
        for name in targets
    }
    ours = cores["this tree"]
    theirs = cores["baseline"]
    return [
        Row(
            "3",
            f"idle: quorum writes (barriers) per second per agent on {stream}",
            "writes/s",
            Summary.of([per_agent]),
            goal=f"≤ {limit:g}/s (one per {interval:g} s interval)",
            met=per_agent <= limit,
            note=f"{seq1 - seq0} messages in {wall:.1f} s from {agents} agents",
        ),
        Row(
            "3",
            f"idle: agent CPU in {region}, this tree (barriers and probes) vs baseline",
            "cores",
            None if ours is None else Summary.of([ours]),
            baseline_name="baseline",
            baseline_median=theirs,
            ratio=None if ours is None or not theirs else ours / theirs,
            goal="reported",
            note="; ".join(f"{name} {v:.3f}" for name, v in cores.items() if v is not None),
        ),
    ]


async def prepare(sb: BenchSandbox) -> None:
    address = sb.region(sb.config.region_names[0]).grpc_address
    async with MeridianClient(address) as client:

        async def written() -> bool:
            await client.put(sb.keyspace.name, KEY, b"v" * 100)
            await client.put(sb.replicated.name, KEY, b"v" * 100)
            return True

        await until("the keys written", written, 120)
    for region in sb.config.region_names:
        async with MeridianClient(sb.region(region).grpc_address) as client:

            async def fresh(client: MeridianClient = client) -> bool:
                got = await client.get(sb.keyspace.name, KEY, consistency=Strong())
                rep = await client.get(sb.replicated.name, KEY, consistency=Bounded(BOUND_S))
                return bool(got.entry.value) and rep.served == "bounded"

            await until(f"{region} serves both keyspaces", fresh, 120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.freshness", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-port", type=int, default=15000)
    p.add_argument("--figures", default="1,2,3,4", help="comma-separated: 1, 2, 3, 4")
    p.add_argument("--writers", type=int, default=Settings.writers, help="figure 4 Puts in flight")
    p.add_argument("--rounds", type=int, default=Settings.rounds)
    p.add_argument("--baseline-rev", default=BASELINE_REV, help=f"git revision ({BASELINE_REV})")
    p.add_argument("--quick", action="store_true", help="2 rounds of 1 s; one region")
    p.add_argument("--nice", type=int, default=None)
    args = p.parse_args(argv)
    if not re.fullmatch(r"[0-9A-Za-z._/-]{1,80}", args.baseline_rev):
        p.error("--baseline-rev must be a git revision name")
    s = Settings(
        figures=frozenset(args.figures.split(",")),
        rounds=2 if args.quick else args.rounds,
        round_s=1.0 if args.quick else Settings.round_s,
        bound_samples_s=2.0 if args.quick else Settings.bound_samples_s,
        idle_s=4.0 if args.quick else Settings.idle_s,
        regions=("ap-south",) if args.quick else Settings.regions,
        baseline_rev=args.baseline_rev,
        writers=args.writers,
    )
    src = baseline_src(s.baseline_rev)

    async def measure(sb: BenchSandbox, report: Report) -> None:
        report.notes.append(f"baseline: the agent of {s.baseline_rev} ({src})")
        await prepare(sb)
        if s.figures & {"1", "2"}:
            print("figures 1 and 2: BOUNDED reads and proven bounds, per region ...", flush=True)
            report.rows += await figures_1_and_2(sb, s, src)
        if "3" in s.figures:
            print("figure 3: background cost while idle ...", flush=True)
            report.rows += await figure3(sb, s, src)
        if "4" in s.figures:
            print("figure 4: BOUNDED reads under write load ...", flush=True)
            report.rows += await figure4(sb, s, src)

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return drive(
        base_port=args.base_port,
        out=RESULTS / f"freshness-{stamp()}.json",
        settings={**s.__dict__, "figures": sorted(s.figures)},
        measure=measure,
        nice=args.nice,
    )
