"""``meridian residency``: where resident data is actually stored.

::

    meridian residency check [--monitor URL]... [--timeout S] [--json]

``check`` asks every NATS server's monitoring endpoint which stream replicas
it stores (by default both servers of each sandbox region and the
``monitor_url`` of each other region; ``--monitor``, repeated, names the
servers of a real deployment), counts resident topics' events on the event
streams through JetStream as the CLI's identity (``security.client_tls_dir``),
and judges it all by the configuration's keyspaces and topics
(:mod:`meridian.residency.model`). Exit status: 0 nothing out of place,
1 a violation (each printed), 2 a server unreachable or its answer
unreadable, JetStream unreachable, or a bad option.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from meridian.cli.errors import fail as _fail
from meridian.core.errors import MeridianError
from meridian.residency.model import Inventory, Judgement


def _config(ctx: click.Context) -> Any:
    try:
        return ctx.find_root().obj.config
    except MeridianError as exc:
        _fail(exc.message)


def _json(inventory: Inventory, judgement: Judgement) -> str:
    stored: dict[str, int] = {}
    for s in inventory.streams:
        stored[s.server] = stored.get(s.server, 0) + 1
    return json.dumps(
        {
            "ok": judgement.ok,
            "servers": [
                {
                    "name": s.name,
                    "region": s.region,
                    "cluster": s.cluster,
                    "monitor_url": s.monitor_url,
                    "streams": stored.get(s.name, 0),
                }
                for s in inventory.servers
            ],
            "violations": [v.to_json() for v in judgement.violations],
            "warnings": list(judgement.warnings),
            "unchecked": list(judgement.unchecked),
        },
        indent=2,
    )


def _text(inventory: Inventory, judgement: Judgement) -> None:
    servers = ", ".join(f"{s.name} ({s.region or 'no region tag'})" for s in inventory.servers)
    click.echo(f"asked {len(inventory.servers)} server(s): {servers}")
    for w in judgement.warnings:
        click.echo(f"warning: {w}")
    for u in judgement.unchecked:
        click.echo(f"NOT CHECKED: {u}")
    for v in judgement.violations:
        click.echo(f"VIOLATION: {v}")
    scanned = f"{len(inventory.streams)} stream replica(s) on {len(inventory.servers)} server(s)"
    if judgement.violations:
        click.echo(f"{len(judgement.violations)} violation(s) in {scanned}")
    elif judgement.unchecked:
        click.echo(f"no violation found, but {len(judgement.unchecked)} check(s) not made")
    else:
        click.echo(f"ok: no resident data outside its regions ({scanned})")


@click.group()
def residency() -> None:
    """Where resident data is stored (docs/cli.md#data-residency)."""


@residency.command()
@click.option(
    "--monitor",
    "monitors",
    multiple=True,
    metavar="URL",
    help="A server's monitoring endpoint, http[s]://HOST:PORT; repeat for every server "
    "(default: the sandbox's servers and each region's monitor_url).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for each answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def check(ctx: click.Context, monitors: tuple[str, ...], timeout_s: float, as_json: bool) -> None:
    """Report every byte of resident data stored outside its allowed regions."""
    from meridian.residency.check import check_config, monitor_url

    cfg = _config(ctx)
    try:
        urls = [monitor_url(m) for m in monitors]
        inventory, judgement = asyncio.run(check_config(cfg, urls=urls, timeout_s=timeout_s))
    except MeridianError as exc:
        _fail(exc.message)
    if as_json:
        click.echo(_json(inventory, judgement))
    else:
        _text(inventory, judgement)
    # A violation found is the answer even when some counts are missing.
    sys.exit(1 if judgement.violations else 2 if judgement.unchecked else 0)
