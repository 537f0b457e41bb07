"""Exactly one effect per idempotency key.

The interface for the idempotent-commands workload (DESIGN §4), which comes
with the idempotency API:

- ``command`` ops, keyed by idempotency key, may be retried by the client any
  number of times (each attempt is its own op);
- one final ``effects`` op whose ok value is ``{key: count}``: how many times
  each key's effect was observed in the system of record.

Valid iff no key has more than one effect, every key with an ok command has
exactly one, and no effect appears for a key never invoked. A key whose
commands all ended in info or fail may have zero or one effect.
"""

from __future__ import annotations

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History


class ExactlyOnceChecker:
    name = "exactly-once"

    def check(self, history: History) -> Verdict:
        ops = history.ops()
        invoked: set[str] = set()
        acked: set[str] = set()
        effects: dict[str, int] | None = None
        for op in ops:
            if op.f == "command" and op.key is not None:
                invoked.add(op.key)
                if op.type == "ok":
                    acked.add(op.key)
            elif op.f == "effects" and op.type == "ok":
                effects = {str(k): int(v) for k, v in dict(op.value).items()}
        if effects is None:
            return Verdict(self.name, None, "no final effects read")
        if not invoked:
            return Verdict(self.name, None, "no command was invoked")
        errors: list[dict[str, object]] = []
        for key in sorted(set(effects) | acked):
            count = effects.get(key, 0)
            if count > 1:
                errors.append({"key": key, "problem": f"duplicated effect ({count})"})
            elif key in acked and count == 0:
                errors.append({"key": key, "problem": "acknowledged command has no effect"})
            elif key not in invoked and count:
                errors.append({"key": key, "problem": "effect for a key never invoked"})
        details = {"keys": len(invoked), "acknowledged": len(acked)}
        if errors:
            return Verdict(self.name, False, f"{len(errors)} key(s) broken", errors, details)
        return Verdict(
            self.name, True, f"{len(invoked)} keys, each at most once, acked ones once", [], details
        )
