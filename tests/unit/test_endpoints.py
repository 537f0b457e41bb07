"""The hosts an instance or push endpoint may not name (server-side request
forgery): metadata and link-local addresses however they are spelt."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.endpoints import EndpointPolicy, host_violations, network_violations
from meridian.core.errors import InvalidArgumentError
from meridian.events.model import endpoint_violations
from meridian.invocation.model import validate_registration

REFUSED = [
    "169.254.169.254",  # AWS, GCP, Azure metadata
    "169.254.0.1",
    "100.100.100.200",  # Alibaba Cloud metadata
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "[fe80::1]",
    "[fe80::1%25eth0]",
    "[::ffff:169.254.169.254]",  # IPv4-mapped
    "[64:ff9b::a9fe:a9fe]",  # NAT64
    "[2002:a9fe:a9fe::]",  # 6to4
    "2852039166",  # 169.254.169.254 as one number
    "0xa9fea9fe",
    "0xa9.0xfe.0xa9.0xfe",
    "0251.0376.0251.0376",  # octal
    "169.254.43518",
    "0177.0.0.1",
    "1.2.3",
    "metadata.google.internal",
    "Metadata.Google.Internal.",
    "instance-data",
    "0.0.0.0",
    "[::]",
    "224.0.0.1",
    "[ff02::1]",
    "255.255.255.255",
]
ALLOWED = [
    "10.0.0.1",
    "192.168.1.20",
    "127.0.0.1",
    "localhost",
    "orders",
    "orders.svc.cluster.local",
    "cafe.bad",
    "deadbeef",
    "[2001:db8::1]",
    "[::1]",
    "1.2.3.4",
]


@pytest.mark.parametrize("host", REFUSED)
def test_refused_hosts_are_named(host: str) -> None:
    (v,) = host_violations(host, "endpoint")
    assert v.field == "endpoint" and v.rule.startswith("must ")


@pytest.mark.parametrize("host", ALLOWED)
def test_ordinary_hosts_pass(host: str) -> None:
    assert host_violations(host, "endpoint") == []


@given(st.integers(0, 2**16 - 1))
def test_every_link_local_address_is_refused_in_every_spelling(low: int) -> None:
    ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("169.254.0.0")) + low)
    spellings = [
        str(ip),
        str(int(ip)),
        hex(int(ip)),
        ".".join(hex(b) for b in ip.packed),
        f"169.254.{low}",
        f"[::ffff:{ip}]",
    ]
    for host in spellings:
        assert host_violations(host, "endpoint"), host


def test_a_registration_at_the_metadata_address_is_refused() -> None:
    base = dict(
        service="orders",
        protocol="http",
        instance_id="",
        version="",
        metadata={},
        health_path="",
        grpc_health_service="",
        check_interval_s=0,
        ttl_s=0,
        default_ttl_s=10,
        max_ttl_s=300,
    )
    for endpoint in ("169.254.169.254:80", "[fd00:ec2::254]:80", "2852039166:80"):
        with pytest.raises(InvalidArgumentError) as info:
            validate_registration(endpoint=endpoint, **base)  # type: ignore[arg-type]
        assert [v.field for v in info.value.violations] == ["instance.endpoint"]
    assert validate_registration(endpoint="10.0.0.7:8080", **base).endpoint == "10.0.0.7:8080"  # type: ignore[arg-type]


def test_a_push_endpoint_at_the_metadata_address_is_refused() -> None:
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "https://metadata.google.internal/computeMetadata/v1/",
        "http://0xa9fea9fe/",
    ):
        (v,) = endpoint_violations(url)
        assert v.field == "endpoint", url
    assert endpoint_violations("http://billing.internal:8080/events") == []


# -- what a deployment allows (EndpointPolicy, [invocation]) ---------------------------

REAL = EndpointPolicy(loopback=False)
PRIVATE = EndpointPolicy(
    loopback=False,
    networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00:1::/32")),
)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
        "localhost",
        "LOCALHOST.",
        "a.localhost",
    ],
)
def test_loopback_is_refused_outside_the_sandbox(host: str) -> None:
    (v,) = host_violations(host, "instance.endpoint", REAL)
    assert "loopback" in v.rule and "invocation.loopback_endpoints" in v.rule
    assert host_violations(host, "instance.endpoint") == []  # the sandbox allows it


@pytest.mark.parametrize(
    ("host", "ok"),
    [("10.1.2.3", True), ("[fd00:1::5]", True), ("192.168.1.1", False), ("8.8.8.8", False)],
)
def test_only_allowed_networks_pass_when_some_are_named(host: str, ok: bool) -> None:
    v = host_violations(host, "endpoint", PRIVATE)
    assert (v == []) is ok
    if not ok:
        assert "invocation.allowed_networks" in v[0].rule


def test_the_policy_reaches_registrations_and_push_endpoints() -> None:
    base = dict(
        service="orders", protocol="http", instance_id="", version="", metadata={},
        health_path="", grpc_health_service="", check_interval_s=0, ttl_s=0,
        default_ttl_s=10, max_ttl_s=300,
    )  # fmt: skip
    with pytest.raises(InvalidArgumentError) as info:
        validate_registration(endpoint="127.0.0.1:8080", endpoints=REAL, **base)  # type: ignore[arg-type]
    assert [v.field for v in info.value.violations] == ["instance.endpoint"]
    (v,) = endpoint_violations("http://localhost:9000/hooks", REAL)
    assert v.field == "endpoint"


@pytest.mark.parametrize(
    "networks",
    [["10.0.0.1/8"], ["10.0.0.0/33"], ["not-a-net"], [7], "10.0.0.0/8", ["10.0.0.0/8"] * 257],
)
def test_bad_networks_are_named(networks: object) -> None:
    parsed, v = network_violations(networks, "invocation.allowed_networks")
    assert (v and parsed == ()) or v
    assert all(x.field.startswith("invocation.allowed_networks") for x in v)
