"""Bring a chaos sandbox up from a process of its own.

::

    python -m meridian.chaos.supervise --config FILE [--sync-interval always|default]

The chaos runner calls this instead of ``Sandbox.up()`` in a worker thread:
``ProcessRecord.alive()`` takes a child's empty ``/proc/<pid>/cmdline`` (seen
right after a spawn from a non-main thread) for a zombie, so ``up()`` from a
thread fails with "exited during start-up" although the child runs. A process
of its own also keeps the runner's event loop (and its clients) free while the
sandbox restarts; and a start-up judged failed that way is retried.
``--sync-interval default`` starts the ``global`` servers
without ``sync_interval: always`` (see :func:`meridian.chaos.runner.use_sync_interval`).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import click

from meridian.config import GLOBAL_CLUSTER, load_config
from meridian.core.errors import MeridianError
from meridian.sandbox.supervisor import Sandbox

SYNC_MODES = ("always", "default")
ATTEMPTS = 3


def use_sync_interval(sandbox: Sandbox, mode: str) -> None:
    """Make ``sandbox`` start its ``global`` servers with fsync policy ``mode``.

    The sandbox hard-codes ``sync_interval: always`` for ``global`` servers and
    has no setting for it; "default" drops that line from this Sandbox object's
    rendered server configurations, so NATS uses its default interval.
    """
    if mode not in SYNC_MODES:
        raise ValueError(f"sync_interval must be one of {SYNC_MODES}, got {mode!r}")
    if mode == "always":
        return
    sandbox.servers = [
        dataclasses.replace(s, config_text=s.config_text.replace("\n  sync_interval: always", ""))
        if s.cluster == GLOBAL_CLUSTER
        else s
        for s in sandbox.servers
    ]


@click.command()
@click.option("--config", "config_path", required=True)
@click.option("--sync-interval", type=click.Choice(SYNC_MODES), default="always")
def main(config_path: str, sync_interval: str) -> None:
    cfg = load_config(config_path)
    sandbox = Sandbox(cfg, config_path, say=lambda m: click.echo(m, err=True))
    use_sync_interval(sandbox, sync_interval)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            sandbox.up()
            return
        except MeridianError as exc:
            # A child whose /proc cmdline is still empty right after spawn is
            # judged dead; it runs, and is found alive by the next attempt.
            if attempt == ATTEMPTS or "exited during start-up" not in str(exc):
                click.echo(f"error: {exc}", err=True)
                sys.exit(1)
            click.echo(f"retrying after: {exc}", err=True)
            time.sleep(1)


if __name__ == "__main__":
    main()
