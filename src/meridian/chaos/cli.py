"""``meridian chaos``: run a scenario against a dedicated sandbox.

::

    meridian chaos list
    meridian chaos run SCENARIO [--duration S] [--out DIR] [--base-port N]
                                [--sync-interval always|default] [--keep] [--seed N]

Exit code: 0 if every invariant held, 1 if one was violated, 3 if one could
not be decided (and none was violated).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click


@click.group()
def chaos() -> None:
    """Verification harness: faults, workloads, checkers, reports (DESIGN §8)."""


@chaos.command("list")
def chaos_list() -> None:
    """The smoke scenarios, then the matrix's workloads and faults."""
    from meridian.chaos.scenarios import FAULTS, SMOKE, WORKLOADS

    for s in SMOKE.values():
        click.echo(f"{s.name:32} {s.description}")
    click.echo(f"\nmatrix: WORKLOAD-FAULT, WORKLOAD in {', '.join(WORKLOADS)};")
    click.echo(f"        FAULT in calm, {', '.join(FAULTS)}")


@chaos.command("run")
@click.argument("scenario")
@click.option(
    "--duration", type=float, default=None, help="Seconds of load (default: the scenario's)."
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Report directory (default: .meridian/chaos/SCENARIO-TIME).")  # fmt: skip
@click.option("--base-port", type=int, default=28000, show_default=True,
              help="Ports of the run's sandbox (the smoke suite uses 27000).")  # fmt: skip
@click.option("--sync-interval", type=click.Choice(["always", "default"]), default="always",
              show_default=True, help="fsync policy of the global servers.")  # fmt: skip
@click.option("--keep", is_flag=True, help="Leave the sandbox running afterwards.")
@click.option("--seed", type=int, default=None)
def chaos_run(
    scenario: str,
    duration: float | None,
    out_dir: str | None,
    base_port: int,
    sync_interval: str,
    keep: bool,
    seed: int | None,
) -> None:
    """Run SCENARIO in its own sandbox and write report.json and report.html."""
    from meridian.chaos.runner import RunOptions, run
    from meridian.chaos.scenarios import find

    try:
        sc = find(scenario)
    except KeyError as exc:
        click.echo(f"error: {exc.args[0]}", err=True)
        sys.exit(2)
    out = Path(out_dir or f".meridian/chaos/{sc.name}-{time.strftime('%Y%m%dT%H%M%S')}")
    opts = RunOptions(out, duration, base_port, sync_interval, keep, seed)
    result = asyncio.run(run(sc, opts, say=click.echo))
    for v in result["verdicts"]:
        click.echo(f"  {v['invariant']:14} {v['label']:8} {v['summary']}")
    sys.exit({True: 0, False: 1, None: 3}[result["valid"]])


@chaos.command("matrix")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds per run.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for every run's report (default: .meridian/chaos/matrix-TIME).")  # fmt: skip
@click.option("--base-port", type=int, default=28000, show_default=True,
              help="Ports of the run's sandbox (the smoke suite uses 27000).")  # fmt: skip
@click.option("--only", default=None, help="Run only scenarios whose name contains this.")
@click.option("--sync-faults", default="kill-global-server,kill-region,power-loss", show_default=True,
              help="Faults under which the global workloads also run with NATS's default "
                   "sync_interval (comma-separated; empty for none).")  # fmt: skip
def chaos_matrix(
    duration: float, out_dir: str | None, base_port: int, only: str | None, sync_faults: str
) -> None:
    """Every fault x every workload, then the global workloads with sync_interval
    default vs always; writes summary.json and summary.md next to the reports."""
    from meridian.chaos.matrix import run_matrix

    out = Path(out_dir or f".meridian/chaos/matrix-{time.strftime('%Y%m%dT%H%M%S')}")
    faults = [f for f in sync_faults.split(",") if f]
    valid = asyncio.run(
        run_matrix(out, duration_s=duration, base_port=base_port, only=only, sync_faults=faults)
    )
    sys.exit({True: 0, False: 1, None: 3}[valid])
