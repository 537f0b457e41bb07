"""The full matrix: every fault x every workload, and ``global`` under both fsync policies.

Runs one scenario after another, each in its own sandbox, keeps going when one
fails, and writes ``summary.json`` and ``summary.md`` (a table for the README)
into the output directory. The ``sync_interval`` comparison runs the
``global`` workloads (register, bank) under the given faults with NATS's
default interval and with ``always``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from meridian.chaos import report
from meridian.chaos.runner import RunOptions, run
from meridian.chaos.scenarios import Scenario, matrix

GLOBAL_WORKLOADS = ("register", "bank")


def plan(
    duration_s: float, only: str | None, sync_faults: list[str]
) -> list[tuple[str, Scenario, str]]:
    """(run name, scenario, sync_interval) for every run, in order."""
    every = matrix(duration_s)
    runs = [(name, s, "always") for name, s in every.items()]
    for workload in GLOBAL_WORKLOADS:
        for fault in sync_faults:
            s = every[f"{workload}-{fault}"]
            runs.append((f"{s.name}-sync-default", s, "default"))
    if only:
        runs = [r for r in runs if only in r[0]]
    return runs


def _row(
    name: str, sync: str, result: dict[str, Any] | None, error: str | None, took_s: float
) -> dict[str, Any]:
    if result is None:
        return {"run": name, "sync_interval": sync, "valid": None, "error": error, "took_s": took_s}
    return {
        "run": name,
        "sync_interval": sync,
        "valid": result["valid"],
        "verdicts": {v["invariant"]: v["label"] for v in result["verdicts"]},
        "summaries": {v["invariant"]: v["summary"] for v in result["verdicts"]},
        "ops": result["op_counts"],
        "failover": result["failover"],
        "took_s": took_s,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | sync_interval | verdict | invariants | longest gap per region (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "verdicts" not in r:
            lines.append(f"| {r['run']} | {r['sync_interval']} | error | {r['error']} | |")
            continue
        inv = ", ".join(f"{k}: {v}" for k, v in r["verdicts"].items())
        gaps = "; ".join(
            f"{region} {fig['longest_gap_s']}"
            for f in r["failover"]
            for region, fig in f["regions"].items()
        )
        label = {True: "valid", False: "**INVALID**", None: "unknown"}[r["valid"]]
        lines.append(f"| {r['run']} | {r['sync_interval']} | {label} | {inv} | {gaps} |")
    return "\n".join(lines) + "\n"


def _save(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    (out_dir / "summary.md").write_text(markdown(rows))


async def run_matrix(
    out_dir: Path,
    *,
    duration_s: float,
    base_port: int,
    only: str | None = None,
    sync_faults: list[str] | None = None,
) -> bool | None:
    """Run the matrix; return the overall verdict (False if any run was invalid)."""
    rows: list[dict[str, Any]] = []
    runs = plan(duration_s, only, sync_faults or [])
    for i, (name, scenario, sync) in enumerate(runs, 1):
        print(f"== [{i}/{len(runs)}] {name} (sync_interval {sync})", flush=True)
        started = time.monotonic()
        opts = RunOptions(out_dir / name, duration_s, base_port, sync)
        result: dict[str, Any] | None = None
        error = None
        try:
            result = await run(scenario, opts, say=lambda m: print(f"   {m}", flush=True))
        except Exception as exc:  # one broken run must not stop the matrix
            error = f"{type(exc).__name__}: {exc}"
            print(f"   run failed: {error}", flush=True)
        rows.append(_row(name, sync, result, error, round(time.monotonic() - started, 1)))
        _save(out_dir, rows)
    valid = report.overall([{"valid": r["valid"]} for r in rows])
    print(f"matrix verdict: {valid}; summary in {out_dir / 'summary.md'}")
    return valid
