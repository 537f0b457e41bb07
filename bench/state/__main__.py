"""``python -m bench.state``: bring up a sandbox, measure the State API, tear it down."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import RESULTS, drive, stamp
from bench.state.agent import Settings
from bench.state.profile import Profiler
from bench.state.run import measure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench-state",
        description="State API benchmarks against a fresh three-region sandbox.",
    )
    p.add_argument("--base-port", type=int, default=16000, help="sandbox base port (16000)")
    p.add_argument(
        "--figures", default="1,2,3,4,5", help="which figures to measure, e.g. 1,3 (all)"
    )
    p.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    p.add_argument("--duration", type=float, help="seconds measured per load run (10)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per load run (3)")
    p.add_argument("--read-processes", type=int, default=2, help="figure 3 load processes (2)")
    p.add_argument("--read-tasks", type=int, default=16, help="figure 3 callers per process (16)")
    p.add_argument("--write-concurrency", type=int, default=64, help="figure 4 in flight (64)")
    p.add_argument(
        "--write-regions",
        default="us-east,leader",
        help="figure 4 writer regions; 'leader' = the stream leader's region (us-east,leader)",
    )
    p.add_argument(
        "--load-client",
        choices=("native", "python"),
        default="native",
        help="what drives the agent in figures 3 and 4: the Go load generator in "
        "bench/state/loadgen, or the Python gRPC clients (native)",
    )
    p.add_argument(
        "--loadgen-procs", type=int, default=1, help="GOMAXPROCS of the native load generator (1)"
    )
    p.add_argument(
        "--nice",
        type=int,
        help="run the benchmark and everything it starts (sandbox, load generators) at this "
        "niceness, e.g. -10 on a machine shared with unrelated work (negative needs root)",
    )
    p.add_argument("--put-samples", type=int, help="figure 2 Puts per region (30)")
    p.add_argument(
        "--lag-samples", type=int, help="figure 5 Puts per writer region, 20 ms apart (100)"
    )
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="sample the agent with py-spy during figures 3 and 4 (via `uv tool run py-spy`)",
    )
    p.add_argument("--out", type=Path, help="JSON results file (bench/results/state-<UTC>.json)")
    p.add_argument(
        "--keep-workdir", action="store_true", help="keep the sandbox's logs after tear-down"
    )
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> Settings:
    s = Settings(
        figures=frozenset(f.strip() for f in args.figures.split(",") if f.strip()),
        read_processes=args.read_processes,
        read_tasks=args.read_tasks,
        write_concurrency=args.write_concurrency,
        write_regions=tuple(r.strip() for r in args.write_regions.split(",") if r.strip()),
        load_client=args.load_client,
        loadgen_procs=args.loadgen_procs,
    )
    if args.quick:
        s = Settings(
            **{
                **s.__dict__,
                "get_rounds": 2,
                "get_per_round": 100,
                "get_round_budget_s": 1.0,
                "get_warmup_s": 0.5,
                "put_samples": 8,
                "warmup_s": 1.0,
                "duration_s": 3.0,
                "lag_samples": 30,
            }
        )
    overrides = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "put_samples": args.put_samples,
        "lag_samples": args.lag_samples,
    }
    return Settings(**{**s.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings(args)
    out = args.out or RESULTS / f"state-{stamp()}.json"
    profiler = Profiler(out.with_suffix("") if args.py_spy else None)
    return drive(
        base_port=args.base_port,
        out=out,
        settings=s.__dict__,
        measure=lambda sb, report: measure(sb, s, profiler, report),
        nice=args.nice,
        keep_workdir=args.keep_workdir,
    )


if __name__ == "__main__":
    sys.exit(main())
