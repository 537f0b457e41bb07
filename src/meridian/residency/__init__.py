"""Data residency, checked where the data is: ``meridian residency check``.

- ``model``: pure; the inventory of what each server stores, the rules from the
  configuration, the judgement, and the parsers of the servers' monitoring answers;
- ``check``: the I/O that takes the inventory (monitoring endpoints, JetStream);
- ``cli``: the command.

The rules themselves, and where the agents enforce them, are in
:mod:`meridian.core.residency`.
"""

from __future__ import annotations

from meridian.residency.model import (
    Inventory,
    Judgement,
    MonitorAnswerError,
    Rules,
    Server,
    StoredStream,
    Violation,
    judge,
    violations,
)

__all__ = [
    "Inventory",
    "Judgement",
    "MonitorAnswerError",
    "Rules",
    "Server",
    "StoredStream",
    "Violation",
    "judge",
    "violations",
]
