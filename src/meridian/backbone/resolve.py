"""Endpoint names checked where the agent connects, not only where they are
registered: a name that resolves to a refused address (a cloud metadata
address, or loopback or a network outside ``invocation.allowed_networks``
under that policy) would otherwise pass registration and be dialled.

:func:`checked_addresses` resolves a host once and checks every address it
resolves to with the same rules as a written address
(:func:`meridian.core.endpoints.host_violations`); callers then dial one of
those addresses, not the name again, so a second lookup cannot answer
differently (DNS rebinding). :class:`CheckedResolver` is the same for aiohttp
(push deliveries, health checks).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from meridian.core.endpoints import EndpointPolicy, host_violations


class EndpointRefused(OSError):
    """A connection the endpoint policy forbids; the message names the rule
    (as ``strerror`` too, which is what aiohttp shows of the cause)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _check(host: str, address: str, policy: EndpointPolicy, field: str) -> None:
    for v in host_violations(address, field, policy):
        shown = "" if address == host else f" ({host[:60]!r} resolves to {address})"
        raise EndpointRefused(f"{v.field} {v.rule}{shown}")


async def checked_addresses(
    host: str, port: int, policy: EndpointPolicy, field: str = "endpoint"
) -> list[str]:
    """The addresses ``host`` resolves to, every one allowed; EndpointRefused
    naming the rule if any is not (a name half of whose addresses are refused
    is refused whole), OSError if it does not resolve."""
    bare = host.strip("[]")
    if _literal(bare):
        _check(host, bare, policy, field)
        return [bare]
    infos = await asyncio.get_running_loop().getaddrinfo(
        bare, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        _check(host, address, policy, field)
    return addresses


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name with an address the policy forbids."""

    def __init__(self, policy: EndpointPolicy, field: str = "endpoint") -> None:
        self.policy = policy
        self.field = field
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for r in found:
            _check(host, r["host"], self.policy, self.field)
        return found

    async def close(self) -> None:
        await self._inner.close()
