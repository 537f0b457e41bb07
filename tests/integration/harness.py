"""An in-process agent against a real NATS cluster, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from ssl import SSLContext
from typing import Any

import aiohttp
from cryptography import x509
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meridian.agent.app import Agent
from meridian.config import MeridianConfig, parse_config
from meridian.testing.nats_server import NatsCluster
from meridian.testing.ports import free_port

#: The policy set of the tests that are not about policies.
ALLOW_ALL = '@id("tests-allow-all")\npermit (principal, action, resource);\n'


def agent_config(
    cluster: NatsCluster,
    *,
    peers: Sequence[str] = (),
    keyspaces: Sequence[dict[str, Any]] = (),
    quorum_timeout_s: float = 1.0,
    idempotency: dict[str, Any] | None = None,
    ca_dir: Path | None = None,
    policy: str | None = None,
) -> MeridianConfig:
    """One agent in us-east on ``cluster``; ``peers`` are declared regions without agents.

    With ``ca_dir``, mutual TLS from the built-in CA there (call
    :func:`meridian.security.pki.ensure_sandbox` to issue the certificates),
    authorized by ``policy`` (Cedar text); by default these tests of the
    data plane permit every identity everything (tests/integration/test_policy.py
    covers policies);
    without, the agent runs in insecure mode, which these tests of the data
    plane choose explicitly (tests/integration/test_mtls.py covers TLS)."""
    home = cluster.server("us-east")
    regions: list[dict[str, Any]] = [
        {
            "name": "us-east",
            "nats_urls": [home.url],
            "monitor_url": home.monitor_url,
            "grpc_port": free_port(),
            "http_port": free_port(),
        }
    ]
    for peer in peers:
        regions.append(
            {
                "name": peer,
                "nats_urls": [home.url],
                "grpc_port": free_port(),
                "http_port": free_port(),
            }
        )
    policy_table: dict[str, Any] = {}
    if ca_dir is not None:
        ca_dir.parent.mkdir(parents=True, exist_ok=True)
        path = ca_dir.parent / "policy.cedar"
        path.write_text(policy if policy is not None else ALLOW_ALL)
        policy_table["initial"] = str(path)
    return parse_config(
        {
            "policy": policy_table,
            "region": regions,
            "wan": {"control_port": free_port(), "proxy_base_port": free_port(span=16), "link": []},
            "agent": {
                "status_interval_s": 0.2,
                "peer_timeout_s": 0.3,
                "quorum_timeout_s": quorum_timeout_s,
            },
            "keyspace": list(keyspaces),
            "idempotency": idempotency or {},
            # The regions name their NATS servers, as on a real supercluster, but
            # the test services listen on loopback.
            "invocation": {"loopback_endpoints": "allow"},
            "security": (
                {"mode": "mtls", "ca_dir": str(ca_dir)} if ca_dir else {"mode": "insecure"}
            ),
        },
        env={},
    )


@contextlib.asynccontextmanager
async def running_agent(
    config: MeridianConfig, exporter: InMemorySpanExporter | None = None, region: str = "us-east"
) -> AsyncIterator[Agent]:
    """The agent, once its transports answer (it may not serve yet: no NATS, say)."""
    agent = Agent(config, region, span_exporter=exporter)
    task = asyncio.create_task(agent.run())
    try:
        listening = asyncio.create_task(agent.listening.wait())
        await asyncio.wait({listening, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if task.done():
            task.result()  # what ended it
        assert agent.listening.is_set(), "the agent's transports did not answer within 30s"
        yield agent
    finally:
        agent.request_stop()
        done, _ = await asyncio.wait({task}, timeout=20)
        if not done:
            import sys

            for t in asyncio.all_tasks():
                print("TASK", t.get_name(), file=sys.stderr)
                t.print_stack(file=sys.stderr)
            raise AssertionError("agent did not stop within 20s")
        task.result()


async def http_get(
    url: str, headers: dict[str, str] | None = None, ssl: SSLContext | None = None
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, ssl=ssl if ssl is not None else True) as resp,
    ):
        return resp.status, await resp.json(content_type=None), resp.headers


async def http_post(url: str, body: Any, ssl: SSLContext | None = None) -> tuple[int, Any]:
    """POST ``body``: an object as JSON, or bytes/str as they are (for malformed
    bodies), declared ``application/json`` either way; ``ssl``: the identity
    to present to an agent with mutual TLS."""
    kwargs: dict[str, Any] = (
        {"data": body, "headers": {"Content-Type": "application/json"}}
        if isinstance(body, bytes | str)
        else {"json": body}
    )
    kwargs["ssl"] = ssl if ssl is not None else True
    async with aiohttp.ClientSession() as session, session.post(url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def post_as(
    config: MeridianConfig, path: str, body: Any, as_: str = "operator/meridian"
) -> tuple[int, Any]:
    """POST ``body`` to us-east's agent presenting identity ``as_``'s certificate
    (the CLI's, operator/meridian, by default)."""
    from meridian.security.pki import client_ssl, ensure_identity
    from meridian.security.tls import TlsFiles, client_context

    ctx = (
        client_ssl(config)
        if as_ == "operator/meridian"
        else client_context(TlsFiles.in_folder(ensure_identity(config, as_)))
    )
    return await http_post(f"{config.region('us-east').http_url}{path}", body, ssl=ctx)


@contextlib.asynccontextmanager
async def ready_agent(config: MeridianConfig, *, state: bool = False) -> AsyncIterator[Agent]:
    """:func:`running_agent`, once its event streams and push deliveries (or, with
    ``state``, every keyspace) serve, as the components report it.

    Not ``agent.ready``: a test cluster has the one cluster the test needs, so
    components placed elsewhere (say, idempotency in `global` on a regional
    cluster) never serve there. The timeouts are hang guards."""
    from tests.conftest import eventually

    async with running_agent(config) as agent:
        if state:
            await asyncio.wait_for(agent.state.wait_serving(), 120)
            # A stream can be ready before global has a reachable leader; the first
            # writes would then get QUORUM_UNAVAILABLE while it is elected.
            await eventually(
                lambda: asyncio.sleep(0, agent.monitor.latest.global_.quorum_reachable),
                bool,
                what="a global write committed by a quorum",
            )
        else:
            await asyncio.wait_for(
                asyncio.gather(agent.events.wait_serving(), agent.push.wait_serving()), 120
            )
        yield agent


def served_serial(
    port: int, ctx: SSLContext, *, alpn: Sequence[str] = (), server_hostname: str | None = None
) -> int:
    """The serial number of the certificate a TLS server on ``port`` presents
    to a new connection (blocking: call it in a thread from a test whose event
    loop serves that port)."""
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
