"""``meridian flags``: feature flags from the command line.

::

    meridian flags set      KEY FILE|- [--if-revision N]   one flag, flagd's format
    meridian flags set      --flagd-file FILE              every flag of a flagd file
    meridian flags get      KEY [--json]
    meridian flags list     [--json]
    meridian flags kill     KEY [--variant V] [--if-revision N]
    meridian flags delete   KEY [--if-revision N]
    meridian flags evaluate KEY [--context JSON]

Each asks an agent (the first region's, or ``--via``) as the CLI's identity
(``security.client_tls_dir``, by default the built-in CA's
``operator/meridian``); the agent authorizes changes and reads as
``admin:flags`` and evaluations as ``flags:evaluate``, and records every
change in the audit log. A definition is checked here first, so a bad one is
refused naming the field before anything is sent. Exit status: 0 ok, 2 a bad
file, a refused request or an unreachable agent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from meridian.cli.errors import ask_agent, fail
from meridian.core.errors import InvalidArgumentError
from meridian.flags.model import (
    decode_json,
    key_violations,
    parse_definition_json,
    parse_flagd_file,
)

_via = click.option("--via", default=None, help="Ask this region's agent (default: the first).")
_if_revision = click.option(
    "--if-revision",
    type=click.IntRange(0),
    default=None,
    help="Change only if the flag is at this revision (0: it must not exist yet).",
)


def _read(source: str) -> str:
    try:
        if source == "-":
            return sys.stdin.read()
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {source}: {exc}")


def _refuse(exc: InvalidArgumentError, what: str) -> None:
    lines = [f"{v.field}: {v.rule}" for v in exc.violations]
    fail(f"{what} does not validate:\n  " + "\n  ".join(lines))


def _check_key(key: str) -> None:
    v = key_violations(key)
    if v:
        _refuse(InvalidArgumentError(v), "the key")


def _show(flag: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(flag, indent=2))
        return
    killed = f"  KILLED to {flag['killedVariant']}" if flag.get("killedVariant") else ""
    click.echo(
        f"{flag['key']}  revision {flag.get('revision', 0)}  by {flag.get('author', '')}"
        f"  at {flag.get('updatedAt', '')}{killed}"
    )
    click.echo(json.dumps(json.loads(flag["definition"]), indent=2))


@click.group()
def flags() -> None:
    """Feature flags in flagd's format, evaluated in every agent (docs/flags.md)."""


@flags.command(name="set")
@click.argument("key", required=False)
@click.argument("file", required=False)
@click.option("--flagd-file", default=None, help="Set every flag of this flagd file.")
@_if_revision
@_via
@click.pass_context
def set_(
    ctx: click.Context,
    key: str | None,
    file: str | None,
    flagd_file: str | None,
    if_revision: int | None,
    via: str | None,
) -> None:
    """Check a flag here, then store it for every region (FILE: its JSON, or - for stdin)."""
    if flagd_file is not None:
        if key or file or if_revision is not None:
            fail("--flagd-file sets every flag of the file: give no KEY, FILE or --if-revision")
        try:
            parsed = parse_flagd_file(_read(flagd_file))
        except InvalidArgumentError as exc:
            _refuse(exc, flagd_file)
        for name, definition in parsed.items():
            got = ask_agent(
                ctx,
                via,
                "/v1/flags/set-flag",
                {"key": name, "definition": definition.canonical()},
            )
            click.echo(f"set {name} at revision {got['flag']['revision']}")
        return
    if not key or not file:
        fail("give KEY and FILE (or --flagd-file FILE)")
    _check_key(key)
    text = _read(file)
    try:
        definition = parse_definition_json(text)
    except InvalidArgumentError as exc:
        _refuse(exc, file)
    body: dict[str, Any] = {"key": key, "definition": definition.canonical()}
    if if_revision is not None:
        body["ifRevision"] = if_revision
    got = ask_agent(ctx, via, "/v1/flags/set-flag", body)
    click.echo(f"set {key} at revision {got['flag']['revision']}")


@flags.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="The flag as JSON.")
@_via
@click.pass_context
def get(ctx: click.Context, key: str, as_json: bool, via: str | None) -> None:
    """Show one flag as the agent holds it."""
    _check_key(key)
    _show(ask_agent(ctx, via, "/v1/flags/get-flag", {"key": key})["flag"], as_json)


@flags.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="The flags as JSON.")
@_via
@click.pass_context
def list_(ctx: click.Context, as_json: bool, via: str | None) -> None:
    """Every flag, by key."""
    got = ask_agent(ctx, via, "/v1/flags/list-flags", {}).get("flags", [])
    if as_json:
        click.echo(json.dumps(got, indent=2))
        return
    for flag in got:
        d = json.loads(flag["definition"])
        state = f"KILLED({flag['killedVariant']})" if flag.get("killedVariant") else d["state"]
        targeted = "targeted" if d.get("targeting") else "static"
        click.echo(
            f"{flag['key']:<32} {state:<16} default={d['defaultVariant']:<12} {targeted:<9} "
            f"rev {flag.get('revision', 0)}"
        )


@flags.command()
@click.argument("key")
@click.option(
    "--variant", default="", help="Serve this variant (default: 'off', or the false one)."
)
@_if_revision
@_via
@click.pass_context
def kill(
    ctx: click.Context, key: str, variant: str, if_revision: int | None, via: str | None
) -> None:
    """The kill switch: serve the off variant in every region, in one global write."""
    _check_key(key)
    body: dict[str, Any] = {"key": key, "variant": variant}
    if if_revision is not None:
        body["ifRevision"] = if_revision
    got = ask_agent(ctx, via, "/v1/flags/kill-flag", body)["flag"]
    click.echo(
        f"killed {key}: every region serves {got['killedVariant']!r} (revision {got['revision']})"
    )


@flags.command()
@click.argument("key")
@_if_revision
@_via
@click.pass_context
def delete(ctx: click.Context, key: str, if_revision: int | None, via: str | None) -> None:
    """Remove a flag; evaluations of it then say FLAG_NOT_FOUND."""
    _check_key(key)
    body: dict[str, Any] = {"key": key}
    if if_revision is not None:
        body["ifRevision"] = if_revision
    got = ask_agent(ctx, via, "/v1/flags/delete-flag", body)
    click.echo(f"deleted {key} (revision {got.get('revision', 0)})")


@flags.command()
@click.argument("key")
@click.option("--context", "context_json", default="{}", help="The evaluation context, JSON.")
@_via
@click.pass_context
def evaluate(ctx: click.Context, key: str, context_json: str, via: str | None) -> None:
    """Evaluate one flag in the agent's region, as its services would."""
    _check_key(key)
    try:
        context = decode_json(context_json, "--context", 64 * 1024)
    except InvalidArgumentError as exc:
        _refuse(exc, "--context")
    if not isinstance(context, dict):
        fail("--context: must be a JSON object")
    got = ask_agent(ctx, via, "/v1/flags/evaluate", {"key": key, "context": context})
    click.echo(json.dumps(got["evaluation"], indent=2))
