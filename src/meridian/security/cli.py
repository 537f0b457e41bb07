"""``meridian ca``: the built-in certificate authority from the command line.

::

    meridian ca init   [--dir D] [--trust-domain TD] [--algorithm ecdsa-p256|ed25519]
    meridian ca issue  IDENTITY [--dir D] [--lifetime 24h] [--dns NAME ...] [--ip ADDR ...]
    meridian ca renew  [--dir D] [--all] [--watch SECONDS]
    meridian ca rotate [--dir D] [--finish]
    meridian ca status [--dir D] [--json]

IDENTITY is ``agent/<region>``, ``service/<name>``, ``gateway``,
``nats/<server>``, ``operator/<name>`` or a full ``spiffe://`` ID. ``status``
exits 1 when anything is expiring, expired or still on an old root, so a cron
job or a CI step can alarm on it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from meridian.core.errors import MeridianError
from meridian.security.ca import (
    ALGORITHMS,
    DEFAULT_DIR,
    CertificateAuthority,
    problems,
    status_rows,
)
from meridian.security.model import Identity, parse_duration

F = TypeVar("F", bound=Callable[..., Any])


def _config_ca_dir(ctx: click.Context, _: click.Parameter, value: Path | None) -> Path:
    """``--dir`` as given, else the configuration's CA (``security.ca_dir``, by
    default ``<sandbox.workdir>/ca``: the one ``sandbox up`` uses), else
    ``.meridian/ca`` when there is no configuration to ask."""
    if value is not None:
        return value
    config = getattr(ctx.find_root().obj, "config", None)
    return Path(config.ca_path) if config is not None else DEFAULT_DIR


_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MERIDIAN_CA_DIR",
    default=None,
    callback=_config_ca_dir,
    help="The CA's directory (default: the configuration's security.ca_dir, which "
    "is <sandbox.workdir>/ca unless set).",
)


def _audited(directory: Path, operation: str, **detail: str) -> None:
    """Record a CA operation in the audit log (``admin:ca``), or keep it in the
    CA's directory until the log can be reached; say which on stderr."""
    from meridian.security.ca_audit import ca_entry, principal_of, record
    from meridian.security.pki import client_ssl

    config = getattr(click.get_current_context().find_root().obj, "config", None)
    urls: list[str] = []
    tls = None
    principal, region = "", "local"
    if config is not None:
        first = config.regions[0]
        region, urls = first.name, list(first.agent_nats_urls)
        try:
            tls = client_ssl(config)
        except MeridianError as exc:  # no client identity (yet): keep the entry
            urls = []
            click.echo(f"audit: {exc}", err=True)
        if config.client_tls_dir is not None:
            principal = principal_of(config.client_tls_dir / "cert.pem")
    entry = ca_entry(operation, detail, principal=principal, region=region)
    _, said = record(directory, entry, urls=urls, tls=tls)
    click.echo(f"audit: {operation}: {said}", err=True)


def _errors_exit_2(fn: F) -> F:
    """Meridian errors as ``error: <field>: <rule>`` on stderr and exit status 2."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MeridianError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return run  # type: ignore[return-value]


@click.group()
def ca() -> None:
    """The built-in certificate authority: identities for agents, services, the gateway and NATS."""


@ca.command()
@_dir_option
@click.option("--trust-domain", default="meridian.local", show_default=True)
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="ecdsa-p256", show_default=True)
@_errors_exit_2
def init(directory: Path, trust_domain: str, algorithm: str) -> None:
    """Make a new CA with one root."""
    root = CertificateAuthority(directory).init(trust_domain, algorithm=algorithm)
    click.echo(f"CA for spiffe://{trust_domain} in {directory}; root {root.fingerprint}")
    _audited(directory, "init", root=root.fingerprint, trust_domain=trust_domain)


@ca.command()
@click.argument("identity")
@_dir_option
@click.option("--lifetime", default="24h", show_default=True, help="e.g. 90s, 15m, 24h, 30d")
@click.option("--dns", multiple=True, help="A DNS name the holder serves (repeatable).")
@click.option("--ip", multiple=True, help="An IP address the holder serves (repeatable).")
@_errors_exit_2
def issue(
    identity: str, directory: Path, lifetime: str, dns: tuple[str, ...], ip: tuple[str, ...]
) -> None:
    """Issue (or re-issue) the certificate of IDENTITY."""
    authority = CertificateAuthority(directory)
    ident = Identity.from_spec(authority.trust_domain, identity)
    leaf = authority.issue(
        ident, lifetime_s=parse_duration(lifetime), dns_names=dns, ip_addresses=ip
    )
    click.echo(f"{ident.uri}: {leaf.cert_path.parent}")
    _audited(directory, "issue", identity=ident.uri, lifetime_s=str(parse_duration(lifetime)))


@ca.command()
@_dir_option
@click.option("--all", "everything", is_flag=True, help="Re-issue every leaf, due or not.")
@click.option(
    "--watch",
    "watch_s",
    type=click.FloatRange(0.2, 86_400),
    default=None,
    help="Keep going: look for due leaves every this many seconds, until SIGTERM "
    "(`meridian sandbox renew --watch` also reloads the sandbox's nats-servers).",
)
@_errors_exit_2
def renew(directory: Path, everything: bool, watch_s: float | None) -> None:
    """Re-issue the leaves past half their lifetime or on an old root."""
    authority = CertificateAuthority(directory)
    renewed = [leaf.identity.uri for leaf in authority.renew(force=everything)]
    for uri in renewed:
        click.echo(f"renewed {uri}", nl=True)
    if renewed:
        _audited(directory, "renew", identities=" ".join(renewed))
    if watch_s is not None:

        def once() -> list[str]:
            leaves = authority.renew()
            if leaves:
                _audited(directory, "renew", identities=" ".join(x.identity.uri for x in leaves))
            return [f"{leaf.identity.uri} until {leaf.validity.not_after:.0f}" for leaf in leaves]

        renew_every(watch_s, once)


def renew_every(watch_s: float, renew_once: Callable[[], list[str]]) -> None:
    """Run ``renew_once`` every ``watch_s`` seconds until the process is
    stopped, printing what it renewed. A failed round (a CA being rotated by
    hand, say) is said and tried again next round."""
    while True:
        time.sleep(watch_s)
        try:
            renewed = renew_once()
        except (MeridianError, OSError, ValueError) as exc:
            click.echo(f"renewal failed, retrying in {watch_s:g}s: {exc}", err=True)
            continue
        for line in renewed:
            click.echo(f"renewed {line}")
        sys.stdout.flush()


@ca.command()
@_dir_option
@click.option("--finish", is_flag=True, help="Drop the old roots once no leaf uses them.")
@_errors_exit_2
def rotate(directory: Path, finish: bool) -> None:
    """Start a root rotation (a new root, trusted beside the old), or finish it."""
    authority = CertificateAuthority(directory)
    if finish:
        dropped = authority.finish_rotation()
        click.echo(f"dropped {', '.join(dropped)}" if dropped else "no old root to drop")
        if dropped:
            _audited(directory, "rotate-finish", dropped=" ".join(dropped))
        return
    root = authority.rotate()
    _audited(directory, "rotate", root=root.fingerprint)
    click.echo(
        f"new root {root.fingerprint}, trusted beside the old; next: `meridian ca renew`, "
        "reload every holder, then `meridian ca rotate --finish`"
    )


@ca.command()
@_dir_option
@click.option("--json", "as_json", is_flag=True)
@_errors_exit_2
def status(directory: Path, as_json: bool) -> None:
    """Each root and identity: expiry, time left, state; warnings exit 1."""
    rows = status_rows(CertificateAuthority(directory), time.time())
    warnings = problems(rows)
    if as_json:
        click.echo(json.dumps({"rows": rows, "warnings": warnings}, indent=2))
    else:
        for row in rows:
            left = int(row["left_s"])  # type: ignore[call-overload]
            click.echo(
                f"{row['kind']:<9} {row['state']:<14} {_human(left):>8}  {row['not_after']}  {row['name']}"
            )
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
    if warnings:
        sys.exit(1)


def _human(seconds: int) -> str:
    if seconds < 0:
        return "expired"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
