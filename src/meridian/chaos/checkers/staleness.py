"""Bounded staleness: a BOUNDED answer is never older than the bound it reports.

The history holds one sequential writer per key (``write`` ops of the
integers 1, 2, 3, … in order, each invoked after the previous one ended) and
``bounded-read`` ops: invoked with ``{"max": seconds}``, ok with ``{"value":
n or None, "served": "bounded" | "strong" | "eventual", "bound": seconds,
"max": seconds}``.

A read of ``n`` returned a value that every write of a larger integer
replaced (the writer is sequential: a later write, if it took effect, is
later in the keyspace's order too). So if a write of ``m > n`` was
acknowledged at ``a`` and the read was invoked at ``t``, the answer was at
least ``t - a`` old when it was served. Violations:

- ``t - a`` exceeds the reported bound (a STRONG answer reports zero): the
  bound was a lie, and for BOUNDED it was also the promise;
- a BOUNDED answer reporting a bound above the one asked for, or a BOUNDED
  request answered at another level than BOUNDED or STRONG;
- a value no write ever tried (invented), one whose write certainly
  failed, or one whose write began only after the read had ended.

Times are the history's (one monotonic clock in the harness), so no clock
offset enters the check.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History, Op

READ = "bounded-read"
WRITE = "write"
NS = 1_000_000_000


class BoundedStalenessChecker:
    name = "bounded-staleness"

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def check(self, history: History) -> Verdict:
        writes: dict[str, dict[int, Op]] = defaultdict(dict)
        reads: list[Op] = []
        for op in history.ops():
            if not (op.key or "").startswith(self.prefix):
                continue
            if op.f == WRITE:
                writes[op.key or ""][int(op.invoke.value)] = op
            elif op.f == READ and op.type == "ok":
                reads.append(op)
        if not reads:
            return Verdict(self.name, None, "no bounded read to check")
        # Per key: acknowledged writes by value, and for each value the earliest
        # acknowledgement of any larger value (a suffix minimum).
        replaced_at: dict[str, tuple[list[int], list[int]]] = {}
        for key, by_value in writes.items():
            acked = sorted(
                (v, op.end) for v, op in by_value.items() if op.type == "ok" and op.end is not None
            )
            values = [v for v, _ in acked]
            earliest: list[int] = []
            low = None
            for _, end in reversed(acked):
                low = end if low is None else min(low, end)
                earliest.append(low)
            replaced_at[key] = (values, earliest[::-1])

        errors: list[dict[str, Any]] = []
        served: dict[str, int] = defaultdict(int)
        worst_margin_s = None
        for read in reads:
            key = read.key or ""
            got = read.value if isinstance(read.value, dict) else {}
            level = str(got.get("served", ""))
            served[level] += 1
            value = got.get("value")
            n = 0 if value is None else int(value)
            asked = float(got.get("max", read.invoke.value.get("max", 0)))
            bound = 0.0 if level == "strong" else float(got.get("bound", 0.0))
            where = {
                "key": key,
                "region": read.region,
                "read_at_s": round(read.start / NS, 3),
                "value": value,
                "served": level,
                "bound_s": round(bound, 4),
                "max_s": asked,
            }
            if level not in ("bounded", "strong"):
                errors.append({**where, "why": f"a BOUNDED read was served {level or 'unknown'}"})
                continue
            if level == "bounded" and bound > asked + 1e-9:
                errors.append({**where, "why": "reported a bound above the one asked for"})
            write = writes[key].get(n) if n else None
            if n and (write is None or write.type == "fail"):
                why = "no write of this value was tried" if write is None else "its write failed"
                errors.append({**where, "why": f"returned a value nobody wrote: {why}"})
                continue
            if write is not None and read.end is not None and write.start > read.end:
                errors.append({**where, "why": "returned a value written after the read ended"})
                continue
            values, earliest = replaced_at.get(key, ([], []))
            i = bisect.bisect_right(values, n)
            if i == len(values):
                continue  # nothing acknowledged replaced it
            age_s = (read.start - earliest[i]) / NS
            margin = age_s - bound
            worst_margin_s = margin if worst_margin_s is None else max(worst_margin_s, margin)
            if margin > 0:
                errors.append(
                    {
                        **where,
                        "why": f"at least {age_s:.3f}s old: replaced by value {values[i]}, "
                        f"acknowledged {age_s:.3f}s before the read",
                        "age_s": round(age_s, 3),
                    }
                )
        details: dict[str, Any] = {
            "reads": len(reads),
            "served": dict(served),
            "writes_acknowledged": sum(len(v[0]) for v in replaced_at.values()),
            "worst_age_minus_bound_s": None if worst_margin_s is None else round(worst_margin_s, 4),
        }
        if errors:
            return Verdict(
                self.name,
                False,
                f"{len(errors)} of {len(reads)} bounded reads broke their bound",
                errors,
                details,
            )
        return Verdict(
            self.name,
            True,
            f"all {len(reads)} bounded reads within their reported bound "
            f"({served['bounded']} served bounded, {served['strong']} strong)",
            [],
            details,
        )
