"""Retry budget: retries may add at most a fixed share of extra load.

This follows Finagle's ``RetryBudget`` (a token bucket whose tokens expire) and
Envoy's ``retry_budget`` (``budget_percent`` plus ``min_retry_concurrency``),
expressed over a time window. Every original request is
:meth:`~RetryBudget.deposit`\\ ed; every retry must be admitted by
:meth:`~RetryBudget.try_withdraw`. A reserve of
``min_retries_per_s * window_s`` lets a service with little traffic still
retry at all.

**The guarantee.** Time is cut into slices of ``window_s / window_buckets``
seconds (see :class:`~meridian.core.window.TimeWindow`). For every
run ``W`` of at most ``window_buckets`` consecutive slices, at every moment::

    retries(W) <= ratio * requests(W) + min_retries_per_s * window_s

So with the default ratio 0.2, once traffic is well above the reserve, retries
add at most 20% to the load the target sees, over any window, however badly it
fails. The arithmetic is exact (integers in millionths: ``ratio`` and the
reserve are taken to six decimal places), so the bound holds without rounding
slack.

This is stricter than Finagle, whose check covers only the window as it is
when a retry is asked for: there, a burst of requests followed, a few slices
later, by a burst of retries can exceed the ratio over a window that has
dropped the requests but still holds the retries. Here a retry is admitted
only if the bound still holds over every window that ends at the current
slice, and so, since requests only add, over every later window too. Tokens
can't be hoarded: retries follow their requests within one backoff, far less
than the window, so under real traffic the difference is only that.

A retry refused by the budget is counted in :attr:`RetryBudget.exhausted`;
export it, since a climbing count means the target is failing faster than the
budget lets the caller paper over.
"""

from __future__ import annotations

from meridian.core.window import TimeWindow
from meridian.invocation.resilience.policy import RetryBudgetPolicy

#: Token amounts are kept in millionths so the budget check is exact.
SCALE = 1_000_000


class RetryBudget:
    """A retry budget for one target; ``now`` is monotonic seconds, passed in."""

    def __init__(self, policy: RetryBudgetPolicy | None = None) -> None:
        self.policy = policy or RetryBudgetPolicy()
        self._ratio = round(self.policy.ratio * SCALE)
        self._reserve = round(self.policy.min_retries_per_s * self.policy.window_s * SCALE)
        # counters per slice: requests (deposits), retries (withdrawals)
        self._window = TimeWindow(self.policy.window_s, self.policy.window_buckets, 2)
        #: Retries refused because the budget was spent.
        self.exhausted = 0

    def deposit(self, now: float) -> None:
        """Count one original request (not a retry)."""
        self._window.add(now, 1, 0)

    def try_withdraw(self, now: float) -> bool:
        """Take leave for one retry; False (and nothing taken) if the budget is spent."""
        if self._headroom(now) >= SCALE:
            self._window.add(now, 0, 1)
            return True
        self.exhausted += 1
        return False

    def balance(self, now: float) -> float:
        """How many retries the budget would admit right now (may be fractional)."""
        return max(0, self._headroom(now)) / SCALE

    def totals(self, now: float) -> tuple[int, int]:
        """(requests, retries) counted in the whole window at ``now``."""
        requests, retries = self._window.totals(now)
        return requests, retries

    def _headroom(self, now: float) -> int:
        """The least spare allowance (in millionths) over the windows ending now."""
        least = None
        requests = retries = 0
        for slice_requests, slice_retries in self._window.newest_first(now):
            requests += slice_requests
            retries += slice_retries
            spare = self._ratio * requests + self._reserve - retries * SCALE
            least = spare if least is None else min(least, spare)
        assert least is not None
        return least
