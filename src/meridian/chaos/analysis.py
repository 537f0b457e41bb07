"""Availability and failover figures from a history and its faults (pure).

These are reported, never asserted: the machine's load decides them.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Any

from meridian.chaos.history import History, Op
from meridian.chaos.nemesis import FaultRecord

NS = 1_000_000_000


def client_ops(history: History) -> list[Op]:
    """Ops a client ran in a region (not the final convergence poll)."""
    return [op for op in history.ops() if op.region and op.f not in ("converge", "nemesis")]


def availability(history: History, regions: Sequence[str], bucket_s: float = 1.0) -> dict[str, Any]:
    """Per region and per ``bucket_s`` of completion time: how many ops ended ok, fail, info."""
    bucket_ns = int(bucket_s * NS)
    out: dict[str, list[dict[str, int]]] = {r: [] for r in regions}
    for op in client_ops(history):
        at = op.end if op.end is not None else op.start
        rows = out.setdefault(op.region, [])
        i = at // bucket_ns
        while len(rows) <= i:
            rows.append({"ok": 0, "fail": 0, "info": 0})
        rows[i][op.type] += 1
    width = max((len(r) for r in out.values()), default=0)
    for rows in out.values():
        rows.extend({"ok": 0, "fail": 0, "info": 0} for _ in range(width - len(rows)))
    return {"bucket_s": bucket_s, "regions": out}


def failover(history: History, faults: Sequence[FaultRecord]) -> list[dict[str, Any]]:
    """For each fault and region: the longest stretch without an ok op that overlaps the
    fault, and how long after the fault was healed the first op invoked after it succeeded."""
    oks: dict[str, list[int]] = {}
    ops = client_ops(history)
    for op in ops:
        if op.type == "ok" and op.end is not None:
            oks.setdefault(op.region, []).append(op.end)
    for times in oks.values():
        times.sort()
    end_of_run = max((op.end or op.start for op in ops), default=0)
    out = []
    for f in faults:
        if f.started is None:
            continue
        healed = f.stopped if f.stopped is not None else end_of_run
        per_region: dict[str, Any] = {}
        for region, times in sorted(oks.items()):
            i = bisect.bisect_left(times, f.started)
            before = times[i - 1] if i > 0 else 0
            j = bisect.bisect_right(times, healed)
            after = times[j] if j < len(times) else None
            inside = times[i:j]
            points = [before, *inside, after if after is not None else end_of_run]
            gap = max(b - a for a, b in itertools.pairwise(points)) if len(points) > 1 else 0
            recovered = None
            if f.stopped is not None:
                firsts = [
                    op.end
                    for op in ops
                    if op.region == region and op.type == "ok" and op.start >= f.stopped and op.end
                ]
                recovered = round((min(firsts) - f.stopped) / NS, 3) if firsts else None
            per_region[region] = {
                "longest_gap_s": round(gap / NS, 3),
                "first_ok_after_heal_s": recovered,
            }
        out.append({"fault": f.name, "kind": f.kind, "region": f.region, "regions": per_region})
    return out


def op_counts(history: History) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for op in client_ops(history):
        row = counts.setdefault(op.f, {"ok": 0, "fail": 0, "info": 0})
        row[op.type] += 1
    return counts
