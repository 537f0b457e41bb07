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

Beyond those, an :class:`EndpointPolicy` (``[invocation]`` ``loopback_endpoints``
and ``allowed_networks``) refuses loopback outside the sandbox (an instance at
127.0.0.1 would make every caller's agent call itself), and keeps addresses
inside the networks a deployment names.

A host name is checked as written; where it resolves is not checked yet (see
docs/security.md).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class EndpointPolicy:
    """What a deployment allows beyond the rules above: loopback endpoints (the
    sandbox's services listen on 127.0.0.1), and, when ``networks`` is not
    empty, only addresses inside them."""

    loopback: bool = True
    networks: tuple[Network, ...] = ()


#: The sandbox's: loopback allowed, any network.
SANDBOX = EndpointPolicy()
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_loopback(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return inner.is_loopback
    return ip.is_loopback


def network_violations(
    networks: object, field: str
) -> tuple[tuple[Network, ...], list[FieldViolation]]:
    """Parse a configured list of networks (CIDR text), naming each bad entry."""
    if not isinstance(networks, list | tuple) or len(networks) > 256:
        return (), [
            FieldViolation(field, 'must be a list of at most 256 networks such as "10.0.0.0/8"')
        ]
    out: list[Network] = []
    v: list[FieldViolation] = []
    for i, text in enumerate(networks):
        try:
            if not isinstance(text, str):
                raise ValueError
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            v.append(
                FieldViolation(
                    f"{field}[{i}]",
                    f"must be a network in CIDR form with no host bits set; got {str(text)[:60]!r}",
                )
            )
    return tuple(out), v


def host_violations(
    host: str, field: str, policy: EndpointPolicy = SANDBOX
) -> list[FieldViolation]:
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
        if kind:
            return [FieldViolation(field, f"must not be {kind}; got {shown}")]
        if not policy.loopback and _is_loopback(ip):
            return [_loopback_violation(field, shown)]
        if policy.networks and not any(
            ip.version == net.version and ip in net for net in policy.networks
        ):
            return [
                FieldViolation(field, f"must be inside invocation.allowed_networks; got {shown}")
            ]
        return []
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
    if not policy.loopback and (bare in LOOPBACK_NAMES or bare.endswith(".localhost")):
        return [_loopback_violation(field, shown)]
    return []


def _loopback_violation(field: str, shown: str) -> FieldViolation:
    return FieldViolation(
        field,
        "must not be a loopback address outside the sandbox: every caller's agent would "
        f"call itself (invocation.loopback_endpoints); got {shown}",
    )
