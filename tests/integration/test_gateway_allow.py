"""The gateway as a front door: HTTPS towards clients, and only the paths in
``gateway.allow`` reach an agent (invocation and health by default);
everything else, and any path an agent could read as another, is refused at
the gateway with PERMISSION_DENIED."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from meridian.core.paths import DEFAULT_ALLOW
from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity, Kind
from meridian.security.tls import ReloadingContext, TlsFiles, front_door_context
from tests.integration.gateway_harness import GW, HINT, StandInAgent, gateway
from tests.integration.harness import served_serial

pytest_plugins = ["tests.integration.gateway_harness"]


async def get(client: aiohttp.ClientSession, raw_path: str) -> tuple[int, dict[str, object]]:
    url = URL(f"{GW}{raw_path}", encoded=True)
    async with client.get(url, headers={HINT: "us-east"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_by_default_only_invocation_and_health_reach_an_agent(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway(allow=DEFAULT_ALLOW):
        status, body = await get(client, "/v1/health")
        assert status == 200, body
        for path in (
            "/v1/status",
            "/v1/state/put",
            "/v1/state/get",
            "/v1/registry/register",
            "/v1/idempotency/begin",
            "/v1/events/replay",
            "/v1/events/push/register",
            "/metrics-of-agent",
            "/",
        ):
            status, body = await get(client, path)
            assert status == 403, (path, body)
            assert body["error"]["code"] == "PERMISSION_DENIED", (path, body)
            assert "gateway.allow" in str(body["error"]["message"]), (path, body)
        assert not [s for a in agents.values() for s in a.seen], "a refused path reached an agent"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/v1/invoke/x/../../state/put",
        "/v1/invoke/x/%2e%2e/%2E%2E/state/put",
        "/v1/invoke/x/..%2f..%2fstate%2fput",
        "/v1/invoke/x/..%5c..%5cstate",
        "/v1/invoke/./x",
        "/v1/invoke//x",
        "/v1/invoke/x\\..\\..\\state",
    ],
)
async def test_a_path_an_agent_could_read_as_another_is_refused(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession, raw_path: str
) -> None:
    async with gateway(allow=DEFAULT_ALLOW):
        status, body = await get(client, raw_path)
        assert status == 403, body
        assert body["error"]["code"] == "PERMISSION_DENIED"
    assert not [s for a in agents.values() for s in a.seen]


async def test_an_allowed_prefix_passes_what_is_below_it_and_nothing_beside_it(
    agents: dict[str, StandInAgent], client: aiohttp.ClientSession
) -> None:
    async with gateway(allow=("/echo/*",)):
        status, _ = await get(client, "/echo/a/b?x=1")
        assert status == 200
        status, _ = await get(client, "/echoes")
        assert status == 403
        status, _ = await get(client, "/echo")
        assert status == 403


async def test_the_front_door_speaks_tls_and_follows_its_certificate(
    agents: dict[str, StandInAgent], tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    ca.init("meridian.local")
    gateway_id = Identity("meridian.local", Kind.GATEWAY)
    leaf = ca.issue(gateway_id, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    files = TlsFiles.in_folder(leaf.cert_path.parent)
    trusting = ssl.create_default_context(cafile=str(files.bundle))  # host name checked
    async with (
        gateway(allow=DEFAULT_ALLOW, server_tls=ReloadingContext(files, front_door_context)) as gw,
        aiohttp.ClientSession() as client,
    ):
        assert gw.url.startswith("https://")
        async with client.get(f"{gw.url}/v1/health", ssl=trusting) as resp:
            assert resp.status == 200
        # A client that does not trust the CA refuses the gateway; plain HTTP gets nowhere.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with client.get(f"{gw.url}/v1/health") as resp:
                await resp.read()
        plain = gw.url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            async with client.get(f"{plain}/v1/health") as resp:
                await resp.read()
        # A re-issued certificate is served to new connections, without a restart.
        renewed = ca.issue(gateway_id, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        port = int(gw.url.rsplit(":", 1)[1])
        served = await asyncio.to_thread(served_serial, port, trusting, server_hostname="127.0.0.1")
        assert served == renewed.serial
