"""Registration rules, the registry replica, and invocation request validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.errors import InvalidArgumentError
from meridian.invocation.model import InstanceView, RegistryReplica, validate_registration
from meridian.invocation.service import grpc_call, http_call

GOOD: dict[str, Any] = {
    "service": "orders",
    "endpoint": "127.0.0.1:8080",
    "protocol": "http",
    "instance_id": "",
    "version": "1.2.3",
    "metadata": {"zone": "a"},
    "health_path": "",
    "grpc_health_service": "",
    "check_interval_s": None,
    "ttl_s": None,
    "default_ttl_s": 10.0,
    "max_ttl_s": 300.0,
}


def fields(exc: InvalidArgumentError) -> set[str]:
    return {v.field for v in exc.violations}


def test_a_good_registration_gets_the_defaults() -> None:
    reg = validate_registration(**GOOD)
    assert (reg.health_path, reg.check_interval_s, reg.ttl_s) == ("/healthz", 1.0, 10.0)
    assert reg.metadata == {"zone": "a"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"service": "Orders"}, "instance.service"),
        ({"service": "-x"}, "instance.service"),
        ({"service": "a" * 64}, "instance.service"),
        ({"endpoint": "localhost"}, "instance.endpoint"),
        ({"endpoint": "host:99999"}, "instance.endpoint"),
        ({"endpoint": "a b:80"}, "instance.endpoint"),
        ({"protocol": ""}, "instance.protocol"),
        ({"instance_id": "a.b"}, "instance.instance_id"),
        ({"instance_id": "x" * 129}, "instance.instance_id"),
        ({"instance_id": "a>"}, "instance.instance_id"),
        ({"version": "v" * 65}, "instance.version"),
        ({"metadata": {str(i): "" for i in range(33)}}, "instance.metadata"),
        ({"metadata": {"": "x"}}, "instance.metadata"),
        ({"metadata": {"k": "v" * 513}}, "instance.metadata"),
        ({"health_path": "healthz"}, "instance.health_check.http_path"),
        ({"health_path": "/a b"}, "instance.health_check.http_path"),
        ({"check_interval_s": 0.01}, "instance.health_check.interval"),
        ({"check_interval_s": 61.0}, "instance.health_check.interval"),
        ({"ttl_s": 0.5}, "ttl"),
        ({"ttl_s": 301.0}, "ttl"),
    ],
)
def test_each_broken_rule_names_its_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validate_registration(**{**GOOD, **change})
    assert field in fields(info.value)


def test_every_broken_field_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validate_registration(**{**GOOD, "service": "", "endpoint": "", "protocol": "tcp"})
    assert {"instance.service", "instance.endpoint", "instance.protocol"} <= fields(info.value)


@given(
    service=st.text(max_size=80),
    endpoint=st.text(max_size=300),
    instance_id=st.text(max_size=200),
    health_path=st.text(max_size=1100),
    ttl=st.floats(allow_nan=True, allow_infinity=True),
)
def test_hostile_registrations_are_refused_with_named_fields_or_accepted_clean(
    service: str, endpoint: str, instance_id: str, health_path: str, ttl: float
) -> None:
    try:
        reg = validate_registration(
            **{
                **GOOD,
                "service": service,
                "endpoint": endpoint,
                "instance_id": instance_id,
                "health_path": health_path,
                "ttl_s": ttl,
            }
        )
    except InvalidArgumentError as exc:
        assert fields(exc)
        return
    # Whatever got through is safe as a subject token, a URL and a duration.
    assert all(c.isalnum() or c in "_-" for c in reg.instance_id)
    assert reg.health_path.startswith("/") and " " not in reg.health_path
    assert 1.0 <= reg.ttl_s <= 300.0


def view(iid: str, service: str = "orders", region: str = "us-east") -> InstanceView:
    return InstanceView(iid, service, region, "127.0.0.1:1", "http", True)


def test_the_replica_forgets_tombstoned_and_stale_entries() -> None:
    replica = RegistryReplica(stale_after_s=3.0)
    replica.apply("a", view("a"), now=0.0)
    replica.apply("b", view("b", region="eu-west"), now=0.0)
    replica.apply("c", view("c", service="inventory"), now=0.0)
    assert {v.instance_id for v in replica.instances("orders", now=1.0)} == {"a", "b"}
    replica.apply("a", None, now=1.0)  # deregistered
    assert {v.instance_id for v in replica.instances("orders", now=1.0)} == {"b"}
    replica.apply("b", view("b", region="eu-west"), now=2.5)  # re-announced
    assert [v.instance_id for v in replica.instances("orders", now=5.0)] == ["b"]
    assert replica.instances("orders", now=6.0) == []  # no announcement for 3.5 s
    replica.prune(now=100.0)
    assert replica.seen_at("b") is None


def test_http_calls_are_validated_field_by_field() -> None:
    call = http_call(
        service="orders",
        method="/orders/42",
        verb="get",
        query="a=1&b=2",
        headers=[("Idempotency-Key", "k"), ("Meridian-Service", "evil"), ("X-A", "1")],
        body=b"{}",
        max_body=10,
    )
    assert (call.route, call.verb, call.has_idempotency_key) == ("orders/42", "GET", True)
    assert ("Meridian-Service", "evil") not in call.headers  # reserved, dropped

    cases: list[tuple[dict[str, Any], str]] = [
        ({"service": "Bad"}, "service"),
        ({"method": "a/../b"}, "method"),
        ({"method": "a/%2E%2E/b"}, "method"),
        ({"method": "a/./b"}, "method"),
        ({"method": "a b"}, "method"),
        ({"method": "x" * 3000}, "method"),
        ({"verb": "TRACE"}, "http_verb"),
        ({"query": "a=1 2"}, "query"),
        ({"query": "a" * 9000}, "query"),
        ({"headers": [("Bad Header", "x")]}, "headers"),
        ({"headers": [("X-A", "line\r\nInjected: 1")]}, "headers"),
        ({"headers": [(f"X-{i}", "v") for i in range(101)]}, "headers"),
        ({"body": b"x" * 11}, "body"),
    ]
    base: dict[str, Any] = {
        "service": "orders",
        "method": "x",
        "verb": "POST",
        "query": "",
        "headers": [],
        "body": b"",
        "max_body": 10,
    }
    for change, field in cases:
        with pytest.raises(InvalidArgumentError) as info:
            http_call(**{**base, **change})
        assert field in fields(info.value), (change, info.value)


def test_grpc_calls_are_validated() -> None:
    call = grpc_call(
        service="inventory",
        full_method="/inventory.v1.Inventory/Reserve",
        metadata=[("idempotency-key", "k")],
        body=b"\x08\x01",
        max_body=100,
    )
    assert call.protocol == "grpc" and call.has_idempotency_key
    for service, method, body, field in (
        ("Bad", "/a.B/C", b"", "meridian-service"),
        ("inv", "a.B/C", b"", "method"),
        ("inv", "/a.B/C/D", b"", "method"),
        ("inv", "/a.B/C", b"x" * 101, "request"),
    ):
        with pytest.raises(InvalidArgumentError) as info:
            grpc_call(service=service, full_method=method, metadata=[], body=body, max_body=100)
        assert field in fields(info.value)
