"""``meridian demo``: the global shop demo.

::

    meridian demo run [--quick] [--base-port N] [--duration S] [--clients-per-region N]
                      [--skus N] [--stock-per-sku N] [--kill-region REGION] [--seed N]
                      [--keep] [--report-json PATH] [--workdir DIR]
                      [--orders-bin PATH] [--inventory-bin PATH]
    meridian demo down [--base-port N] [--workdir DIR]

``run`` exits 0 when every invariant held, 1 when one failed, 2 when the run
could not be carried out (e.g. a binary is missing), 130 or 143 when stopped by
SIGINT or SIGTERM. The demo brings up a sandbox of its own from a generated
configuration; the global ``--config`` is not used.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from meridian.demo.options import DEFAULT_BASE_PORT, DemoOptions


def _workdir(workdir: str | None, base_port: int) -> Path:
    return Path(workdir) if workdir else Path(f".meridian/demo-{base_port}")


@click.group()
def demo() -> None:
    """The global shop: Go orders and Rust inventory in three regions, a region killed
    under load, and the invariants checked afterwards."""


@demo.command("run")
@click.option("--quick", is_flag=True, help="~15 s of load with fewer shoppers (for tests).")
@click.option("--base-port", type=int, default=DEFAULT_BASE_PORT, show_default=True,
              help="Ports of the demo's sandbox and services (1000 from here).")  # fmt: skip
@click.option("--duration", type=float, default=None, help="Seconds of load [60; quick 15].")
@click.option("--clients-per-region", type=int, default=None, help="Shoppers per region [4; quick 2].")  # fmt: skip
@click.option("--skus", type=int, default=None, help="How many SKUs [5].")
@click.option("--stock-per-sku", type=int, default=None, help="Units seeded per SKU [120; quick 30].")  # fmt: skip
@click.option("--kill-region", default="eu-west", show_default=True, help="The region killed halfway.")  # fmt: skip
@click.option("--seed", type=int, default=1, show_default=True, help="Seeds the shoppers' choices.")
@click.option("--keep", is_flag=True, help="Leave the sandbox and the services running afterwards.")
@click.option("--report-json", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON here.")  # fmt: skip
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="The run's files [.meridian/demo-BASE_PORT].")  # fmt: skip
@click.option("--orders-bin", type=click.Path(dir_okay=False), default=None,
              help="The Go orders binary [.meridian/bin/orders].")  # fmt: skip
@click.option("--inventory-bin", type=click.Path(dir_okay=False), default=None,
              help="The Rust inventory binary [$CARGO_TARGET_DIR/debug/examples/inventory].")  # fmt: skip
@click.option("--rollout-region", default="ap-south", show_default=True,
              help="Where the faulty orders v2 is rolled out first (and back).")  # fmt: skip
@click.option("--no-rollout", is_flag=True, help="Skip the rollouts after the heal.")
def demo_run(
    quick: bool,
    base_port: int,
    duration: float | None,
    clients_per_region: int | None,
    skus: int | None,
    stock_per_sku: int | None,
    kill_region: str,
    seed: int,
    keep: bool,
    report_json: str | None,
    workdir: str | None,
    orders_bin: str | None,
    inventory_bin: str | None,
    rollout_region: str,
    no_rollout: bool,
) -> None:
    """Bring up a sandbox, run orders and inventory in every region, drive shoppers through
    the gateway, kill a region halfway and bring it back, roll a faulty orders v2 out
    (rolled back) and a good one, then check the invariants."""
    from meridian.demo.runner import run_demo

    opts = DemoOptions.quick() if quick else DemoOptions()
    changes: dict[str, Any] = {
        "base_port": base_port,
        "kill_region": kill_region,
        "seed": seed,
        "keep": keep,
        "workdir": _workdir(workdir, base_port),
        "report_json": Path(report_json) if report_json else None,
        "orders_bin": Path(orders_bin) if orders_bin else None,
        "inventory_bin": Path(inventory_bin) if inventory_bin else None,
        "rollout_region": rollout_region,
        "rollout": not no_rollout,
    }
    for name, value in (
        ("duration_s", duration),
        ("clients_per_region", clients_per_region),
        ("skus", skus),
        ("stock_per_sku", stock_per_sku),
    ):
        if value is not None:
            if value <= 0:
                raise click.BadParameter(f"must be positive, got {value}", param_hint=name)
            changes[name] = value
    if kill_region not in opts.regions:
        raise click.BadParameter(
            f"{kill_region!r} is not one of {', '.join(opts.regions)}", param_hint="--kill-region"
        )
    if rollout_region not in opts.regions:
        raise click.BadParameter(
            f"{rollout_region!r} is not one of {', '.join(opts.regions)}",
            param_hint="--rollout-region",
        )
    opts = replace(opts, **changes)
    rep, code = asyncio.run(run_demo(opts, click.echo))
    click.echo(rep.render())
    if opts.report_json is not None:
        click.echo(f"report JSON: {opts.report_json}")
    sys.exit(code)


@demo.command("down")
@click.option("--base-port", type=int, default=DEFAULT_BASE_PORT, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="The run's files [.meridian/demo-BASE_PORT].")  # fmt: skip
def demo_down(base_port: int, workdir: str | None) -> None:
    """Stop a demo left running by ``run --keep``: its services, then its sandbox."""
    from meridian.config import load_config
    from meridian.demo.fleet import Binaries, Fleet
    from meridian.sandbox.supervisor import Sandbox

    opts = DemoOptions(base_port=base_port, workdir=_workdir(workdir, base_port))
    if not opts.config_path.is_file():
        click.echo(f"no demo in {opts.workdir} (no {opts.config_path.name}); nothing to stop")
        return
    config = load_config(opts.config_path, env={})
    Fleet(opts, config, Binaries(Path(), Path())).stop_all()
    busy = Sandbox(config, str(opts.config_path)).down(purge=True)
    if busy:
        click.echo(f"error: ports still in use: {', '.join(map(str, busy))}", err=True)
        sys.exit(1)
    click.echo("demo stopped: services and sandbox down; no port left in use")
