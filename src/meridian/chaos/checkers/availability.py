"""``replicated`` keyspaces are always writable (DESIGN §3): even a cut-off region
accepts writes.

Every ``rput`` and ``incr`` must end ok, except while a fault took the
writing region's own processes away (a kill, a pause, the clock-skew fault's
agent swap, whose CLOCK_SKEW refusals are by design) or within ``grace_s``
after such a fault was healed. A partition or a latency spike excuses nothing.
The faults are read from the history's nemesis events.
"""

from __future__ import annotations

from typing import Any

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History

PROCESS_FAULTS = frozenset({"kill-region", "kill", "pause", "clock-skew"})
WRITE_FS = frozenset({"rput", "incr"})


def fault_windows(
    history: History, kinds: frozenset[str]
) -> list[tuple[str, str, int, int | None]]:
    """(kind, region, start, healed) of each nemesis fault of ``kinds``; healed None if never."""
    out: list[tuple[str, str, int, int | None]] = []
    open_: dict[str, tuple[str, str, int]] = {}
    for e in history.events:
        if e.f != "nemesis" or e.key not in kinds or not isinstance(e.value, dict):
            continue
        name = str(e.value.get("name"))
        if e.value.get("phase") == "start" and e.type == "invoke":
            open_[name] = (str(e.key), e.region, e.time)
        elif e.value.get("phase") == "stop" and e.type in ("ok", "info") and name in open_:
            kind, region, start = open_.pop(name)
            out.append((kind, region, start, e.time if e.type == "ok" else None))
    out.extend((kind, region, start, None) for kind, region, start in open_.values())
    return out


def excused(
    region: str, at: int, excuses: list[tuple[str, str, int, int | None]], grace_ns: int
) -> bool:
    """Whether an op of ``region`` at ``at`` fell in one of ``excuses`` (from
    :func:`fault_windows`) of that region, or within ``grace_ns`` after it healed."""
    return any(
        r == region and start <= at and (healed is None or at <= healed + grace_ns)
        for _kind, r, start, healed in excuses
    )


class AlwaysWritableChecker:
    name = "always-writable"

    def __init__(self, grace_s: float = 30.0) -> None:
        self.grace_ns = int(grace_s * 1e9)

    def check(self, history: History) -> Verdict:
        excuses = fault_windows(history, PROCESS_FAULTS)
        writes = [op for op in history.ops() if op.f in WRITE_FS]
        errors: list[dict[str, Any]] = []
        n_excused = 0
        for op in writes:
            if op.type == "ok":
                continue
            if excused(op.region, op.start, excuses, self.grace_ns):
                n_excused += 1
                continue
            errors.append(
                {
                    "region": op.region,
                    "f": op.f,
                    "at_s": round(op.start / 1e9, 3),
                    "type": op.type,
                    "error": op.completion.error if op.completion else "never completed",
                }
            )
        by_region: dict[str, int] = {}
        for err in errors:
            by_region[err["region"]] = by_region.get(err["region"], 0) + 1
        details = {"writes": len(writes), "excused": n_excused, "refused_by_region": by_region}
        if not writes:
            return Verdict(self.name, None, "no replicated write to check", details=details)
        if errors:
            first, last = errors[0]["at_s"], errors[-1]["at_s"]
            return Verdict(
                self.name,
                False,
                f"{len(errors)} of {len(writes)} writes refused ({by_region}), "
                f"between {first}s and {last}s",
                errors,
                details,
            )
        return Verdict(
            self.name, True, f"all {len(writes)} writes accepted ({n_excused} excused)", [], details
        )
