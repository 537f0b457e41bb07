"""``python -m bench.gateway``: bring up a sandbox, measure failover through the gateway,
tear it down."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import RESULTS, drive, stamp
from bench.gateway.failover import Settings
from bench.gateway.run import measure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench-gateway",
        description="Failover through the gateway after a region kill, in a fresh sandbox.",
    )
    p.add_argument("--base-port", type=int, default=18000, help="sandbox base port (18000)")
    p.add_argument("--figures", default="1,2", help="1: region SIGKILL, 2: agent SIGSTOP (1,2)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of each figure (5)")
    p.add_argument("--region", default="eu-west", help="the region killed and hinted (eu-west)")
    p.add_argument("--interval-ms", type=float, default=10.0, help="between client requests (10)")
    p.add_argument(
        "--nice",
        type=int,
        help="run the benchmark and everything it starts at this niceness (negative needs root)",
    )
    p.add_argument("--out", type=Path, help="JSON results file (bench/results/gateway-<UTC>.json)")
    p.add_argument(
        "--keep-workdir", action="store_true", help="keep the sandbox's logs after tear-down"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = Settings(
        figures=frozenset(f.strip() for f in args.figures.split(",") if f.strip()),
        rounds=args.rounds,
        region=args.region,
        interval_s=args.interval_ms / 1000,
    )
    out = args.out or RESULTS / f"gateway-{stamp()}.json"
    return drive(
        base_port=args.base_port,
        out=out,
        settings=s.__dict__,
        measure=lambda sb, report: measure(sb, s, report),
        nice=args.nice,
        keep_workdir=args.keep_workdir,
    )


if __name__ == "__main__":
    sys.exit(main())
