"""Replicated keyspaces: every region converges to the same state after heal.

The replicated workload records:

- ``rput`` ops (key ``"<keyspace>/<key>"``, value the unique integer written,
  as the bytes of its decimal text) and ``incr`` ops (value the delta);
- after the last heal, one ``converge`` op: invoked when the nemesis has
  healed everything, completed with ``{"regions": {region: snapshot},
  "converged": bool}``, the last snapshots it saw; a snapshot maps each key to
  ``{"value": hex, "hlc", "region", "counter"}``.

Valid iff, within ``within_s`` of the heal:

- every region's snapshot is byte-for-byte the same (value, HLC and winning
  region: the same winner everywhere);
- every key that an acknowledged write touched is present;
- each register's value is one that some client wrote, from the region that
  wrote it (nothing invented, winner attributed correctly);
- each counter lies between the sum of acknowledged deltas and that sum plus
  every indeterminate delta.
"""

from __future__ import annotations

from typing import Any

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History


def decode_written(hex_value: str) -> int | None:
    """The integer a workload wrote, from a snapshot's hex bytes; None if not one of ours."""
    try:
        return int(bytes.fromhex(hex_value).decode())
    except (ValueError, UnicodeDecodeError):
        return None


class ConvergenceChecker:
    name = "converged"

    def __init__(self, within_s: float = 60.0) -> None:
        self.within_s = within_s

    def check(self, history: History) -> Verdict:
        ops = history.ops()
        written: dict[int, tuple[str, str]] = {}  # value -> (key, region)
        acked_keys: set[str] = set()
        incr_ok: dict[str, int] = {}
        incr_maybe: dict[str, int] = {}
        converge = None
        for op in ops:
            if op.f == "rput" and op.key is not None:
                written[int(op.invoke.value)] = (op.key, op.region)
                if op.type == "ok":
                    acked_keys.add(op.key)
            elif op.f == "incr" and op.key is not None:
                delta = int(op.invoke.value)
                if op.type == "ok":
                    acked_keys.add(op.key)
                    incr_ok[op.key] = incr_ok.get(op.key, 0) + delta
                elif op.type == "info":
                    incr_maybe[op.key] = incr_maybe.get(op.key, 0) + delta
            elif op.f == "converge" and op.type == "ok":
                converge = op
        if converge is None or converge.end is None:
            return Verdict(self.name, None, "no convergence read after heal")
        regions: dict[str, dict[str, Any]] = converge.value["regions"]
        elapsed_s = (converge.end - converge.start) / 1e9
        details: dict[str, Any] = {
            "regions": sorted(regions),
            "keys": len(acked_keys),
            "elapsed_s": round(elapsed_s, 3),
            "within_s": self.within_s,
        }
        errors: list[dict[str, Any]] = []
        names = sorted(regions)
        if not names:
            return Verdict(self.name, None, "the convergence read saw no region", details=details)
        base = regions[names[0]]
        for other in names[1:]:
            snap = regions[other]
            for key in sorted(set(base) | set(snap)):
                if base.get(key) != snap.get(key):
                    errors.append(
                        {
                            "key": key,
                            "problem": f"{names[0]} and {other} differ",
                            names[0]: base.get(key),
                            other: snap.get(key),
                        }
                    )
        for region in names:
            snap = regions[region]
            for key in sorted(acked_keys - set(snap)):
                errors.append({"key": key, "region": region, "problem": "acknowledged key missing"})
            for key, entry in sorted(snap.items()):
                if key in incr_ok or key in incr_maybe:
                    low = incr_ok.get(key, 0)
                    high = low + incr_maybe.get(key, 0)
                    if not low <= int(entry.get("counter", 0)) <= high:
                        errors.append(
                            {
                                "key": key,
                                "region": region,
                                "problem": f"counter {entry.get('counter')} outside [{low}, {high}]",
                            }
                        )
                    continue
                value = decode_written(str(entry.get("value", "")))
                if value not in written:
                    errors.append({"key": key, "region": region, "problem": "value never written"})
                elif written[value] != (key, entry.get("region")):
                    errors.append(
                        {
                            "key": key,
                            "region": region,
                            "problem": f"value {value} was written as {written[value]}, "
                            f"attributed to {entry.get('region')}",
                        }
                    )
        if elapsed_s > self.within_s:
            errors.append({"problem": f"took {elapsed_s:.1f}s, more than {self.within_s:g}s"})
        if errors:
            return Verdict(
                self.name, False, f"{len(errors)} divergence(s) after heal", errors, details
            )
        return Verdict(
            self.name,
            True,
            f"{len(names)} regions agree on {len(base)} keys, {elapsed_s:.1f}s after heal",
            details=details,
        )
