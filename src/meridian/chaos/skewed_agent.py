"""Run one region's agent with a skewed HLC clock source (the clock-skew fault).

::

    python -m meridian.chaos.skewed_agent [--config FILE] --region R --offset-ms N

The same agent as ``meridian agent run``, built with
``clock=OffsetClock(SystemClock(), N)``: its wall clock, and so its HLC and
its skew measurements, run ``N`` ms ahead (behind if negative). Runs until
SIGTERM.
"""

from __future__ import annotations

import asyncio

import click

from meridian.config import load_config
from meridian.core.hlc import SystemClock
from meridian.testing.clock import OffsetClock


@click.command()
@click.option("--config", "config_path", default=None, envvar="MERIDIAN_CONFIG")
@click.option("--region", required=True)
@click.option("--offset-ms", type=int, required=True)
def main(config_path: str | None, region: str, offset_ms: int) -> None:
    from meridian.agent.app import Agent
    from meridian.observability.logs import configure_logging

    cfg = load_config(config_path)
    cfg.region(region)
    configure_logging(region, cfg.agent.log_level)
    agent = Agent(cfg, region, clock=OffsetClock(SystemClock(), offset_ms))
    asyncio.run(agent.run(install_signal_handlers=True))


if __name__ == "__main__":
    main()
