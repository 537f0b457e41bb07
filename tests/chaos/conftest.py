"""The chaos smoke suite: real sandboxes (base port 27000), real faults, real verdicts.

Each test runs one smoke scenario through :func:`meridian.chaos.runner.run`,
which brings up and tears down its own sandbox. Figures such as failover
times are printed (``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from meridian.chaos.runner import RunOptions, run
from meridian.chaos.scenarios import SMOKE

CHAOS_BASE_PORT = 27000


def run_smoke(name: str, out_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Run smoke scenario ``name``; return its report (also written under ``out_dir``)."""
    opts = RunOptions(out_dir, base_port=CHAOS_BASE_PORT, seed=7, **overrides)
    report = asyncio.run(run(SMOKE[name], opts, say=lambda m: print(f"[{name}] {m}")))
    print(f"[{name}] failover: {json.dumps(report['failover'])}")
    print(f"[{name}] ops: {json.dumps(report['op_counts'])}")
    return report


def verdict(report: dict[str, Any], invariant: str) -> dict[str, Any]:
    found = [v for v in report["verdicts"] if v["invariant"] == invariant]
    assert found, f"no verdict for {invariant}: {report['verdicts']}"
    return found[0]


def fault_window(report: dict[str, Any]) -> tuple[int, int]:
    """The (started, stop) nanoseconds of the run's single fault, which must have run."""
    assert len(report["faults"]) == 1, report["faults"]
    fault = report["faults"][0]
    assert fault["error"] is None, fault
    assert fault["started"] is not None and fault["stopped"] is not None, fault
    return fault["started"], fault["stop"]
