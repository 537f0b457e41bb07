"""``meridian policy``: the Cedar policy set from the command line.

::

    meridian policy check   FILE                  validate against the schema, here
    meridian policy push    FILE [--if-revision N] [--via REGION]
    meridian policy show    [--via REGION] [--json]
    meridian policy explain PRINCIPAL ACTION RESOURCE [--key K] [--via REGION]
    meridian policy schema                        print the schema policies are checked against

``push``, ``show`` and ``explain`` ask an agent (the first region's, or
``--via``) as the CLI's identity (``security.client_tls_dir``, by default the
built-in CA's ``operator/meridian``); the agent authorizes them as
``admin:policies``. RESOURCE is ``Type::"id"`` or ``Type/id``
(``Keyspace/orders``). Exit status: 0 ok (``explain``: permitted), 1 denied
by ``explain``, 2 a bad file, a refused request or an unreachable agent.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from meridian.cli.errors import ask_agent as _ask
from meridian.cli.errors import fail as _fail
from meridian.core.errors import MeridianError
from meridian.policy.engine import compile_policies
from meridian.policy.model import SCHEMA

#: ``Keyspace::"orders"`` or ``Keyspace/orders``.
_RESOURCE = re.compile(r'^([A-Za-z]+)(?:::"(.*)"|/(.*))\Z', re.DOTALL)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {path}: {exc}")


_via = click.option("--via", default=None, help="Ask this region's agent (default: the first).")


@click.group()
def policy() -> None:
    """The Cedar policy set that authorizes every call (docs/security.md#policies)."""


@policy.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check(file: Path) -> None:
    """Validate FILE against Meridian's schema, without asking any agent."""
    try:
        compiled = compile_policies(_read(file), field=str(file))
    except MeridianError as exc:
        violations = getattr(exc, "violations", ())
        click.echo(f"{file}: does not validate", err=True)
        for v in violations:
            click.echo(f"  {v.rule}", err=True)
        sys.exit(2)
    click.echo(f"{file}: ok ({compiled.count} policies)")


@policy.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--if-revision",
    type=click.IntRange(0),
    default=None,
    help="Store only if the stored set is at this revision (0: none stored yet).",
)
@_via
@click.pass_context
def push(ctx: click.Context, file: Path, if_revision: int | None, via: str | None) -> None:
    """Validate FILE here, then store it for every agent."""
    text = _read(file)
    try:
        compile_policies(text, field=str(file))
    except MeridianError as exc:
        _fail(f"{file} does not validate; nothing was pushed:\n  {exc.message}")
    body: dict[str, Any] = {"text": text}
    if if_revision is not None:
        body["if_revision"] = if_revision
    out = _ask(ctx, via, "/v1/policy/put-policies", body)
    click.echo(f"stored revision {out.get('revision', 0)} ({out.get('policies', 0)} policies)")


@policy.command()
@_via
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show(ctx: click.Context, via: str | None, as_json: bool) -> None:
    """Print the set an agent decides with now."""
    out = _ask(ctx, via, "/v1/policy/get-policies", {}).get("policySet", {})
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(
        f"// revision {out.get('revision', 0)}, {out.get('policies', 0)} policies, "
        f"by {out.get('author', '?')} at {out.get('updatedAt', '-')}"
    )
    click.echo(out.get("text", ""), nl=False)


@policy.command()
@click.argument("principal")
@click.argument("action")
@click.argument("resource")
@click.option("--key", default="", help="The key, prefix, group or method path in RESOURCE.")
@_via
@click.pass_context
def explain(
    ctx: click.Context, principal: str, action: str, resource: str, key: str, via: str | None
) -> None:
    """Decide one request without performing it, and say which policies decided.

    PRINCIPAL is service/orders, agent/us-east, gateway, operator/alice or a
    spiffe:// ID; ACTION e.g. state:write; RESOURCE e.g. Keyspace/orders."""
    m = _RESOURCE.match(resource)
    if m is None:
        _fail(f'resource: must be Type::"id" or Type/id, e.g. Keyspace/orders; got {resource!r}')
    rtype, rid = m.group(1), m.group(2) if m.group(2) is not None else m.group(3)
    out = _ask(
        ctx,
        via,
        "/v1/policy/explain",
        {
            "principal": principal,
            "action": action,
            "resource_type": rtype,
            "resource_id": rid,
            "key": key,
        },
    )
    decision = out.get("decision", "deny")
    by = ", ".join(out.get("determining", [])) or "no policy permits it (default deny)"
    click.echo(f"{decision}: {by}  (revision {out.get('revision', 0)})")
    for error in out.get("errors", []):
        click.echo(f"  skipped: {error}")
    sys.exit(0 if decision == "permit" else 1)


@policy.command()
def schema() -> None:
    """Print the Cedar schema policies are validated against."""
    click.echo(SCHEMA.strip())
