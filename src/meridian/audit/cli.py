"""``meridian audit``: read and check the audit log, straight from JetStream.

::

    meridian audit verify [--via REGION] [--keys DIR] [--min-cosigners N] [--json]
    meridian audit prove  REQUEST_ID|#INDEX [--via REGION]
    meridian audit tail   [-n N] [--follow] [--via REGION]
    meridian audit keygen REGION... [--keys DIR]

The commands read the streams through a region's NATS servers as the CLI's
identity (``security.client_tls_dir``), not through an agent: a verifier
must not trust the agents it checks. ``verify`` rebuilds the Merkle tree
from every entry and checks each checkpoint's signature, cosignatures, root
and consistency; it exits 1 when it finds a problem. The regions' public keys
come from ``--keys`` (by default ``<security.ca_dir>/audit``, where the
sandbox makes them).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from meridian.cli.errors import fail as _fail
from meridian.core.errors import MeridianError

T = TypeVar("T")


def _config(ctx: click.Context) -> Any:
    try:
        return ctx.find_root().obj.config
    except MeridianError as exc:
        _fail(exc.message)


def _keys_dir(ctx: click.Context, keys: Path | None) -> Path:
    return keys if keys is not None else Path(_config(ctx).ca_path) / "audit"


async def _with_js(ctx: click.Context, via: str | None, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(jetstream)`` on a connection to ``via``'s NATS servers."""
    from meridian.backbone.connection import connect_once
    from meridian.security.pki import client_ssl

    cfg = _config(ctx)
    region = cfg.region(via) if via else cfg.regions[0]

    nc = await connect_once(region.agent_nats_urls, tls=client_ssl(cfg), timeout_s=5)
    try:
        return await fn(nc.jetstream(timeout=10))
    finally:
        await nc.close()


async def read_stream(js: Any, stream: str, subject: str) -> list[tuple[str, bytes]]:
    """Every message of ``stream`` on ``subject`` (wildcards allowed), in order,
    as (subject, data)."""
    from nats.js import api

    from meridian.backbone.feed import ordered_feed

    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    out: list[tuple[str, bytes]] = []
    config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
    async with (
        ordered_feed(js, subject, stream=stream, config=config) as q,
        asyncio.timeout(120),
    ):
        while True:
            msg = await q.next(f"the stream {stream}")
            out.append((msg.subject, msg.data))
            if msg.metadata.num_pending == 0:
                return out


async def read_log(js: Any) -> tuple[list[bytes], list[bytes]]:
    from meridian.audit.store import (
        CHECKPOINTS_STREAM,
        ENTRIES_STREAM,
        ENTRY_SUBJECT,
    )

    entries = [d for _, d in await read_stream(js, ENTRIES_STREAM, ENTRY_SUBJECT)]
    notes = [d for _, d in await read_stream(js, CHECKPOINTS_STREAM, "mg.audit.>")]
    return entries, notes


_via = click.option("--via", default=None, help="Read through this region's NATS servers.")
_keys = click.option(
    "--keys",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The regions' public keys, <region>.pub (default: <security.ca_dir>/audit).",
)


@click.group()
def audit() -> None:
    """The tamper-evident audit log (docs/security.md#audit-log)."""


@audit.command()
@_via
@_keys
@click.option("--min-cosigners", type=click.IntRange(0), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(
    ctx: click.Context, via: str | None, keys: Path | None, min_cosigners: int, as_json: bool
) -> None:
    """Rebuild the tree from every entry and check every checkpoint."""
    from meridian.audit.keys import load_public
    from meridian.audit.verify import verify_log

    public = load_public(_keys_dir(ctx, keys))
    if not public:
        _fail(f"no public keys (<region>.pub) in {_keys_dir(ctx, keys)}")
    try:
        entries, notes = asyncio.run(_with_js(ctx, via, read_log))
    except Exception as exc:  # the servers, the streams: say which
        _fail(f"cannot read the audit log: {type(exc).__name__}: {exc}")
    td = _config(ctx).security.trust_domain
    report = verify_log(entries, notes, public, trust_domain=td, min_cosigners=min_cosigners)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "size": report.size,
                    "root": report.root.hex(),
                    "checkpoints": [
                        {
                            "size": c.size,
                            "root": c.root,
                            "signers": list(c.signers),
                            "cosigners": list(c.cosigners),
                            "status": str(c.status),
                        }
                        for c in report.checkpoints
                    ],
                    "problems": report.problems,
                    "warnings": report.warnings,
                },
                indent=2,
            )
        )
    else:
        click.echo(
            f"{report.size} entries, root {report.root.hex()}, "
            f"{len(report.checkpoints)} checkpoints"
        )
        for c in report.checkpoints[-5:]:
            click.echo(
                f"  size {c.size}: {c.status} signed by {', '.join(c.signers) or '-'}, "
                f"cosigned by {', '.join(c.cosigners) or '-'}"
            )
        for w in report.warnings:
            click.echo(f"warning: {w}")
        for p in report.problems:
            click.echo(f"PROBLEM: {p}")
        click.echo("ok" if report.ok else "the audit log does NOT verify")
    sys.exit(0 if report.ok else 1)


@audit.command()
@click.argument("entry")
@_via
@click.pass_context
def prove(ctx: click.Context, entry: str, via: str | None) -> None:
    """Print the inclusion proof of ENTRY (a request id, or #INDEX from 0)."""
    from meridian.audit.merkle import leaf_hash, root
    from meridian.audit.verify import entry_index, format_proof
    from meridian.audit.verify import prove as make_proof

    entries, _ = asyncio.run(_with_js(ctx, via, read_log))
    if entry.startswith("#") and entry[1:].isdigit():
        index: int | None = int(entry[1:])
    else:
        index = entry_index(entries, entry)
    if index is None or not 0 <= index < len(entries):
        _fail(f"entry: no entry {entry!r} in the {len(entries)} entries of the log")
    proof = make_proof(entries, index)
    tree_root = root([leaf_hash(e) for e in entries])
    click.echo(format_proof(index, proof, tree_root), nl=False)


@audit.command()
@click.option("-n", "count", type=click.IntRange(1), default=20, show_default=True)
@_via
@click.pass_context
def tail(ctx: click.Context, count: int, via: str | None) -> None:
    """Print the last N entries, one canonical JSON line each."""
    entries, _ = asyncio.run(_with_js(ctx, via, read_log))
    for data in entries[-count:]:
        click.echo(data.decode())


@audit.command()
@click.argument("regions", nargs=-1, required=True)
@_keys
@click.pass_context
def keygen(ctx: click.Context, regions: tuple[str, ...], keys: Path | None) -> None:
    """Make the audit key pair of each REGION that has none (the sandbox does this)."""
    from meridian.audit.keys import ensure_keys

    directory = _keys_dir(ctx, keys)
    made = ensure_keys(directory, regions)
    click.echo(f"{directory}: made {', '.join(made) or 'nothing (all present)'}")
