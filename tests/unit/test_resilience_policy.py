"""Resilience policies: defaults, validation naming field and rule, overrides per service and route."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

import meridian.invocation.resilience as resilience
from meridian.core.errors import ConfigError, InvalidArgumentError
from meridian.invocation.resilience.overrides import PolicySet
from meridian.invocation.resilience.policy import (
    BreakerPolicy,
    FallbackPolicy,
    OutlierPolicy,
    ResiliencePolicy,
    RetryBudgetPolicy,
    RetryPolicy,
    TimeoutPolicy,
    WindowKind,
)


def test_defaults_match_the_issue() -> None:
    policy = ResiliencePolicy()
    assert policy.budget.ratio == 0.2  # "caps extra load at 20% by default"
    assert policy.outlier.max_ejected_share == 0.5
    assert policy.retry.max_attempts == 3
    assert policy.breaker.window is WindowKind.COUNT
    assert not policy.fallback.enabled


@pytest.mark.parametrize(
    ("build", "field", "rule"),
    [
        (lambda: BreakerPolicy(window_size=0), "window_size", "1..10000"),
        (lambda: BreakerPolicy(window_size=5, minimum_calls=6), "minimum_calls", "window_size"),
        (lambda: BreakerPolicy(failure_rate=0), "failure_rate", "(0, 1]"),
        (lambda: BreakerPolicy(open_cooldown_s=float("nan")), "open_cooldown_s", "seconds"),
        (lambda: BreakerPolicy(half_open_probes=True), "half_open_probes", "integer"),
        (lambda: RetryBudgetPolicy(ratio=-0.1), "ratio", "[0, 10]"),
        (lambda: OutlierPolicy(max_ejected_share=1.5), "max_ejected_share", "fraction"),
        (lambda: OutlierPolicy(base_ejection_s=60, max_ejection_s=30), "max_ejection_s", ">="),
        (lambda: RetryPolicy(max_attempts=0), "max_attempts", "1..10"),
        (lambda: RetryPolicy(retry_on_http_status=(404,)), "retry_on_http_status", "5xx"),
        (
            lambda: RetryPolicy(retry_on_grpc_code=("NOT_FOUND",)),
            "retry_on_grpc_code",
            "UNAVAILABLE",
        ),
        (lambda: TimeoutPolicy(default_s=100, max_s=10), "default_s", "max_s"),
        (lambda: FallbackPolicy(http_status=700), "http_status", "100..599"),
    ],
)
def test_bad_values_name_the_field_and_the_rule(build: Any, field: str, rule: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        build()
    assert info.value.field == field
    assert rule in info.value.violations[0].rule


def test_every_broken_rule_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        BreakerPolicy(window_size=0, failure_rate=2, half_open_probes=0)
    assert {v.field for v in info.value.violations} == {
        "window_size",
        "failure_rate",
        "half_open_probes",
    }


CONFIG = """
[resilience]
retry.max_attempts = 4
budget.ratio = 0.1

[resilience.service.orders]
breaker.consecutive_failures = 3
breaker.window = "time"

[resilience.service.orders.route."/orders.v1.Orders/Get"]
timeout.default_s = 0.5

[resilience.service.orders.route."/admin/*"]
retry.max_attempts = 1

[resilience.service.orders.route."/admin/reports/*"]
retry.max_attempts = 2
fallback = { enabled = true, http_status = 200, body = "[]" }
"""


def _policies(text: str = CONFIG) -> PolicySet:
    return PolicySet.from_mapping(tomllib.loads(text)["resilience"], source="meridian.toml")


def test_overrides_inherit_from_service_and_default() -> None:
    policies = _policies()
    default = policies.resolve("inventory", "/anything")
    assert default.retry.max_attempts == 4
    assert default.budget.ratio == 0.1
    assert default.breaker == BreakerPolicy()

    orders = policies.resolve("orders", "/orders.v1.Orders/Create")
    assert orders.breaker.consecutive_failures == 3
    assert orders.breaker.window is WindowKind.TIME
    assert orders.retry.max_attempts == 4

    get = policies.resolve("orders", "/orders.v1.Orders/Get")
    assert get.timeout.default_s == 0.5
    assert get.breaker == orders.breaker


def test_exact_route_then_longest_prefix() -> None:
    policies = _policies()
    assert policies.resolve("orders", "/admin/users").retry.max_attempts == 1
    reports = policies.resolve("orders", "/admin/reports/daily")
    assert reports.retry.max_attempts == 2
    assert reports.fallback.enabled and reports.fallback.body == "[]"


def test_config_errors_are_listed_together_with_dotted_paths() -> None:
    text = """
[resilience]
retry.max_attempts = "three"
breaker.window = "sliding"
bulkhed.max_concurrent = 5

[resilience.service.orders]
outlier.max_ejected_share = 2.0
budget.unknown_knob = 1

[resilience.service.orders.route."/x"]
breaker.consecutive_failures = 1
"""
    with pytest.raises(ConfigError) as info:
        _policies(text)
    fields = {v.field: v.rule for v in info.value.violations}
    assert fields["resilience.retry.max_attempts"] == "must be an integer"
    assert "'count', 'time'" in fields["resilience.breaker.window"]
    assert "unknown section" in fields["resilience.bulkhed"]
    assert "fraction" in fields["resilience.service.orders.outlier.max_ejected_share"]
    assert "unknown setting" in fields["resilience.service.orders.budget.unknown_knob"]
    assert "per route" in fields['resilience.service.orders.route."/x".breaker']
    assert "meridian.toml" in str(info.value)


def test_an_empty_table_gives_the_defaults() -> None:
    policies = PolicySet.from_mapping({})
    assert policies.resolve("any") == ResiliencePolicy()


def test_the_package_exports_are_pinned() -> None:
    """Renaming or dropping a public name breaks the invocation path: make it a decision."""
    assert set(resilience.__all__) == {
        name for name in dir(resilience) if not name.startswith("_") and name.isidentifier()
    } - {"balancer", "breaker", "budget", "bulkhead", "deadline", "outlier", "overrides",
         "policy", "retry", "window"}  # fmt: skip
    for name in resilience.__all__:
        assert getattr(resilience, name) is not None
