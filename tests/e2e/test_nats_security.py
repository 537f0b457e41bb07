"""The sandbox's NATS servers require a certificate and map it to a user
(verify_and_map): only the agents, the operator and the system account's user
get in, with no password anywhere, and an agent may not take another region's
forwarded calls. Real nats-servers of a real sandbox, real certificates."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest

from meridian.backbone.server import find_nats_server
from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity
from meridian.security.pki import ensure_identity, sandbox_ca
from meridian.security.tls import TlsFiles, client_context
from meridian.testing.ports import free_port
from tests.e2e.conftest import SandboxHandle


async def connect(url: str, tls: ssl.SSLContext | None) -> tuple[Any, list[str]]:
    """A connection (or the exception) and the errors the server sent."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    try:
        nc = await nats.connect(
            url,
            tls=tls,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
            error_cb=on_error,
        )
    except Exception as exc:
        return exc, errors
    return nc, errors


def bundle_only(bundle: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.check_hostname = False
    return ctx


async def test_nats_refuses_whoever_is_not_an_agent_or_the_operator(
    sandbox: SandboxHandle, tmp_path: Path
) -> None:
    config = sandbox.config
    url = config.region("us-east").agent_nats_urls[0]
    ca = sandbox_ca(config)
    td = config.security.trust_domain
    operator = TlsFiles.in_folder(config.client_tls_dir or "")
    service = TlsFiles.in_folder(ensure_identity(config, "service/orders"))
    late = ca.issue(Identity.from_spec(td, "service/late"), lifetime_s=60, now=time.time() - 3600)
    other = CertificateAuthority(tmp_path / "other")
    other.init(td)
    stranger = other.issue(Identity.from_spec(td, "agent/us-east"))  # the right name, wrong CA
    stranger_files = TlsFiles.in_folder(stranger.cert_path.parent)
    stranger_ctx = bundle_only(operator.bundle)
    stranger_ctx.load_cert_chain(stranger_files.cert, stranger_files.key)

    cases = {
        "no client certificate": bundle_only(operator.bundle),
        "a certificate from another CA": stranger_ctx,
        "an expired certificate": client_context(TlsFiles.in_folder(late.cert_path.parent)),
        "a service's certificate (no NATS user)": client_context(service),
    }
    for what, ctx in cases.items():
        got, errors = await connect(url, ctx)
        assert isinstance(got, Exception), f"{what}: connected"
        if what.startswith("a service"):
            assert any("Authorization Violation" in e for e in errors), (what, errors)
    # Plain TCP without TLS gets nowhere either.
    got, _ = await connect(url, None)
    assert isinstance(got, Exception)

    nc, _ = await connect(url, client_context(operator))
    assert not isinstance(nc, Exception), nc
    await nc.close()


async def test_an_agent_may_not_take_another_regions_forwarded_calls(
    sandbox: SandboxHandle,
) -> None:
    config = sandbox.config
    url = config.region("eu-west").agent_nats_urls[0]
    west = TlsFiles.in_folder(config.agent_tls_dir("eu-west"))
    nc, errors = await connect(url, client_context(west))
    assert not isinstance(nc, Exception), nc
    try:
        await nc.subscribe("mg.invoke.us-east")
        await nc.flush()
        for _ in range(50):
            if errors:
                break
            await asyncio.sleep(0.05)
        assert any("permissions violation" in e and "mg.invoke.us-east" in e for e in errors)
        errors.clear()
        await nc.subscribe("mg.invoke.eu-west.probe-only")  # its own region's subjects: fine
        await nc.flush()
        await asyncio.sleep(0.3)
        assert not errors
    finally:
        await nc.close()


@pytest.mark.parametrize("user", ["meridian", "sys"])
async def test_no_password_gets_in(sandbox: SandboxHandle, user: str) -> None:
    url = sandbox.config.region("us-east").agent_nats_urls[0]
    operator = TlsFiles.in_folder(sandbox.config.client_tls_dir or "")
    # The passwords of the old generated configs, over a TLS connection that
    # presents no certificate: refused.
    with_password = url.replace("nats://", f"nats://{user}:{user}@")
    got, _ = await connect(with_password, bundle_only(operator.bundle))
    assert isinstance(got, Exception)
    conf = (sandbox.config.sandbox.workdir / "conf" / "us-east.conf").read_text()
    assert "password" not in conf and "no_auth_user" not in conf


def server_view(monitor_url: str) -> tuple[list[str], dict[str, Any]]:
    """(remote names of the routes, outbound gateways) of a sandbox server."""
    with urllib.request.urlopen(f"{monitor_url}/routez", timeout=3) as resp:
        routes = [r.get("remote_name", "") for r in json.loads(resp.read()).get("routes") or []]
    with urllib.request.urlopen(f"{monitor_url}/gatewayz", timeout=3) as resp:
        outbound = json.loads(resp.read()).get("outbound_gateways") or {}
    return routes, outbound


async def test_routes_and_gateways_are_mutual_tls_between_the_sandboxs_servers(
    sandbox: SandboxHandle,
) -> None:
    config = sandbox.config
    for region in config.regions:
        for ports, name in (
            (region.regional, region.name),
            (region.global_, f"global-{region.name}"),
        ):
            routes, outbound = server_view(f"http://127.0.0.1:{ports.monitor}")
            # Every other region's cluster, plus its home or global cluster.
            assert len(outbound) == len(config.regions), (name, sorted(outbound))
            assert {g["connection"].get("tls_version") for g in outbound.values()} == {"1.3"}, name
            if name.startswith("global-"):
                assert sorted(routes) == sorted(
                    f"global-{o.name}" for o in config.regions if o.name != region.name
                )
        conf = (config.sandbox.workdir / "conf" / f"global-{region.name}.conf").read_text()
        assert conf.count("verify_and_map: true") == 3  # clients, routes, gateways


@pytest.mark.parametrize("kind", ["route", "gateway"])
async def test_routes_and_gateways_refuse_a_server_without_a_nats_server_certificate(
    sandbox: SandboxHandle, tmp_path: Path, kind: str
) -> None:
    """A nats-server with a service's certificate (our CA), one from another CA,
    or none dials a sandbox server's route or gateway port directly: each is
    refused and never joins."""
    config = sandbox.config
    us = config.region("us-east")
    target = us.global_.cluster if kind == "route" else us.regional.gateway
    monitor = f"http://127.0.0.1:{us.global_.monitor if kind == 'route' else us.regional.monitor}"
    td = config.security.trust_domain
    other = CertificateAuthority(tmp_path / "other")
    other.init(td)
    credentials = {
        "a service's certificate": TlsFiles.in_folder(ensure_identity(config, "service/orders")),
        "another CA's certificate": TlsFiles.in_folder(
            other.issue(Identity.from_spec(td, "nats/global-us-east")).cert_path.parent
        ),
        "no certificate": None,
    }
    for what, files in credentials.items():
        log = await asyncio.to_thread(
            run_rogue, tmp_path / what.replace(" ", "-"), kind, target, files
        )
        attempts = log.count(f"127.0.0.1:{target} - ")  # each connection's log prefix
        assert attempts >= 1, f"{what}: the rogue never dialled\n{log[-1500:]}"
        if files is not None and "service" in what:
            assert "Authorization Violation" in log, what
        routes, outbound = server_view(monitor)
        assert "rogue" not in routes and "ap-south-rogue" not in outbound, what


def run_rogue(work: Path, kind: str, port: int, files: TlsFiles | None) -> str:
    """Run a nats-server that dials ``port`` as a route or gateway for a few seconds; its log."""
    work.mkdir(parents=True)
    tls = (
        f'tls {{ cert_file: "{files.cert}", key_file: "{files.key}", ca_file: "{files.bundle}", timeout: 2 }}'
        if files is not None
        else ""
    )
    rogue_port, link_port = free_port(), free_port()
    if kind == "route":
        block = f"""cluster {{
  name: "global"
  listen: "127.0.0.1:{link_port}"
  routes: ["nats://127.0.0.1:{port}"]
  {tls}
}}"""
    else:
        block = f"""gateway {{
  name: "ap-south-rogue"
  listen: "127.0.0.1:{link_port}"
  gateways: [ {{ name: "us-east", urls: ["nats://127.0.0.1:{port}"] }} ]
  {tls}
}}"""
    conf = work / "rogue.conf"
    conf.write_text(f'server_name: "rogue"\nlisten: "127.0.0.1:{rogue_port}"\n{block}\n')
    log_path = work / "rogue.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(find_nats_server(None)), "-c", str(conf)], stdout=log, stderr=log
        )
    try:
        time.sleep(3)  # several attempts: routes and gateways retry each second
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return log_path.read_text(errors="replace")
