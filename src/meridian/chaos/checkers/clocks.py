"""HLC invariants, from what the replicated workload observed.

Each write stores a unique integer; any read (``rget``) or convergence
snapshot that returns it also returns the write's HLC and region. Checked:

- **within max_offset**: a write's HLC wall time (its top 48 bits, in ms) lies
  within ``max_offset_ms`` of the real time of the write: not before its invoke
  minus the bound, not after its completion plus the bound (sandbox regions
  share one host clock, so the real time is the history's wall time);
- **monotonic per agent**: of two writes by the same region, the one that
  completed before the other was invoked has the smaller HLC;
- **stable**: every observation of one write reports the same HLC and region.
"""

from __future__ import annotations

from typing import Any

from meridian.chaos.checkers.convergence import decode_written
from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History, Op

LOGICAL_BITS = 16


def observations(history: History) -> list[tuple[int, int, str]]:
    """(written value, hlc, region) from every read and convergence snapshot."""
    out: list[tuple[int, int, str]] = []
    for op in history.ops():
        entries: list[dict[str, Any]] = []
        if op.f == "rget" and op.type == "ok" and isinstance(op.value, dict):
            entries.append(op.value)
        elif op.f == "converge" and op.type == "ok":
            for snap in op.value.get("regions", {}).values():
                entries.extend(snap.values())
        for entry in entries:
            value = decode_written(str(entry.get("value", "")))
            if value is not None and entry.get("hlc"):
                out.append((value, int(entry["hlc"]), str(entry.get("region", ""))))
    return out


class HlcChecker:
    name = "hlc"

    def __init__(self, max_offset_ms: int = 250) -> None:
        self.max_offset_ms = max_offset_ms

    def check(self, history: History) -> Verdict:
        writes: dict[int, Op] = {
            int(op.invoke.value): op for op in history.ops() if op.f == "rput" and op.type != "fail"
        }
        seen: dict[int, tuple[int, str]] = {}
        errors: list[dict[str, Any]] = []
        for value, hlc, region in observations(history):
            if value not in writes:
                continue
            if value in seen and seen[value] != (hlc, region):
                errors.append(
                    {"value": value, "problem": f"observed as {seen[value]} and {(hlc, region)}"}
                )
            seen[value] = (hlc, region)
        bound_ns = self.max_offset_ms * 1_000_000
        for value, (hlc, _region) in sorted(seen.items()):
            op = writes[value]
            wall_ms = hlc >> LOGICAL_BITS
            low = (op.invoke.wall_ns - bound_ns) // 1_000_000
            if op.completion is not None and op.type == "ok":
                high = (op.completion.wall_ns + bound_ns) // 1_000_000
            else:
                high = None  # an indeterminate write may land any time later
            if wall_ms < low or (high is not None and wall_ms > high):
                errors.append(
                    {
                        "value": value,
                        "region": op.region,
                        "problem": f"HLC wall {wall_ms} ms outside [{low}, {high}] "
                        f"(max_offset {self.max_offset_ms} ms)",
                    }
                )
        by_region: dict[str, list[tuple[Op, int]]] = {}
        for value, (hlc, _region) in seen.items():
            op = writes[value]
            if op.type == "ok":
                by_region.setdefault(op.region, []).append((op, hlc))
        for region, items in sorted(by_region.items()):
            items.sort(key=lambda it: it[0].end or 0)
            # a precedes b in real time iff end(a) < start(b); each write is compared
            # with the highest HLC among the writes that precede it (quadratic, fine
            # for the few thousand writes of a run).
            done: list[tuple[int, int, int]] = []  # (end, hlc, value)
            for op, hlc in items:
                prior = [d for d in done if d[0] < op.start]
                if prior:
                    top = max(prior, key=lambda d: d[1])
                    if top[1] >= hlc:
                        errors.append(
                            {
                                "region": region,
                                "value": int(op.invoke.value),
                                "problem": f"HLC {hlc} not above {top[1]} of earlier write {top[2]}",
                            }
                        )
                done.append((op.end or 0, hlc, int(op.invoke.value)))
        details = {"writes_observed": len(seen), "writes": len(writes)}
        if not seen:
            return Verdict(self.name, None, "no write's HLC was observed", details=details)
        if errors:
            return Verdict(self.name, False, f"{len(errors)} HLC violation(s)", errors, details)
        return Verdict(
            self.name,
            True,
            f"{len(seen)} writes: HLCs monotonic per region, within {self.max_offset_ms} ms",
            details=details,
        )
