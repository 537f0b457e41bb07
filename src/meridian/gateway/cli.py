"""``meridian gateway``: run the global gateway in the foreground until SIGTERM.

::

    meridian [--config FILE] gateway [--host HOST] [--port PORT]

Host and port default to the configuration's ``[gateway]`` table (port: the
sandbox's base port + 90). The sandbox starts one (``meridian sandbox up``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

import click

from meridian.config import MeridianConfig


class _HasConfig(Protocol):
    """The ``meridian`` group's context object: the configuration, loaded on first use."""

    @property
    def config(self) -> MeridianConfig: ...


def _run(coro: Coroutine[Any, Any, None]) -> None:
    # uvloop where installed, as for the agent: a proxy spends its time in the loop.
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


@click.command("gateway")
@click.option("--host", default=None, help="Listen address (default: gateway.host).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Listen port (default: gateway.port).",
)
@click.pass_obj
def gateway(obj: _HasConfig, host: str | None, port: int | None) -> None:
    """Run the global gateway: proxy each request to the nearest healthy region."""
    from meridian.gateway.server import Gateway
    from meridian.observability.logs import configure_logging

    cfg = obj.config
    configure_logging("gateway", cfg.agent.log_level)
    _run(Gateway.from_config(cfg, host=host, port=port).run(install_signal_handlers=True))
