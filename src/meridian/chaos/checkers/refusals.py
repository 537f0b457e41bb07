"""A refused write was not applied: no read ever returns a value whose write failed.

A ``write`` or ``cas`` that ended in ``fail`` (a CONFLICT, a refusal) is
promised not to have taken effect. Each register write stores a unique
integer, so if any ok ``read`` returns the value of a failed write, the
refusal lied. This is one specific way to be non-linearizable, cheap to
check and precise to report (which op, which error, which read saw it).

:func:`failed_as_indeterminate` turns such failures into info ops, so
Porcupine can tell whether the rest of the history is linearizable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History, Op


def _written(op_f: str, value: Any) -> int | None:
    if op_f == "write":
        return int(value)
    if op_f == "cas" and isinstance(value, list) and len(value) == 2:
        return int(value[1])
    return None


class RefusedWritesInvisibleChecker:
    name = "refusal-means-not-applied"

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def check(self, history: History) -> Verdict:
        failed: dict[tuple[str, int], Op] = {}
        reads: list[Op] = []
        for op in history.ops():
            if not (op.key or "").startswith(self.prefix):
                continue
            if op.f in ("write", "cas") and op.type == "fail":
                value = _written(op.f, op.invoke.value)
                if value is not None and op.key is not None:
                    failed[(op.key, value)] = op
            elif op.f == "read" and op.type == "ok" and op.value is not None:
                reads.append(op)
        if not failed:
            return Verdict(self.name, None, "no refused write to check")
        errors = []
        for read in reads:
            refused = failed.get((read.key or "", int(read.value)))
            if refused is None:
                continue
            errors.append(
                {
                    "key": read.key,
                    "value": read.value,
                    "refused_at_s": round(refused.start / 1e9, 3),
                    "refused_in": refused.region,
                    "error": refused.completion.error if refused.completion else None,
                    "read_at_s": round(read.start / 1e9, 3),
                    "read_in": read.region,
                }
            )
        details = {"refused": len(failed), "reads": len(reads)}
        if errors:
            values = sorted({(e["key"], e["value"]) for e in errors})
            return Verdict(
                self.name,
                False,
                f"{len(values)} refused write(s) were applied and read later",
                errors,
                details,
            )
        return Verdict(
            self.name, True, f"none of {len(failed)} refused writes was ever read", [], details
        )


def failed_as_indeterminate(history: History) -> History:
    """The history with every failed write or cas turned into an info op."""
    events = [
        dataclasses.replace(e, type="info") if e.type == "fail" and e.f in ("write", "cas") else e
        for e in history.events
    ]
    return History(events, t0_ns=history.t0_ns, wall_t0_ns=history.wall_t0_ns)
