"""The WAN emulator's mutual TLS links (sandbox/wan_tls.py): a proxy carries
only the source region's NATS servers, shows them its upstream's certificate,
dials the upstream as the same server, and checks whom it reached. Real
certificates from a real CA, real TLS sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from meridian.sandbox.wan import LatencyMatrix, ProxySpec, WanEmulator
from meridian.sandbox.wan_tls import ProxyTls
from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity, Kind
from meridian.security.tls import TlsFiles, client_context, peer_identity, server_context

pytestmark = pytest.mark.timeout(60)

TD = "test.meridian"
REGIONS = ("us-east", "eu-west")
LINK = "route:us-east->eu-west"
SOURCE = Identity(TD, Kind.NATS, "global-us-east")
UPSTREAM = Identity(TD, Kind.NATS, "global-eu-west")
STRANGER = Identity(TD, Kind.NATS, "global-ap-south")
LATENCY_MS = 20.0


class TlsEcho:
    """A mutual-TLS echo server recording each client's identity and serial."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.peers: list[tuple[Identity, int]] = []
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        self.peers.append(
            (peer_identity(sslobj), x509.load_der_x509_certificate(der).serial_number)
        )
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


def issue(ca: CertificateAuthority, identity: Identity) -> TlsFiles:
    leaf = ca.issue(identity, ip_addresses=["127.0.0.1"])
    return TlsFiles.in_folder(leaf.cert_path.parent)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init(TD)
    for identity in (SOURCE, UPSTREAM, STRANGER):
        issue(authority, identity)
    return authority


def folder(ca: CertificateAuthority, identity: Identity) -> TlsFiles:
    return TlsFiles.in_folder(ca.dir / "identities" / identity.slug)


@contextlib.asynccontextmanager
async def link(
    ca: CertificateAuthority, upstream_files: TlsFiles | None = None
) -> AsyncIterator[tuple[WanEmulator, TlsEcho]]:
    """A proxy from us-east to eu-west in front of a TLS echo server; the
    upstream shows ``upstream_files`` (by default, the right server's)."""
    echo = TlsEcho(upstream_files or folder(ca, UPSTREAM))
    echo.server = await asyncio.start_server(
        echo.handle, "127.0.0.1", 0, ssl=server_context(echo.files)
    )
    spec = ProxySpec(
        name=LINK,
        src="us-east",
        dst="eu-west",
        listen_port=0,
        upstream_host="127.0.0.1",
        upstream_port=echo.port,
        tls=ProxyTls(
            upstream=UPSTREAM,
            upstream_files=folder(ca, UPSTREAM),
            sources={SOURCE.uri: folder(ca, SOURCE)},
        ),
    )
    matrix = LatencyMatrix(REGIONS, {("us-east", "eu-west"): LATENCY_MS})
    try:
        async with WanEmulator(matrix, [spec]) as emu:
            yield emu, echo
    finally:
        echo.server.close()


async def dial(
    emu: WanEmulator, files: TlsFiles
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", emu.bound_port(LINK), ssl=client_context(files)
    )


async def refused(emu: WanEmulator, files: TlsFiles) -> bool:
    """Whether the proxy ends a connection from ``files`` without carrying a byte."""
    try:
        reader, writer = await dial(emu, files)
    except (ssl.SSLError, ConnectionError):
        return True  # refused in the handshake
    try:
        writer.write(b"ping\n")
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(100) == b""
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        writer.close()


async def test_a_source_server_is_carried_as_itself_with_the_links_latency(
    ca: CertificateAuthority,
) -> None:
    async with link(ca) as (emu, echo):
        reader, writer = await dial(emu, folder(ca, SOURCE))
        # The proxy showed the upstream's certificate to the dialling server.
        assert peer_identity(writer.get_extra_info("ssl_object")) == UPSTREAM
        start = time.perf_counter()
        writer.write(b"hello over two TLS legs\n")
        await writer.drain()
        assert await reader.readexactly(24) == b"hello over two TLS legs\n"
        rtt_ms = (time.perf_counter() - start) * 1000
        writer.close()
        # The upstream saw the source server itself, and the WAN's latency applied.
        assert [p for p, _ in echo.peers] == [SOURCE]
        assert rtt_ms >= 2 * LATENCY_MS * 0.9


async def test_a_server_the_link_does_not_serve_is_refused(ca: CertificateAuthority) -> None:
    # A server that learned a proxy meant for another region (NATS gossips
    # every gateway URL it knows) is refused rather than carried around a partition.
    async with link(ca) as (emu, echo):
        assert await refused(emu, folder(ca, STRANGER))
        assert echo.peers == []


async def test_a_certificate_from_another_ca_is_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority(tmp_path / "other")
    other.init(TD)
    async with link(ca) as (emu, echo):
        assert await refused(emu, issue(other, SOURCE))
        assert echo.peers == []


async def test_an_upstream_that_is_not_the_expected_server_is_refused(
    ca: CertificateAuthority,
) -> None:
    async with link(ca, upstream_files=folder(ca, STRANGER)) as (emu, _):
        assert await refused(emu, folder(ca, SOURCE))


async def test_renewed_certificates_apply_to_the_next_connection(
    ca: CertificateAuthority,
) -> None:
    async with link(ca) as (emu, echo):
        for _ in range(2):
            reader, writer = await dial(emu, folder(ca, SOURCE))
            writer.write(b"x")
            await writer.drain()
            assert await reader.readexactly(1) == b"x"
            writer.close()
            issue(ca, SOURCE)  # the renewer re-issues the source server's leaf
        (_, first), (_, second) = echo.peers
        assert first != second
