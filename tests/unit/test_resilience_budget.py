"""Retry budget: retries add at most ``ratio`` extra load, plus a small reserve (DESIGN §5)."""

from __future__ import annotations

import collections
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.invocation.resilience.budget import RetryBudget
from meridian.invocation.resilience.policy import RetryBudgetPolicy


def test_a_quiet_service_can_still_retry_from_the_reserve() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.2, min_retries_per_s=0.5, window_s=10))
    admitted = sum(budget.try_withdraw(0.0) for _ in range(10))
    assert admitted == 5  # 0.5/s x 10 s
    assert budget.exhausted == 5


def test_retries_are_capped_at_the_ratio_under_sustained_failure() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.2, min_retries_per_s=0, window_s=10))
    retries = 0
    for i in range(1000):  # 100 requests per second, every one failing
        now = i / 100
        budget.deposit(now)
        retries += budget.try_withdraw(now)
    # The target saw 1000 requests + the retries: about 20% more, never over it.
    assert 150 <= retries <= 200
    assert budget.exhausted == 1000 - retries


def test_deposits_expire_with_the_window() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=1.0, min_retries_per_s=0, window_s=10))
    for _ in range(5):
        budget.deposit(0.0)
    assert budget.balance(0.0) == 5
    assert budget.balance(10.0) == 0  # the slice holding them has left the window
    assert not budget.try_withdraw(10.0)


def test_ratio_zero_and_no_reserve_means_no_retries() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0, min_retries_per_s=0))
    budget.deposit(0)
    assert not budget.try_withdraw(0)


@settings(max_examples=300, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 1.0, 1.5]),
    floor=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]),
    buckets=st.integers(1, 8),
    steps=st.lists(
        st.tuples(st.floats(0, 3, allow_nan=False), st.sampled_from(["request", "retry"])),
        max_size=300,
    ),
)
def test_retries_never_exceed_ratio_times_requests_plus_floor_over_any_window(
    ratio: float, floor: float, buckets: int, steps: list[tuple[float, str]]
) -> None:
    """Checked against an independent log, over every window the budget could cover."""
    window_s = 4.0
    policy = RetryBudgetPolicy(
        ratio=ratio, min_retries_per_s=floor, window_s=window_s, window_buckets=buckets
    )
    budget = RetryBudget(policy)
    width = window_s / buckets
    requests: collections.Counter[int] = collections.Counter()
    retries: collections.Counter[int] = collections.Counter()
    now = 0.0
    for dt, kind in steps:
        now += dt
        idx = math.floor(now / width)
        if kind == "request":
            budget.deposit(now)
            requests[idx] += 1
        elif budget.try_withdraw(now):
            retries[idx] += 1
        # every run of `buckets` consecutive slices is a window the budget covers
        for end in {idx, *retries}:
            span = range(end - buckets + 1, end + 1)
            r = sum(retries[i] for i in span)
            q = sum(requests[i] for i in span)
            assert r <= ratio * q + floor * window_s + 1e-9, (r, q)


@given(
    ratio=st.sampled_from([0.1, 0.2, 0.5]),
    n=st.integers(0, 500),
)
def test_a_full_budget_admits_exactly_the_allowance(ratio: float, n: int) -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=ratio, min_retries_per_s=1, window_s=10))
    for _ in range(n):
        budget.deposit(1.0)
    admitted = 0
    while budget.try_withdraw(1.0):
        admitted += 1
    assert admitted == math.floor(round(ratio * n, 6) + 10)
    assert budget.totals(1.0) == (n, admitted)
    assert budget.balance(1.0) < 1


def test_requests_that_left_the_window_do_not_pay_for_later_retries() -> None:
    """The case hypothesis found against a Finagle-style check: hoarded tokens."""
    budget = RetryBudget(
        RetryBudgetPolicy(ratio=0.2, min_retries_per_s=0, window_s=4, window_buckets=2)
    )
    for _ in range(5):
        budget.deposit(0.0)
    # Two seconds later the window [0, 4) still holds the five requests, but the
    # window [2, 6) would hold the retry and none of them: refuse it.
    assert not budget.try_withdraw(2.0)
    budget.deposit(2.0)
    for _ in range(4):
        budget.deposit(2.0)
    assert budget.try_withdraw(2.0)  # five requests in this slice pay for one retry
