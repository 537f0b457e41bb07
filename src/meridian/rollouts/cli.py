"""``meridian rollout``: ship a version region by region, from the command line.

::

    meridian rollout start   PLAN|-                   start a rollout (docs/rollouts.md)
    meridian rollout status  SERVICE [--json]         phase, regions, analysis, events
    meridian rollout promote SERVICE [--reason R]     count this step as good; resume
    meridian rollout pause   SERVICE [--reason R]     hold at this step
    meridian rollout abort   SERVICE [--reason R]     every region back to stable
    meridian rollout history SERVICE [--json]         finished rollouts, newest first
    meridian rollout weights SERVICE [--json]         each region's routing weights
    meridian rollout set-weights SERVICE REGION [VERSION=WEIGHT ...]
                                                      set by hand (none: remove)

Each asks an agent (the first region's, or ``--via``) as the CLI's identity;
the agent authorizes each as ``admin:rollouts`` on the service and records
every change in the audit log. Exit status: 0 ok, 2 a bad plan, a refused
request or an unreachable agent.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import click

from meridian.cli.errors import ask_agent, fail
from meridian.core.errors import InvalidArgumentError
from meridian.flags.model import decode_json
from meridian.rollouts.service import MAX_PLAN_BYTES

_via = click.option("--via", default=None, help="Ask this region's agent (default: the first).")
_json = click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
_reason = click.option("--reason", default="", help="Why (kept in the status and the audit log).")


def _when(ms: Any) -> str:
    stamp = datetime.datetime.fromtimestamp(int(ms or 0) / 1000, tz=datetime.UTC)
    return stamp.strftime("%H:%M:%S")


def show(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(
        f"{r.get('service')} {r.get('stable')} -> {r.get('version')}  {r.get('phase')}"
        f"  (rollout {r.get('id')}, driven by {r.get('driver') or 'nobody yet'})"
    )
    if r.get("message"):
        click.echo(f"  {r['message']}")
    for region in r.get("regions", []):
        click.echo(
            f"  {region['region']:<12} {region['state']:<12} "
            f"{r.get('version')} at {region.get('weight', 0)}%"
        )
    for m in r.get("measurements", []):
        click.echo(f"  analysis: {m}")
    if r.get("consistency"):
        click.echo(f"  consistency check: {r['consistency']}  {r.get('consistencyDetail', '')}")
    for e in r.get("events", [])[-10:]:
        where = f" {e['region']}" if e.get("region") else ""
        click.echo(f"  {_when(e.get('atUnixMs'))} {e['kind']}{where}: {e.get('detail', '')}")


@click.group()
def rollout() -> None:
    """Region-wave rollouts with automatic regional rollback (docs/rollouts.md)."""


@rollout.command()
@click.argument("plan")
@_via
@click.pass_context
def start(ctx: click.Context, plan: str, via: str | None) -> None:
    """Start a rollout from a plan (PLAN: a JSON file, or - for stdin)."""
    try:
        text = sys.stdin.read() if plan == "-" else Path(plan).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {plan}: {exc}")
    try:
        decode_json(text, "plan", MAX_PLAN_BYTES)
    except InvalidArgumentError as exc:
        fail("the plan does not validate:\n  " + "\n  ".join(str(v) for v in exc.violations))
    got = ask_agent(ctx, via, "/v1/rollouts/start-rollout", {"plan": text})
    show(got["rollout"], False)


@rollout.command()
@click.argument("service")
@_json
@_via
@click.pass_context
def status(ctx: click.Context, service: str, as_json: bool, via: str | None) -> None:
    """The service's current (or last) rollout."""
    show(ask_agent(ctx, via, "/v1/rollouts/get-rollout", {"service": service})["rollout"], as_json)


def _action(name: str, path: str, doc: str) -> None:
    @rollout.command(name=name, help=doc)
    @click.argument("service")
    @_reason
    @_via
    @click.pass_context
    def command(ctx: click.Context, service: str, reason: str, via: str | None) -> None:
        got = ask_agent(ctx, via, path, {"service": service, "reason": reason})
        show(got["rollout"], False)


_action("promote", "/v1/rollouts/promote-rollout", "Count the current step as good; resume.")
_action("pause", "/v1/rollouts/pause-rollout", "Hold the rollout at its step.")
_action("abort", "/v1/rollouts/abort-rollout", "Send every region back to the stable version.")


@rollout.command()
@click.argument("service")
@_json
@_via
@click.pass_context
def history(ctx: click.Context, service: str, as_json: bool, via: str | None) -> None:
    """The service's finished rollouts, newest first."""
    got = ask_agent(ctx, via, "/v1/rollouts/rollout-history", {"service": service})
    rollouts = got.get("rollouts", [])
    if as_json:
        click.echo(json.dumps(rollouts, indent=2))
        return
    for r in rollouts:
        click.echo(
            f"{_when(r.get('startedUnixMs'))} {r.get('id')} {r.get('stable')} -> "
            f"{r.get('version')}  {r.get('phase')}  {r.get('message', '')}"
        )


@rollout.command()
@click.argument("service")
@_json
@_via
@click.pass_context
def weights(ctx: click.Context, service: str, as_json: bool, via: str | None) -> None:
    """Each region's routing weights for the service."""
    got = ask_agent(ctx, via, "/v1/rollouts/get-weights", {"service": service})
    regions = got.get("regions", [])
    if as_json:
        click.echo(json.dumps(regions, indent=2))
        return
    for r in regions:
        split = "  ".join(f"{v}={w}" for v, w in sorted(r.get("weights", {}).items()))
        by = f"  (rollout {r['rollout']})" if r.get("rollout") else ""
        click.echo(f"{r['region']:<12} {split}{by}")


@rollout.command(name="set-weights")
@click.argument("service")
@click.argument("region")
@click.argument("split", nargs=-1)
@_via
@click.pass_context
def set_weights(
    ctx: click.Context, service: str, region: str, split: tuple[str, ...], via: str | None
) -> None:
    """Set a region's weights by hand: VERSION=WEIGHT ... (none: remove them)."""
    parsed: dict[str, int] = {}
    for item in split:
        version, sep, weight = item.partition("=")
        if not sep or not weight.isdigit():
            fail(f"{item!r}: give VERSION=WEIGHT, a whole number, e.g. v2=10")
        parsed[version] = int(weight)
    body = {"service": service, "region": region, "weights": parsed}
    got = ask_agent(ctx, via, "/v1/rollouts/set-weights", body)
    for r in got.get("regions", []):
        split_text = "  ".join(f"{v}={w}" for v, w in sorted(r.get("weights", {}).items()))
        click.echo(f"{r['region']:<12} {split_text}")
