"""The verdict a checker returns, and the checker protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from meridian.chaos.history import History

#: How many example violations a verdict keeps.
MAX_ERRORS = 20


@dataclass
class Verdict:
    """The outcome of checking one invariant on one history."""

    invariant: str
    #: True: held; False: violated; None: unknown (could not decide, or nothing to check).
    valid: bool | None
    summary: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return {True: "valid", False: "INVALID", None: "unknown"}[self.valid]

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "valid": self.valid,
            "label": self.label,
            "summary": self.summary,
            "errors": self.errors[:MAX_ERRORS],
            "error_count": len(self.errors),
            "details": self.details,
        }


class Checker(Protocol):
    """Checks one invariant. ``check`` must not mutate the history."""

    name: str

    def check(self, history: History) -> Verdict: ...
