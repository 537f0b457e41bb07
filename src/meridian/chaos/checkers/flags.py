"""Feature flags through faults (docs/flags.md): what each region serves.

The flags workload records:

- ``fset`` ops (key the flag, value the generation written): one writer sets
  generation 1, 2, 3, ... by compare-and-set on the flag's revision, through a
  rotating region, so the committed generations rise with the revision (setup
  wrote generation 0, the checker's ``initial``, before the history began);
- ``feval`` ops (value the generation an agent served, on ok): readers in every
  region evaluating the flag;
- after the last heal, one ``fconverge`` op per region: the generation that
  region serves once every region serves the same one (or the last seen).

Valid iff:

- **available**: every ``feval`` is ok, except in the region whose own
  processes a fault took away (kill, pause, clock skew), during the fault and
  ``grace_s`` after it healed. A partition excuses nothing: an agent cut off
  from the `global` quorum keeps serving the flags it has;
- **monotonic**: each reader (one client of one region's agent) never sees a
  generation older than one it saw before;
- **nothing invented**: every generation served was written by an ``fset``
  that did not fail (a refused write is never served);
- **converged**: after the heal every region serves one generation, at least
  the highest acknowledged one.
"""

from __future__ import annotations

from typing import Any

from meridian.chaos.checkers.availability import PROCESS_FAULTS, excused, fault_windows
from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History


class FlagsChecker:
    name = "flags"

    def __init__(self, grace_s: float = 30.0, initial: int = 0) -> None:
        """``initial``: the generation setup wrote (setup is not in the history)."""
        self.grace_ns = int(grace_s * 1e9)
        self.initial = initial

    def check(self, history: History) -> Verdict:
        ops = history.ops()
        excuses = fault_windows(history, PROCESS_FAULTS)
        written_ok: set[int] = {self.initial}
        written_maybe: set[int] = set()
        for op in ops:
            if op.f == "fset":
                gen = int(op.invoke.value)
                if op.type == "ok":
                    written_ok.add(gen)
                elif op.type == "info":
                    written_maybe.add(gen)
        errors: list[dict[str, Any]] = []
        last_seen: dict[int, int] = {}
        reads = n_excused = 0
        for op in ops:
            if op.f != "feval":
                continue
            reads += 1
            if op.type != "ok":
                if excused(op.region, op.start, excuses, self.grace_ns):
                    n_excused += 1
                    continue
                errors.append(
                    self._error(
                        "unavailable",
                        op,
                        (op.completion.error or "") if op.completion else "never completed",
                    )
                )
                continue
            gen = int(op.value)
            if gen not in written_ok and gen not in written_maybe:
                errors.append(self._error("invented", op, f"generation {gen} was never written"))
            before = last_seen.get(op.invoke.process)
            if before is not None and gen < before:
                errors.append(self._error("went back", op, f"served {gen} after {before}"))
            last_seen[op.invoke.process] = max(gen, before or gen)
        finals = {op.region: op.value for op in ops if op.f == "fconverge" and op.type == "ok"}
        top = max(written_ok, default=0)
        if finals:
            values = set(finals.values())
            if len(values) != 1:
                errors.append({"kind": "diverged", "finals": finals})
            elif next(iter(values)) < top:
                errors.append({"kind": "lost", "finals": finals, "highest_acknowledged": top})
        details = {
            "reads": reads,
            "excused": n_excused,
            "writes_ok": len(written_ok) - 1,
            "writes_maybe": len(written_maybe),
            "highest_acknowledged": top,
            "finals": finals,
        }
        if not reads or len(written_ok) < 2 or not finals:
            return Verdict(
                self.name, None, "no flag reads, writes or final reads to check", details=details
            )
        if errors:
            kinds = sorted({e["kind"] for e in errors})
            return Verdict(
                self.name,
                False,
                f"{len(errors)} violations: {', '.join(kinds)}",
                errors[:50],
                details,
            )
        return Verdict(
            self.name,
            True,
            f"{reads} evaluations ({n_excused} excused), {len(written_ok) - 1} changes; every region "
            f"converged on generation {next(iter(finals.values()))}",
            [],
            details,
        )

    @staticmethod
    def _error(kind: str, op: Any, why: str) -> dict[str, Any]:
        return {"kind": kind, "region": op.region, "at_s": round(op.start / 1e9, 3), "why": why}
