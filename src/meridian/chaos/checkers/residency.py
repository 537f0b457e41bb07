"""Data residency: nothing resident is stored or served outside its regions.

The residency workload records two kinds of op:

- ``outside``: a read, write or publish of resident data from a region outside
  its residency. Each must fail with RESIDENCY_VIOLATION; one that succeeds
  served or stored resident data where it may not be. A timeout (info) is
  counted, not judged.
- ``residency-check``: after every fault is healed, the inventory of every
  server's streams judged by ``meridian residency check``'s rules
  (:mod:`meridian.residency.model`); ok value ``{"violations": [...],
  "unchecked": [...], "streams": N}``.

Valid only if the check ran, found no byte out of place and left nothing
unchecked, and at least one outside op was refused; unknown if the check did
not complete or no outside op was refused.
"""

from __future__ import annotations

from typing import Any

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History

#: How a refused outside op's error starts (the client's typed error).
REFUSED = "ResidencyViolationError"


class ResidencyChecker:
    name = "residency"

    def check(self, history: History) -> Verdict:
        errors: list[dict[str, object]] = []
        refused = timeouts = 0
        checks: list[dict[str, Any]] = []
        for op in history.ops():
            where = {"event": op.completion.index if op.completion else None, "region": op.region}
            if op.f == "outside":
                error = op.completion.error if op.completion else ""
                if op.type == "ok":
                    errors.append(
                        {**where, "problem": "served outside its residency", "op": op.key}
                    )
                elif op.type == "fail" and (error or "").startswith(REFUSED):
                    refused += 1
                elif op.type == "fail":
                    errors.append({**where, "problem": f"refused, but not for residency: {error}"})
                else:
                    timeouts += 1
            elif op.f == "residency-check" and op.type == "ok" and isinstance(op.value, dict):
                checks.append(op.value)
        details: dict[str, object] = {"refused": refused, "timeouts": timeouts}
        if checks:
            last = checks[-1]
            details["streams"] = last.get("streams")
            for v in last.get("violations") or []:
                errors.append({"problem": "stored outside its residency", "violation": v})
            if last.get("unchecked"):
                errors.append({"problem": "not checked", "unchecked": last["unchecked"]})
        if errors:
            return Verdict(
                self.name,
                False,
                f"{len(errors)} residency breach(es): resident data stored or served outside "
                "its regions",
                errors=errors[:20],
                details=details,
            )
        if not checks:
            return Verdict(self.name, None, "the residency check did not complete", details=details)
        if refused == 0:
            return Verdict(
                self.name, None, "no call from outside the residency was refused", details=details
            )
        return Verdict(
            self.name,
            True,
            f"no resident byte outside its regions on {details['streams']} stream replicas; "
            f"{refused} calls from outside refused",
            details=details,
        )
