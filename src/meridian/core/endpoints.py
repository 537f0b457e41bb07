"""Where the agent may be sent: the hosts refused as instance and push endpoints.

An instance endpoint is where every caller of a service is routed, and a push
endpoint is where the agent POSTs a group's events, so a registration is a way
to make the agent (inside the network) connect somewhere. These are refused,
whatever the configuration (server-side request forgery):

- link-local addresses (169.254.0.0/16, fe80::/10), which hold the cloud
  metadata services (169.254.169.254 on AWS, GCP and Azure), and the other
  metadata addresses (fd00:ec2::254 on AWS, 100.100.100.200 on Alibaba Cloud)
  and names (``metadata.google.internal``, ...);
- the unspecified addresses (0.0.0.0, ::), which reach the local host, and
  multicast and broadcast;
- an IPv4 address spelt any way but the usual four decimals (``2852039166``,
  ``0xa9.0xfe.0xa9.0xfe``, ``169.254.43518``): resolvers read those as
  addresses, so they would slip past a check on the text;
- any of the above inside an IPv6 address (IPv4-mapped, 6to4, NAT64 well-known).

A host name is checked as written; where it resolves is checked again when
the agent connects (not yet: see docs/security.md).
"""

from __future__ import annotations

import ipaddress
import re

from meridian.core.errors import FieldViolation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Link-local (where the cloud metadata services live) and the other metadata addresses.
METADATA_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "fe80::/10", "100.100.100.200/32", "fd00:ec2::254/128")
)
#: Unspecified (the local host), multicast and broadcast.
UNROUTABLE_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/32", "::/128", "224.0.0.0/4", "ff00::/8", "255.255.255.255/32")
)
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.com",
    }
)
#: What inet_aton reads as an IPv4 address: 1 to 4 parts, each decimal, octal
#: (a leading 0) or hex (0x), e.g. "2852039166", "0xa9.0xfe.0xa9.0xfe", "0177.1".
_INET_ATON_PART = r"(0[xX][0-9a-fA-F]*|[0-9]+)"
_NUMERIC_HOST = re.compile(rf"^{_INET_ATON_PART}(\.{_INET_ATON_PART}){{0,3}}\Z")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def denied_address(ip: IPAddress) -> str | None:
    """What kind of refused address ``ip`` is (``a link-local or cloud metadata
    address``, ``an unspecified, multicast or broadcast address``), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return denied_address(inner)
    if any(ip.version == net.version and ip in net for net in METADATA_NETWORKS):
        return "a link-local or cloud metadata address"
    if any(ip.version == net.version and ip in net for net in UNROUTABLE_NETWORKS):
        return "an unspecified, multicast or broadcast address"
    return None


def host_violations(host: str, field: str) -> list[FieldViolation]:
    """The rule ``host`` (a name, an IPv4 address, or an IPv6 address with or
    without brackets) breaks, as one violation naming ``field``; [] if none."""
    shown = repr(host[:60])
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    bare = bare.lower().removesuffix(".")
    try:
        ip = ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        ip = None
    if ip is not None:
        kind = denied_address(ip)
        return [FieldViolation(field, f"must not be {kind}; got {shown}")] if kind else []
    if _NUMERIC_HOST.match(bare):  # an address, but not the usual four decimals
        return [
            FieldViolation(
                field,
                "must write an IPv4 address as four decimal numbers (a host of only "
                f"digits, hex and dots is read as an address); got {shown}",
            )
        ]
    if bare in METADATA_NAMES:
        return [FieldViolation(field, f"must not be a cloud metadata service; got {shown}")]
    return []
