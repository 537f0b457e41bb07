"""``python -m bench.events``: bring up a sandbox, measure idempotency and events, tear
it down."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import RESULTS, drive, stamp
from bench.events.run import Settings, measure
from bench.state.profile import Profiler


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench-events",
        description="Idempotency and event benchmarks against a fresh three-region sandbox.",
    )
    p.add_argument("--base-port", type=int, default=17000, help="sandbox base port (17000)")
    p.add_argument("--figures", default="1,2,3", help="which figures to measure, e.g. 1,3 (all)")
    p.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    p.add_argument("--rounds", type=int, help="rounds of every figure (figure 1: 4, else 3)")
    p.add_argument("--duration", type=float, help="figure 2: seconds measured per round (10)")
    p.add_argument("--warmup", type=float, help="figure 2: seconds of warm-up per round (3)")
    p.add_argument(
        "--publish-concurrency", type=int, default=64, help="figure 2: publishes in flight (64)"
    )
    p.add_argument(
        "--publish-region", default="us-east", help="figure 2: the agent measured (us-east)"
    )
    p.add_argument(
        "--load-client",
        choices=("native", "python"),
        default="native",
        help="what publishes through the agent in figure 2: the Go load generator in "
        "bench/state/loadgen, or the Python client (native)",
    )
    p.add_argument(
        "--loadgen-procs", type=int, default=1, help="GOMAXPROCS of the native load generator (1)"
    )
    p.add_argument(
        "--lag-samples", type=int, help="figure 3: events per writer and round, 20 ms apart (100)"
    )
    p.add_argument(
        "--nice",
        type=int,
        help="run the benchmark and everything it starts at this niceness, e.g. -10 on a "
        "machine shared with unrelated work (negative needs root)",
    )
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="sample the agent with py-spy during figure 2's first round (via `uv tool run py-spy`)",
    )
    p.add_argument("--out", type=Path, help="JSON results file (bench/results/events-<UTC>.json)")
    p.add_argument(
        "--keep-workdir", action="store_true", help="keep the sandbox's logs after tear-down"
    )
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> Settings:
    s = Settings(
        figures=frozenset(f.strip() for f in args.figures.split(",") if f.strip()),
        publish_region=args.publish_region,
        publish_concurrency=args.publish_concurrency,
        load_client=args.load_client,
        loadgen_procs=args.loadgen_procs,
    )
    if args.quick:
        s = Settings(
            **{
                **s.__dict__,
                "idem_rounds": 2,
                "idem_per_round": 4,
                "idem_warmup": 1,
                "publish_rounds": 2,
                "warmup_s": 1.0,
                "duration_s": 3.0,
                "lag_rounds": 1,
                "lag_samples": 30,
            }
        )
    overrides = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "lag_samples": args.lag_samples,
        "idem_rounds": args.rounds,
        "publish_rounds": args.rounds,
        "lag_rounds": args.rounds,
    }
    return Settings(**{**s.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings(args)
    out = args.out or RESULTS / f"events-{stamp()}.json"
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
