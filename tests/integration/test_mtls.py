"""Mutual TLS on the agent's own listeners, with real certificates from the
built-in CA and a real agent on a real nats-server: who gets in over gRPC and
HTTP, what identity the agent sees, and certificates rotated under it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meridian._pb.meridian.v1 import health_pb2, health_pb2_grpc
from meridian.agent.app import Agent
from meridian.client import MeridianClient
from meridian.config import MeridianConfig
from meridian.core.errors import ConfigError
from meridian.security.ca import CertificateAuthority
from meridian.security.pki import ensure_identity, ensure_sandbox, sandbox_ca
from meridian.security.tls import TlsFiles, client_context, grpc_channel_credentials
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, ready_agent, running_agent, served_serial


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsCluster]:
    with NatsCluster("global") as cluster:
        yield cluster


@pytest.fixture
def config(nats_server: NatsCluster, tmp_path: Path) -> MeridianConfig:
    cfg = agent_config(nats_server, ca_dir=tmp_path / "ca")
    ensure_sandbox(cfg)
    return cfg


@contextlib.asynccontextmanager
async def tls_agent(
    config: MeridianConfig, exporter: InMemorySpanExporter | None = None
) -> AsyncIterator[Agent]:
    async with running_agent(config, exporter) as agent:
        yield agent


def operator(config: MeridianConfig) -> TlsFiles:
    assert config.client_tls_dir is not None
    return TlsFiles.in_folder(config.client_tls_dir)


def stranger_ca(tmp_path: Path) -> TlsFiles:
    """A service identity from another CA with the same trust domain."""
    other = CertificateAuthority(tmp_path / "other-ca")
    other.init("meridian.local")
    leaf = other.issue(other_identity("service/orders"))
    return TlsFiles.in_folder(leaf.cert_path.parent)


def other_identity(spec: str) -> Any:
    from meridian.security.model import Identity

    return Identity.from_spec("meridian.local", spec)


def expired(config: MeridianConfig) -> TlsFiles:
    """A service certificate from the right CA that expired an hour ago."""
    ca = sandbox_ca(config)
    leaf = ca.issue(other_identity("service/late"), lifetime_s=60, now=time.time() - 3600)
    return TlsFiles.in_folder(leaf.cert_path.parent)


async def grpc_health(config: MeridianConfig, creds: grpc.ChannelCredentials | None) -> Any:
    target = config.region("us-east").grpc_address
    channel = (
        grpc.aio.insecure_channel(target)
        if creds is None
        else grpc.aio.secure_channel(target, creds)
    )
    async with channel:
        stub = health_pb2_grpc.HealthServiceStub(channel)  # type: ignore[no-untyped-call]
        return await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)


async def grpc_refusal(config: MeridianConfig, creds: grpc.ChannelCredentials | None) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_health(config, creds)
    return err.value


async def http_health(config: MeridianConfig, ctx: ssl.SSLContext | bool) -> tuple[int, Any]:
    url = f"{config.region('us-east').http_url}/v1/health"
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx) as resp:
        return resp.status, await resp.json(content_type=None)


def no_cert_context(config: MeridianConfig) -> ssl.SSLContext:
    """Trusts the agent, presents nothing."""
    ctx = ssl.create_default_context(cafile=str(operator(config).bundle))
    ctx.check_hostname = False
    return ctx


def server_serial(port: int, files: TlsFiles, alpn: list[str] | None = None) -> int:
    """The serial number of the certificate the agent serves to a new connection."""
    return served_serial(port, client_context(files), alpn=alpn or ())


# -- who gets in ---------------------------------------------------------------------


async def test_an_operator_is_served_over_both_and_the_agent_sees_its_identity(
    config: MeridianConfig,
) -> None:
    exporter = InMemorySpanExporter()
    async with tls_agent(config, exporter) as agent:
        resp = await grpc_health(config, grpc_channel_credentials(operator(config)))
        assert resp.region == "us-east"
        status, body = await http_health(config, client_context(operator(config)))
        assert body["region"] == "us-east", (status, body)
        assert config.region("us-east").http_url.startswith("https://")
        agent.tracer_provider.force_flush()
        callers = {
            s.attributes.get("enduser.id")
            for s in exporter.get_finished_spans()
            if s.name == "meridian.v1.HealthService/Check" and s.attributes
        }
    assert callers == {"spiffe://meridian.local/operator/meridian"}


async def test_the_python_client_writes_and_reads_with_a_tls_folder(
    nats_server: NatsCluster, tmp_path: Path
) -> None:
    cfg = agent_config(
        nats_server,
        keyspaces=[{"name": "accounts", "locality": "global"}],
        ca_dir=tmp_path / "ca",
    )
    ensure_sandbox(cfg)
    async with (
        ready_agent(cfg, state=True),
        MeridianClient(cfg.region("us-east").grpc_address, tls=cfg.client_tls_dir) as client,
    ):
        revision = await client.put("accounts", "alice", b"100")
        entry = (await client.get("accounts", "alice")).entry
        assert (entry.value, entry.revision) == (b"100", revision)


async def test_a_caller_without_a_certificate_is_refused(config: MeridianConfig) -> None:
    async with tls_agent(config):
        bundle = operator(config).bundle.read_bytes()
        err = await grpc_refusal(config, grpc.ssl_channel_credentials(root_certificates=bundle))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(aiohttp.ClientError):
            await http_health(config, no_cert_context(config))


async def test_a_plaintext_caller_is_refused(config: MeridianConfig) -> None:
    async with tls_agent(config):
        err = await grpc_refusal(config, None)
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        url = f"http://127.0.0.1:{config.region('us-east').http_port}/v1/health"
        with pytest.raises(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                await resp.read()


async def test_a_certificate_from_another_ca_is_refused(
    config: MeridianConfig, tmp_path: Path
) -> None:
    stranger = stranger_ca(tmp_path)
    async with tls_agent(config):
        # Our bundle (so the client trusts the agent), the stranger's key and certificate.
        creds = grpc.ssl_channel_credentials(
            root_certificates=operator(config).bundle.read_bytes(),
            private_key=stranger.key.read_bytes(),
            certificate_chain=stranger.cert.read_bytes(),
        )
        err = await grpc_refusal(config, creds)
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        ctx = no_cert_context(config)
        ctx.load_cert_chain(stranger.cert, stranger.key)
        with pytest.raises(aiohttp.ClientError):
            await http_health(config, ctx)


async def test_an_expired_certificate_is_refused(config: MeridianConfig) -> None:
    late = expired(config)
    async with tls_agent(config):
        err = await grpc_refusal(config, grpc_channel_credentials(late))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(aiohttp.ClientError):
            await http_health(config, client_context(late))


async def test_a_valid_certificate_for_an_identity_that_may_not_call_is_refused(
    config: MeridianConfig,
) -> None:
    # A NATS server's identity is from the right CA, but has no business calling an agent.
    nats = TlsFiles.in_folder(ensure_identity(config, "nats/global-us-east"))
    async with tls_agent(config):
        err = await grpc_refusal(config, grpc_channel_credentials(nats))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "spiffe://meridian.local/nats/global-us-east" in (err.details() or "")
        status, body = await http_health(config, client_context(nats))
        assert status == 403
        assert body["error"]["code"] == "PERMISSION_DENIED", body


# -- rotation ------------------------------------------------------------------------


async def test_a_reissued_agent_certificate_reaches_new_connections_on_both_ports(
    config: MeridianConfig,
) -> None:
    rc = config.region("us-east")
    ca = sandbox_ca(config)
    async with tls_agent(config):
        # In a thread: the agent serves on this test's event loop.
        before = (
            await asyncio.to_thread(server_serial, rc.grpc_port, operator(config), ["h2"]),
            await asyncio.to_thread(server_serial, rc.http_port, operator(config)),
        )
        assert before[0] == before[1]
        leaf = ca.issue(other_identity("agent/us-east"), ip_addresses=["127.0.0.1"])
        await eventually(
            lambda: asyncio.to_thread(server_serial, rc.grpc_port, operator(config), ["h2"]),
            lambda serial: serial == leaf.serial,
            what="the gRPC port serving the re-issued certificate",
        )
        assert before[0] != leaf.serial
        http_serial = await asyncio.to_thread(server_serial, rc.http_port, operator(config))
        assert http_serial == leaf.serial
        # And the new certificate works for a real call.
        resp = await grpc_health(config, grpc_channel_credentials(operator(config)))
        assert resp.region == "us-east"


async def test_a_root_rotation_with_overlap_never_refuses_a_caller(
    config: MeridianConfig,
) -> None:
    ca = sandbox_ca(config)
    async with tls_agent(config):
        # 1. A new root, trusted beside the old one in every bundle; holders reload.
        ca.rotate()
        old_leaf = operator(config)  # still the old root's leaf, with the new bundle
        old_creds = grpc_channel_credentials(old_leaf)  # read now: the files change below
        old_ctx = client_context(old_leaf)
        # 2. Every leaf, the agent's included, moves to the new root.
        ca.renew()
        assert (await grpc_health(config, old_creds)).region == "us-east"
        assert (await http_health(config, old_ctx))[1]["region"] == "us-east"
        new_creds = grpc_channel_credentials(operator(config))
        assert (await grpc_health(config, new_creds)).region == "us-east"
        # 3. The old root is dropped: a caller still on it is now refused.
        ca.finish_rotation()
        await eventually(lambda: http_refused(config, old_ctx), bool, what="the old root dropped")
        assert (await grpc_refusal(config, old_creds)).code() is grpc.StatusCode.UNAVAILABLE
        assert (await grpc_health(config, new_creds)).region == "us-east"
        assert (await http_health(config, client_context(operator(config))))[1]["region"]


async def http_refused(config: MeridianConfig, ctx: ssl.SSLContext) -> bool:
    try:
        await http_health(config, ctx)
    except aiohttp.ClientError:
        return True
    return False


# -- starting ------------------------------------------------------------------------


def test_an_agent_without_its_certificate_does_not_start(
    nats_server: NatsCluster, tmp_path: Path
) -> None:
    cfg = agent_config(nats_server, ca_dir=tmp_path / "empty-ca")
    with pytest.raises(ConfigError) as err:
        Agent(cfg, "us-east")
    (violation,) = err.value.violations
    assert violation.field == "region[0].tls_dir"
    assert "meridian ca issue agent/us-east" in violation.rule


def test_an_agent_with_another_identitys_certificate_does_not_start(
    config: MeridianConfig,
) -> None:
    wrong = ensure_identity(config, "agent/eu-west")
    region = dataclasses.replace(config.region("us-east"), tls_dir=wrong)
    cfg = dataclasses.replace(config, regions=(region,))
    with pytest.raises(ConfigError) as err:
        Agent(cfg, "us-east")
    assert "names spiffe://meridian.local/region/eu-west/agent" in str(err.value)


def test_insecure_mode_warns_and_stays_on_loopback(
    nats_server: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = agent_config(nats_server)
    assert cfg.security.mode == "insecure"
    with caplog.at_level(logging.WARNING):
        Agent(cfg, "us-east")
    assert any("security.mode is insecure" in r.getMessage() for r in caplog.records)
    region = dataclasses.replace(cfg.region("us-east"), listen_host="0.0.0.0")
    with pytest.raises(ConfigError) as err:
        Agent(dataclasses.replace(cfg, regions=(region,)), "us-east")
    assert "0.0.0.0" in str(err.value)
