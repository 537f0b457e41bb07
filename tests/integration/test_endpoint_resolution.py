"""Endpoint names are checked where the agent dials them (backbone/resolve.py):
a name that resolves to an address the policy forbids passes registration
(names are not resolved there) but is never connected to, over HTTP, gRPC or
an HTTP push; the same name under a policy that allows the address works.
Real sockets; ``localhost`` resolves to 127.0.0.1 through /etc/hosts."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meridian.backbone.resolve import CheckedResolver, EndpointRefused, checked_addresses
from meridian.config.model import InvocationConfig
from meridian.core.endpoints import EndpointPolicy, host_violations
from meridian.invocation.upstreams.instance_http import ConnectFailed, InstanceConnections
from meridian.invocation.upstreams.instances import Upstream

ELSEWHERE = EndpointPolicy(networks=(ipaddress.ip_network("10.0.0.0/8"),))
LOOPBACK_OK = EndpointPolicy(networks=(ipaddress.ip_network("127.0.0.0/8"),))
NO_LOOPBACK = EndpointPolicy(loopback=False)


@pytest.fixture
async def instance() -> AsyncIterator[tuple[int, list[str]]]:
    """An HTTP instance on 127.0.0.1; yields its port and the paths it served."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port, seen
    await runner.cleanup()


async def test_registration_cannot_see_what_a_name_resolves_to() -> None:
    # Why the check at connect time exists: the name passes the written check.
    assert host_violations("localhost", "endpoint", ELSEWHERE) == []


async def test_a_name_resolving_outside_the_allowed_networks_is_refused() -> None:
    with pytest.raises(EndpointRefused) as err:
        await checked_addresses("localhost", 80, ELSEWHERE)
    assert "invocation.allowed_networks" in str(err.value)
    assert "'localhost' resolves to 127.0.0.1" in str(err.value)
    assert await checked_addresses("localhost", 80, LOOPBACK_OK) == ["127.0.0.1"]
    with pytest.raises(EndpointRefused):  # a written address gets the same rules
        await checked_addresses("169.254.169.254", 80, LOOPBACK_OK)


async def test_http_calls_dial_only_checked_addresses(instance: tuple[int, list[str]]) -> None:
    port, seen = instance
    refused = InstanceConnections(endpoints=ELSEWHERE)
    with pytest.raises(ConnectFailed) as err:
        await refused.request(
            f"localhost:{port}", "GET", "/a", [], b"", timeout_s=5, max_body=1 << 20
        )
    assert "resolves to 127.0.0.1" in str(err.value)
    assert seen == []
    allowed = InstanceConnections(endpoints=LOOPBACK_OK)
    resp = await allowed.request(
        f"localhost:{port}", "GET", "/b", [], b"", timeout_s=5, max_body=1 << 20
    )
    assert resp.status == 200 and seen == ["/b"]
    refused.close()
    allowed.close()


async def test_grpc_channels_and_pushes_refuse_the_name_too(
    instance: tuple[int, list[str]],
) -> None:
    port, seen = instance
    upstream = Upstream("us-east", InvocationConfig(), NO_LOOPBACK)
    with pytest.raises(EndpointRefused, match="loopback"):
        await upstream.channel(f"localhost:{port}")
    assert upstream.grpc_channels() == []
    await upstream.close()

    async def post(policy: EndpointPolicy) -> Any:
        connector = aiohttp.TCPConnector(resolver=CheckedResolver(policy))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(f"http://localhost:{port}/push", json={}) as resp,
        ):
            return resp.status

    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await post(ELSEWHERE)
    assert "invocation.allowed_networks" in str(info.value)
    assert seen == []
    assert await post(LOOPBACK_OK) == 200 and seen == ["/push"]
