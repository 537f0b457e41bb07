"""How every ``meridian`` command reports a failure it can't go on from."""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def fail(message: str, code: int = 2) -> NoReturn:
    """``error: <message>`` on stderr, then exit with ``code`` (2: bad input,
    a refused request or an unreachable dependency)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
