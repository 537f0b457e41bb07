"""Mutual TLS with real certificates and real handshakes on loopback: who is
let in, what identity each side sees, and certificates that rotate under a
running server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from meridian.core.errors import InvalidArgumentError
from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity, Kind
from meridian.security.tls import (
    ClientTls,
    ReloadingContext,
    TlsFiles,
    client_context,
    identity_of_pem,
    peer_identity,
    server_context,
)

TD = "test.meridian"
AGENT = Identity(TD, Kind.AGENT, "us-east")
ORDERS = Identity(TD, Kind.SERVICE, "orders")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init(TD)
    return authority


def files(ca: CertificateAuthority, identity: Identity, **kwargs: object) -> TlsFiles:
    leaf = ca.issue(identity, ip_addresses=["127.0.0.1"], **kwargs)  # type: ignore[arg-type]
    return TlsFiles.in_folder(leaf.cert_path.parent)


class Server:
    """A TLS echo server that records each connection's peer identity or failure."""

    def __init__(self) -> None:
        self.peers: list[Identity] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        self.peers.append(peer_identity(sslobj))
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            line = await reader.readline()
            writer.write(line)
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def serving(context: ssl.SSLContext) -> AsyncIterator[Server]:
    server = Server()
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=context)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()
        await srv.wait_closed()


async def call(
    port: int, context: ssl.SSLContext, sni: str | None = None
) -> tuple[bytes, Identity, int]:
    """One echo through a fresh connection: the answer, the server's identity and
    the serial of the certificate it showed."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=sni), 10
    )
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        writer.write(b"ping\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 10)
        return answer, peer_identity(sslobj), x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def refused(port: int, context: ssl.SSLContext) -> bool:
    """Whether the server refuses us: in TLS 1.3 a client learns it only when it
    next reads, so a refusal is an SSL error or an empty answer."""
    try:
        answer, _, _ = await call(port, context)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    return answer == b""


async def test_both_sides_see_each_others_identity(ca: CertificateAuthority) -> None:
    async with serving(server_context(files(ca, AGENT))) as server:
        answer, server_id, _ = await call(server.port, client_context(files(ca, ORDERS)))
    assert answer == b"ping\n"
    assert server_id == AGENT
    assert server.peers == [ORDERS]


async def test_a_client_without_certificate_is_refused(ca: CertificateAuthority) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cafile=ca.bundle_path())
    async with serving(server_context(files(ca, AGENT))) as server:
        assert await refused(server.port, bare)
    assert server.peers == []


async def test_a_client_from_another_ca_is_refused(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    other = CertificateAuthority(tmp_path / "other")
    other.init(TD)  # the same trust domain name, but not our root
    stranger = files(other, ORDERS)
    # It trusts our root, so only our side's check can refuse it.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_cert_chain(stranger.cert, stranger.key)
    ctx.load_verify_locations(cafile=ca.bundle_path())
    async with serving(server_context(files(ca, AGENT))) as server:
        assert await refused(server.port, ctx)
    assert server.peers == []


async def test_an_expired_client_certificate_is_refused(ca: CertificateAuthority) -> None:
    expired = files(ca, ORDERS, lifetime_s=60, now=time.time() - 3600)
    async with serving(server_context(files(ca, AGENT))) as server:
        assert await refused(server.port, client_context(expired))
    assert server.peers == []


async def test_a_server_from_another_ca_is_refused_by_the_client(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    other = CertificateAuthority(tmp_path / "other")
    other.init(TD)
    impostor = files(other, AGENT)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(impostor.cert, impostor.key)
    async with serving(ctx) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await call(server.port, client_context(files(ca, ORDERS)))


def test_a_certificate_without_exactly_one_spiffe_id_names_no_identity(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")])

    def cert(*uris: str) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                critical=False,
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    for pem in (
        cert(),
        cert("https://example.com/"),
        cert(ORDERS.uri, AGENT.uri),
        cert("spiffe://test.meridian/service/Bad"),
    ):
        with pytest.raises(InvalidArgumentError) as info:
            identity_of_pem(pem)
        assert info.value.violations[0].field == "certificate"


@pytest.mark.parametrize("sni", [None, "agent.test"])
async def test_a_reissued_server_certificate_is_served_to_new_connections(
    ca: CertificateAuthority, sni: str | None
) -> None:
    """Rotation without restart: the server keeps its context object; a new
    connection gets the certificate on disk now, with or without SNI."""
    server_files = files(ca, AGENT)
    reloading = ReloadingContext(server_files)
    client = client_context(files(ca, ORDERS))
    async with serving(reloading.outer) as server:
        _, _, first = await call(server.port, client, sni)
        files(ca, AGENT)  # re-issued in place: a new key and serial
        _, ident, second = await call(server.port, client, sni)
        assert ident == AGENT and second != first
        assert reloading.reloads == 1
        # A half-written rotation (a certificate without its key) keeps the last good one.
        server_files.cert.write_text("not a certificate")
        answer, _, third = await call(server.port, client, sni)
        assert answer == b"ping\n" and third == second
        assert reloading.failures >= 1


def test_a_followed_client_context_is_new_when_the_files_change_and_drops_old_roots(
    ca: CertificateAuthority,
) -> None:
    # What the agent hands its NATS connection (a connection keeps one context).
    f = files(ca, ORDERS)
    followed = ClientTls(f)
    first = followed.current()
    assert followed.current() is first and followed.reloads == 0  # nothing changed
    files(ca, ORDERS)  # re-issued: a new key and certificate
    assert followed.current() is not first and followed.reloads == 1
    f.key.write_bytes(b"half-written")  # mid-rotation: keep the last good files
    kept = followed.current()
    assert followed.current() is kept and followed.reloads == 1
    assert followed.failures >= 1
    # A root rotation: the new bundle has both roots, then only the new one.
    files(ca, ORDERS)
    ca.rotate()
    ca.renew()
    assert len(followed.current().get_ca_certs()) == 2
    ca.finish_rotation()
    assert len(followed.current().get_ca_certs()) == 1  # the dropped root is not trusted
