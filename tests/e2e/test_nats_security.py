"""The sandbox's NATS servers require a certificate and map it to a user
(verify_and_map): only the agents, the operator and the system account's user
get in, with no password anywhere, and an agent may not take another region's
forwarded calls. Real nats-servers of a real sandbox, real certificates."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity
from meridian.security.pki import ensure_identity, sandbox_ca
from meridian.security.tls import TlsFiles, client_context
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
