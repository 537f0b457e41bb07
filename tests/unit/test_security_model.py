"""Identities and lifetimes: the pure rules under the CA and mTLS."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.errors import InvalidArgumentError
from meridian.security.model import (
    Identity,
    Kind,
    Validity,
    droppable_roots,
    lifetime_violations,
    parse_duration,
)


def fields(exc: InvalidArgumentError) -> list[str]:
    return [v.field for v in exc.violations]


@pytest.mark.parametrize(
    ("identity", "uri", "slug"),
    [
        (
            Identity("prod.example", Kind.AGENT, "us-east"),
            "spiffe://prod.example/region/us-east/agent",
            "agent-us-east",
        ),
        (
            Identity("prod.example", Kind.SERVICE, "orders"),
            "spiffe://prod.example/service/orders",
            "service-orders",
        ),
        (Identity("prod.example", Kind.GATEWAY), "spiffe://prod.example/gateway", "gateway"),
        (
            Identity("prod.example", Kind.NATS, "us-east-1"),
            "spiffe://prod.example/nats/us-east-1",
            "nats-us-east-1",
        ),
        (
            Identity("prod.example", Kind.OPERATOR, "alice"),
            "spiffe://prod.example/operator/alice",
            "operator-alice",
        ),
    ],
)
def test_identities_round_trip(identity: Identity, uri: str, slug: str) -> None:
    assert identity.uri == uri == str(identity)
    assert identity.slug == slug
    assert Identity.parse(uri) == identity
    assert Identity.from_spec("prod.example", uri) == identity
    short = "gateway" if identity.kind is Kind.GATEWAY else f"{identity.kind}/{identity.name}"
    assert Identity.from_spec("prod.example", short) == identity


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "https://prod.example/service/orders",
        "spiffe://",
        "spiffe://prod.example",
        "spiffe://prod.example/",
        "spiffe://prod.example/service/orders/extra",
        "spiffe://prod.example/service/Orders",
        "spiffe://prod.example/service/../agent",
        "spiffe://prod.example/service/or%64ers",
        "spiffe://prod.example:8443/service/orders",
        "spiffe://user@prod.example/service/orders",
        "spiffe://prod.example/service/orders?x=1",
        "spiffe://prod.example/service/orders#f",
        "spiffe://PROD.example/service/orders",
        "spiffe://prod.example/region/us-east/gateway",
        "spiffe://prod.example/gateway/x",
        "spiffe://prod.example/service/" + "a" * 64,
        "spiffe://prod.example/service/" + "a" * 5000,
        "spiffe://prod.example/service/orders\n",
        "spiffe://prod.example/service/ordérs",
    ],
)
def test_a_malformed_identity_is_refused_naming_the_field(uri: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        Identity.parse(uri, field="peer")
    assert fields(info.value) == ["peer"] * len(info.value.violations)
    assert len(str(info.value)) < 1000  # a hostile value is cut short


@pytest.mark.parametrize(
    "spec",
    ["agent", "agent/", "service/a/b", "robot/x", "gateway/x", "spiffe://other.example/gateway"],
)
def test_a_malformed_short_form_is_refused(spec: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        Identity.from_spec("prod.example", spec)
    assert fields(info.value)[0] == "identity"


def test_a_bad_trust_domain_is_named() -> None:
    for td in ("", "-x", "x-", "UPPER", "a b", "a/b", "a" * 256):
        with pytest.raises(InvalidArgumentError) as info:
            Identity(td, Kind.GATEWAY)
        assert fields(info.value) == ["trust_domain"]


@given(st.text(max_size=300))
def test_parse_never_fails_any_other_way(text: str) -> None:
    try:
        ident = Identity.parse(text)
    except InvalidArgumentError:
        return
    assert Identity.parse(ident.uri) == ident


def test_a_leaf_renews_at_half_life_and_warns_in_its_last_fifth() -> None:
    v = Validity(1000.0, 1000.0 + 100)
    assert [v.state(t) for t in (999, 1000, 1049, 1050, 1079, 1080, 1099, 1100)] == [
        "not-yet-valid",
        "ok",
        "ok",
        "renew",
        "renew",
        "expiring",
        "expiring",
        "expired",
    ]


def test_lifetimes_and_durations() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900
    assert parse_duration("30d") == 30 * 86400
    for bad in ("", "1", "1.5h", "-1h", "1w", "h", "1 h x", "9" * 12 + "s"):
        with pytest.raises(InvalidArgumentError):
            parse_duration(bad)
    assert lifetime_violations(86400) == []
    assert lifetime_violations(1)[0].field == "lifetime"
    assert lifetime_violations(400 * 86400)


def test_an_old_root_is_dropped_only_once_no_leaf_hangs_from_it() -> None:
    trusted = {"old", "new"}
    assert droppable_roots(trusted, "new", {"a": "new", "b": "old"}) == set()
    assert droppable_roots(trusted, "new", {"a": "new", "b": "new"}) == {"old"}
    assert droppable_roots({"new"}, "new", {"a": "new"}) == set()
    assert droppable_roots(trusted, "new", {}) == {"old"}
