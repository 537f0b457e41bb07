"""How every ``meridian`` command reports a failure it can't go on from."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, NoReturn

import click

from meridian.core.errors import MeridianError


def fail(message: str, code: int = 2) -> NoReturn:
    """``error: <message>`` on stderr, then exit with ``code`` (2: bad input,
    a refused request or an unreachable dependency)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def ask_agent(
    ctx: click.Context, via: str | None, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    """POST ``body`` to ``path`` on an agent; the response, or exit 2 saying why."""
    import aiohttp

    from meridian.security.pki import client_ssl

    try:
        cfg = ctx.find_root().obj.config
        agent = cfg.region(via) if via else cfg.regions[0]
        tls = client_ssl(cfg)
    except MeridianError as exc:
        fail(exc.message)

    async def post() -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.post(f"{agent.http_url}{path}", json=body, ssl=tls or True) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    try:
        status, data = asyncio.run(post())
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        fail(f"cannot reach the {agent.name} agent at {agent.http_url}: {exc or type(exc)}")
    if status != 200:
        err: dict[str, Any] = {"message": str(data)}
        if isinstance(data, dict):
            err = data.get("error", data)
        violations = err.get("violations") or []
        lines = [f"{v['field']}: {v['rule']}" for v in violations] or [err.get("message", "")]
        fail(f"{agent.name} agent refused it ({err.get('code', status)}):\n  " + "\n  ".join(lines))
    result: dict[str, Any] = data
    return result
