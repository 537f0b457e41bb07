"""The hosts an instance or push endpoint may not name (server-side request
forgery): metadata and link-local addresses however they are spelt."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.endpoints import host_violations
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
