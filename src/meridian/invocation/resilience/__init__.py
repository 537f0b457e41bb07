"""Resilience for calls between services (DESIGN §5): pure state machines, no I/O.

Each module is one mechanism; the invocation path composes them per call:

- :mod:`.policy`: the frozen configuration of everything below;
- :mod:`.overrides`: which policy applies to a call (per service, per route);
- :mod:`.deadline`: ``grpc-timeout`` / ``Meridian-Timeout-Ms`` in and out;
- :mod:`.balancer`: region order (locality, RTT) and least-outstanding instance choice;
- :mod:`.breaker`: circuit breaker per (service, region);
- :mod:`.bulkhead`: concurrency limit per target, failing fast;
- :mod:`.outlier`: outlier ejection per instance;
- :mod:`.retry`: which calls may be retried, backoff with full jitter;
- :mod:`.budget`: the retry budget capping extra load;
- :mod:`.window`: the sliding windows the breaker and the budget count in.

Time is always a monotonic reading in seconds passed in by the caller, and
randomness is an injected ``() -> float``, so every rule here is testable
without a clock or a network.
"""

from meridian.invocation.resilience.balancer import (
    Candidate,
    RegionView,
    pick_instance,
    region_order,
)
from meridian.invocation.resilience.breaker import (
    ALLOWED_TRANSITIONS,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    Permit,
    Transition,
    TransitionReason,
)
from meridian.invocation.resilience.budget import RetryBudget
from meridian.invocation.resilience.bulkhead import Bulkhead, BulkheadLease, BulkheadRegistry
from meridian.invocation.resilience.deadline import (
    GRPC_TIMEOUT_HEADER,
    HTTP_TIMEOUT_HEADER,
    format_grpc_timeout,
    format_timeout_ms,
    outgoing_headers,
    parse_grpc_timeout,
    parse_timeout_ms,
    resolve_deadline,
)
from meridian.invocation.resilience.outlier import (
    CallOutcome,
    OutlierDetector,
    OutlierEvent,
    classify_grpc,
    classify_http,
    ejection_duration,
)
from meridian.invocation.resilience.overrides import PolicySet
from meridian.invocation.resilience.policy import (
    BalancerPolicy,
    BreakerPolicy,
    BulkheadPolicy,
    FallbackPolicy,
    OutlierPolicy,
    ResiliencePolicy,
    RetryBudgetPolicy,
    RetryPolicy,
    TimeoutPolicy,
    WindowKind,
)
from meridian.invocation.resilience.retry import (
    GrpcIdempotency,
    RetryDecision,
    RetryVerdict,
    decide,
    grpc_request_retryable,
    http_request_retryable,
    outcome_retryable,
)

__all__ = [
    "ALLOWED_TRANSITIONS",
    "GRPC_TIMEOUT_HEADER",
    "HTTP_TIMEOUT_HEADER",
    "BalancerPolicy",
    "BreakerPolicy",
    "BreakerRegistry",
    "BreakerState",
    "Bulkhead",
    "BulkheadLease",
    "BulkheadPolicy",
    "BulkheadRegistry",
    "CallOutcome",
    "Candidate",
    "CircuitBreaker",
    "FallbackPolicy",
    "GrpcIdempotency",
    "OutlierDetector",
    "OutlierEvent",
    "OutlierPolicy",
    "Permit",
    "PolicySet",
    "RegionView",
    "ResiliencePolicy",
    "RetryBudget",
    "RetryBudgetPolicy",
    "RetryDecision",
    "RetryPolicy",
    "RetryVerdict",
    "TimeoutPolicy",
    "Transition",
    "TransitionReason",
    "WindowKind",
    "classify_grpc",
    "classify_http",
    "decide",
    "ejection_duration",
    "format_grpc_timeout",
    "format_timeout_ms",
    "grpc_request_retryable",
    "http_request_retryable",
    "outcome_retryable",
    "outgoing_headers",
    "parse_grpc_timeout",
    "parse_timeout_ms",
    "pick_instance",
    "region_order",
    "resolve_deadline",
]
