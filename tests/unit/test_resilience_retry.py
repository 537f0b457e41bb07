"""Retry policy: idempotent or keyed requests only, full-jitter backoff, deadline-aware."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.invocation.resilience.budget import RetryBudget
from meridian.invocation.resilience.policy import RetryBudgetPolicy, RetryPolicy
from meridian.invocation.resilience.retry import (
    GrpcIdempotency,
    RetryVerdict,
    attempt_deadline,
    backoff_ceiling_s,
    backoff_s,
    decide,
    grpc_request_retryable,
    http_request_retryable,
    outcome_retryable,
)

POLICY = RetryPolicy(max_attempts=3, base_backoff_s=0.1, max_backoff_s=1.0)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
def test_idempotent_http_methods_are_retryable(method: str) -> None:
    assert http_request_retryable(method)


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT", "get", "", "BREW"])
def test_other_methods_are_retryable_only_with_an_idempotency_key(method: str) -> None:
    assert not http_request_retryable(method)
    assert http_request_retryable(method, has_idempotency_key=True)


def test_grpc_methods_need_an_idempotency_level_or_a_key() -> None:
    assert not grpc_request_retryable()
    assert grpc_request_retryable(GrpcIdempotency.IDEMPOTENT)
    assert grpc_request_retryable(GrpcIdempotency.NO_SIDE_EFFECTS)
    assert grpc_request_retryable(has_idempotency_key=True)


def test_retryable_outcomes() -> None:
    assert outcome_retryable(POLICY, http_status=503)
    assert not outcome_retryable(POLICY, http_status=500)
    assert not outcome_retryable(POLICY, http_status=200)
    assert outcome_retryable(POLICY, grpc_code="UNAVAILABLE")
    assert not outcome_retryable(POLICY, grpc_code="DEADLINE_EXCEEDED")
    assert outcome_retryable(POLICY, transport_failure=True)
    assert not outcome_retryable(POLICY)


def _decide(**kw: object) -> RetryVerdict:
    args: dict[str, object] = {
        "attempts_made": 1,
        "request_retryable": True,
        "outcome_retryable": True,
        "now": 0.0,
        "deadline": None,
        "rand": lambda: 0.5,
    }
    args.update(kw)
    return decide(POLICY, **args).verdict  # type: ignore[arg-type]


def test_a_post_without_a_key_is_never_retried_even_after_a_connect_failure() -> None:
    retryable = http_request_retryable("POST")
    assert _decide(request_retryable=retryable) is RetryVerdict.NOT_IDEMPOTENT


def test_verdicts() -> None:
    assert _decide() is RetryVerdict.RETRY
    assert _decide(outcome_retryable=False) is RetryVerdict.OUTCOME_NOT_RETRYABLE
    assert _decide(attempts_made=3) is RetryVerdict.ATTEMPTS_EXHAUSTED
    # backoff before retry 1 is 0.5 x 0.1 s = 0.05 s
    assert _decide(deadline=0.06) is RetryVerdict.RETRY
    assert _decide(deadline=0.05) is RetryVerdict.DEADLINE
    assert _decide(now=5.0, deadline=4.0) is RetryVerdict.DEADLINE


def test_the_budget_is_asked_last_and_only_spent_on_a_retry() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0, min_retries_per_s=0.1, window_s=10))
    assert _decide(outcome_retryable=False, budget=budget) is RetryVerdict.OUTCOME_NOT_RETRYABLE
    assert _decide(deadline=0.01, budget=budget) is RetryVerdict.DEADLINE
    assert _decide(budget=budget) is RetryVerdict.RETRY  # the reserve held exactly one
    assert _decide(budget=budget) is RetryVerdict.BUDGET_EXHAUSTED


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    ceilings = [backoff_ceiling_s(POLICY, n) for n in range(1, 7)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff_ceiling_s(POLICY, 10_000) == 1.0  # no overflow
    with pytest.raises(ValueError):
        backoff_ceiling_s(POLICY, 0)


@given(st.integers(1, 200), st.floats(0, 1, exclude_max=True), st.integers(0, 2**32))
def test_full_jitter_stays_within_zero_and_the_ceiling(n: int, r: float, seed: int) -> None:
    delay = backoff_s(POLICY, n, lambda: r)
    assert 0 <= delay <= backoff_ceiling_s(POLICY, n)
    seeded = backoff_s(POLICY, n, random.Random(seed).random)
    assert 0 <= seeded <= backoff_ceiling_s(POLICY, n)


def test_a_misbehaving_random_source_is_clamped() -> None:
    assert backoff_s(POLICY, 1, lambda: 7.0) == pytest.approx(0.1)
    assert backoff_s(POLICY, 1, lambda: -1.0) == 0.0


@given(
    attempts=st.integers(1, 12),
    now=st.floats(0, 100, allow_nan=False),
    left=st.one_of(st.none(), st.floats(-1, 2, allow_nan=False)),
    r=st.floats(0, 1, exclude_max=True),
)
def test_a_retry_always_fits_before_the_deadline(
    attempts: int, now: float, left: float | None, r: float
) -> None:
    deadline = None if left is None else now + left
    decision = decide(
        POLICY,
        attempts_made=attempts,
        request_retryable=True,
        outcome_retryable=True,
        now=now,
        deadline=deadline,
        rand=lambda: r,
    )
    if decision.retry:
        assert attempts < POLICY.max_attempts
        assert deadline is None or now + decision.delay_s < deadline


def test_per_try_timeout_bounds_each_attempt_within_the_deadline() -> None:
    policy = RetryPolicy(per_try_timeout_s=0.5)
    assert attempt_deadline(policy, 10.0, None) == 10.5
    assert attempt_deadline(policy, 10.0, 10.2) == 10.2
    assert attempt_deadline(RetryPolicy(), 10.0, 12.0) == 12.0
