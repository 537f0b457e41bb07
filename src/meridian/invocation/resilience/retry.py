"""Retry policy: which calls may be tried again, how often, and after what pause.

**Which requests.** A request is retried only if doing it twice is harmless:

- an HTTP request whose method is idempotent by RFC 9110 §9.2.2: ``GET``,
  ``HEAD``, ``OPTIONS``, ``TRACE``, ``PUT``, ``DELETE`` (methods are
  case-sensitive, so ``get`` is not ``GET``);
- a gRPC method declared ``idempotency_level = IDEMPOTENT`` or
  ``NO_SIDE_EFFECTS`` in its proto;
- any request carrying an ``Idempotency-Key``: the idempotency store replays
  the first outcome instead of running the command again (DESIGN §4).

A ``POST`` or ``PATCH`` (or an unmarked gRPC method) without a key is never
retried, not even after a connection failure where it may never have been
sent: "may" is not good enough for a payment.

**Which outcomes.** The statuses and codes in
:attr:`~meridian.invocation.resilience.policy.RetryPolicy.retry_on_http_status` and
``retry_on_grpc_code`` (Envoy's ``retriable-status-codes`` and
``x-envoy-retry-grpc-on``), and transport failures with no response (refused,
reset, per-try timeout).

**When.** Before retry ``n`` (1 for the first retry) the caller sleeps a
uniformly random time in ``[0, min(max_backoff_s, base_backoff_s * 2**(n-1))]``:
"full jitter" from the AWS Architecture Blog's *Exponential Backoff and
Jitter*, which spreads a herd of retrying clients best. The random source is
injected. A retry is refused when the call's deadline would pass during the
pause, since the retry could not finish in time anyway.

**How many.** At most ``max_attempts`` in all (the first try included), and
each retry must be paid for from the target's
:class:`~meridian.invocation.resilience.budget.RetryBudget`; the budget is asked
last, so a retry refused for another reason doesn't spend it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from meridian.invocation.resilience.budget import RetryBudget
from meridian.invocation.resilience.policy import RetryPolicy

#: RFC 9110 §9.2.2.
IDEMPOTENT_HTTP_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

#: A source of uniform random floats in [0, 1), such as ``random.Random(seed).random``.
RandomSource = Callable[[], float]


class GrpcIdempotency(enum.StrEnum):
    """A gRPC method's ``idempotency_level`` option (google/protobuf/descriptor.proto)."""

    UNKNOWN = "IDEMPOTENCY_UNKNOWN"
    NO_SIDE_EFFECTS = "NO_SIDE_EFFECTS"
    IDEMPOTENT = "IDEMPOTENT"


def http_request_retryable(method: str, *, has_idempotency_key: bool = False) -> bool:
    """Whether an HTTP request with this method may be sent more than once."""
    return has_idempotency_key or method in IDEMPOTENT_HTTP_METHODS


def grpc_request_retryable(
    idempotency: GrpcIdempotency = GrpcIdempotency.UNKNOWN, *, has_idempotency_key: bool = False
) -> bool:
    """Whether a gRPC call to a method at this idempotency level may be sent more than once."""
    return has_idempotency_key or idempotency is not GrpcIdempotency.UNKNOWN


def outcome_retryable(
    policy: RetryPolicy,
    *,
    http_status: int | None = None,
    grpc_code: str | None = None,
    transport_failure: bool = False,
) -> bool:
    """Whether this outcome of an attempt is worth another attempt.

    ``transport_failure`` means no response at all (refused, reset, per-try
    timeout). Give exactly one of the three.
    """
    if transport_failure:
        return True
    if http_status is not None:
        return http_status in policy.retry_on_http_status
    if grpc_code is not None:
        return grpc_code in policy.retry_on_grpc_code
    return False


def backoff_ceiling_s(policy: RetryPolicy, retry_number: int) -> float:
    """The longest pause before retry ``retry_number`` (1-based): capped exponential."""
    if retry_number < 1:
        raise ValueError("retry_number starts at 1")
    # Cap the exponent first: 2**1000 would overflow a float multiplication.
    exponent = min(retry_number - 1, 64)
    return min(policy.max_backoff_s, policy.base_backoff_s * 2.0**exponent)


def backoff_s(policy: RetryPolicy, retry_number: int, rand: RandomSource) -> float:
    """The pause before retry ``retry_number``: full jitter, ``rand() * ceiling``."""
    r = min(max(rand(), 0.0), 1.0)
    return r * backoff_ceiling_s(policy, retry_number)


def attempt_deadline(policy: RetryPolicy, now: float, deadline: float | None) -> float | None:
    """When the attempt starting at ``now`` must give up: the call's deadline or the per-try timeout."""
    if policy.per_try_timeout_s is None:
        return deadline
    per_try = now + policy.per_try_timeout_s
    return per_try if deadline is None else min(deadline, per_try)


class RetryVerdict(enum.StrEnum):
    """Why a retry was or wasn't made; a good metrics label."""

    RETRY = "retry"
    NOT_IDEMPOTENT = "not_idempotent"
    OUTCOME_NOT_RETRYABLE = "outcome_not_retryable"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    DEADLINE = "deadline"
    BUDGET_EXHAUSTED = "budget_exhausted"


@dataclass(frozen=True)
class RetryDecision:
    """Retry after ``delay_s`` seconds if ``retry``; ``verdict`` says why (not)."""

    verdict: RetryVerdict
    delay_s: float = 0.0

    @property
    def retry(self) -> bool:
        return self.verdict is RetryVerdict.RETRY


def decide(
    policy: RetryPolicy,
    *,
    attempts_made: int,
    request_retryable: bool,
    outcome_retryable: bool,
    now: float,
    deadline: float | None,
    rand: RandomSource,
    budget: RetryBudget | None = None,
) -> RetryDecision:
    """Whether to try again after ``attempts_made`` failed attempts (>= 1), and when.

    ``deadline`` is the call's absolute deadline on the same monotonic clock as
    ``now`` (None: no deadline). A retry is refused if the deadline has
    passed or would pass before the pause ends. If every other check passes
    and ``budget`` is given, one retry is withdrawn from it; a refusal by the
    budget is final for this call.
    """
    if attempts_made < 1:
        raise ValueError("attempts_made starts at 1 (the first try)")
    if not request_retryable:
        return RetryDecision(RetryVerdict.NOT_IDEMPOTENT)
    if not outcome_retryable:
        return RetryDecision(RetryVerdict.OUTCOME_NOT_RETRYABLE)
    if attempts_made >= policy.max_attempts:
        return RetryDecision(RetryVerdict.ATTEMPTS_EXHAUSTED)
    delay = backoff_s(policy, attempts_made, rand)
    if deadline is not None and deadline - now <= delay:
        return RetryDecision(RetryVerdict.DEADLINE)
    if budget is not None and not budget.try_withdraw(now):
        return RetryDecision(RetryVerdict.BUDGET_EXHAUSTED)
    return RetryDecision(RetryVerdict.RETRY, delay)
