"""Bank transfers: money is conserved and no balance goes negative.

The workload keeps every account of one bank in a single ``global`` key and
moves money with compare-and-set, so each read is a snapshot of all accounts:

- ``transfer`` ops: invoke value ``{"from", "to", "amount"}``;
- ``balances`` ops: ok value ``{account: balance}``, a whole snapshot.

Every ok snapshot must hold exactly the bank's accounts, sum to the initial
total, and have no negative balance. A transfer that was lost or applied twice
changes the total or drives an account negative in some later snapshot.
"""

from __future__ import annotations

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History


class BankChecker:
    name = "bank"

    def __init__(self, total: int, accounts: list[str], *, key: str | None = None) -> None:
        self.total = total
        self.accounts = sorted(accounts)
        self.key = key

    def check(self, history: History) -> Verdict:
        reads = 0
        errors: list[dict[str, object]] = []
        transfers = {"ok": 0, "fail": 0, "info": 0}
        for op in history.ops():
            if self.key is not None and op.key != self.key:
                continue
            if op.f == "transfer":
                transfers[op.type] += 1
            if op.f != "balances" or op.type != "ok":
                continue
            reads += 1
            snap = op.value
            where = {"event": op.completion.index if op.completion else None, "region": op.region}
            if not isinstance(snap, dict) or sorted(snap) != self.accounts:
                errors.append({**where, "problem": "wrong accounts", "balances": snap})
                continue
            total = sum(int(v) for v in snap.values())
            if total != self.total:
                errors.append(
                    {**where, "problem": f"total {total} != {self.total}", "balances": snap}
                )
            negative = {a: v for a, v in snap.items() if int(v) < 0}
            if negative:
                errors.append({**where, "problem": "negative balance", "balances": snap})
        details = {"reads": reads, "transfers": transfers, "total": self.total}
        if reads == 0:
            return Verdict(self.name, None, "no completed balance read to check", details=details)
        if errors:
            return Verdict(
                self.name,
                False,
                f"{len(errors)} of {reads} snapshots break conservation or go negative",
                errors=errors,
                details=details,
            )
        return Verdict(
            self.name,
            True,
            f"{reads} snapshots conserve {self.total}, none negative; transfers {transfers}",
            details=details,
        )
