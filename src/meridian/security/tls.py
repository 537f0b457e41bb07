"""TLS contexts for mutual TLS with SPIFFE identities, reloaded from files.

A peer is trusted when its certificate chains to the trust bundle *and* names
exactly one SPIFFE ID in its URI SANs; that ID is the caller's identity.
Hostnames are not checked: the identity is (SPIFFE X.509-SVID verification).

:class:`TlsFiles` is a certificate, its key and a trust bundle on disk (from
``meridian ca`` or a deployment's own CA or SPIRE). :class:`ReloadingContext`
serves a context rebuilt whenever those files change, for new connections;
connections already open keep the one they shook hands with.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from cryptography import x509

from meridian.core.errors import FieldViolation, InvalidArgumentError, PermissionDeniedError
from meridian.security.model import SCHEME, Identity, Kind

T = TypeVar("T")


class PeerIdentityError(InvalidArgumentError):
    """The peer's certificate names no usable SPIFFE identity."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    bundle: Path

    @classmethod
    def in_folder(cls, folder: Path | str) -> TlsFiles:
        """``cert.pem``, ``key.pem`` and ``bundle.pem`` in ``folder`` (what
        ``meridian ca issue`` writes)."""
        f = Path(folder)
        return cls(f / "cert.pem", f / "key.pem", f / "bundle.pem")

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """What changes when any of the files does (inode and mtime)."""
        out = []
        for p in (self.cert, self.key, self.bundle):
            st = os.stat(p)
            out.append((st.st_ino, st.st_mtime_ns))
        return tuple(out)

    def identity(self) -> Identity:
        """The identity the certificate names."""
        return identity_of_pem(self.cert.read_bytes())


def identity_of_cert(cert: x509.Certificate, *, field: str = "certificate") -> Identity:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerIdentityError(FieldViolation(field, "has no subject alternative names")) from None
    ids = [
        u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(SCHEME)
    ]
    if len(ids) != 1:
        raise PeerIdentityError(
            FieldViolation(field, f"must name exactly one spiffe:// ID; it names {len(ids)}")
        )
    return Identity.parse(ids[0], field=field)


def identity_of_pem(pem: bytes) -> Identity:
    return identity_of_cert(x509.load_pem_x509_certificate(pem))


def identity_of_der(der: bytes) -> Identity:
    return identity_of_cert(x509.load_der_x509_certificate(der))


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> Identity:
    """The identity of the peer of a finished handshake."""
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        raise PeerIdentityError(FieldViolation("certificate", "the peer sent none"))
    return identity_of_der(der)


def _base(purpose: ssl.Purpose, files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.cert, files.key)
    ctx.load_verify_locations(cafile=files.bundle)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3, our certificate, and a client certificate required from the bundle."""
    return _base(ssl.Purpose.CLIENT_AUTH, files)


def front_door_context(files: TlsFiles) -> ssl.SSLContext:
    """A public server (the gateway's side towards clients): our certificate,
    TLS 1.2 or newer for clients that are not ours, no client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3 with our certificate; the server must chain to the bundle. Check
    its identity with :func:`peer_identity` after the handshake."""
    ctx = _base(ssl.Purpose.SERVER_AUTH, files)
    ctx.check_hostname = False  # SPIFFE: the URI SAN is checked, not the host name
    return ctx


class FollowsFiles(Generic[T]):
    """What ``build`` makes of the files (an SSL context, a gRPC channel), made
    again whenever they change (inode or mtime); a half-written set that fails
    to load keeps the previous one, so a rotation never breaks new connections."""

    def __init__(self, files: TlsFiles, build: Callable[[TlsFiles], T]) -> None:
        self.files = files
        self._build = build
        self._stamp = files.stamp()
        self._current = build(files)
        self.reloads = 0
        self.failures = 0

    def current(self) -> T:
        try:
            stamp = self.files.stamp()
        except OSError:
            self.failures += 1
            return self._current
        if stamp != self._stamp:
            try:
                self._current = self._build(self.files)
            except (OSError, ssl.SSLError, ValueError):
                self.failures += 1  # mid-rotation: keep serving with the previous files
            else:
                self._stamp = stamp
                self.reloads += 1
        return self._current


class ReloadingContext(FollowsFiles[ssl.SSLContext]):
    """A server context whose certificate, key and bundle follow the files.

    The context given to the server stays the same object; its SNI callback
    hands each new handshake the context built from the files as they are now.
    """

    def __init__(
        self, files: TlsFiles, build: Callable[[TlsFiles], ssl.SSLContext] = server_context
    ) -> None:
        """``build``: :func:`server_context` (mutual TLS) or :func:`front_door_context`."""
        super().__init__(files, build)
        #: The context the server holds: the first one built, choosing per handshake.
        self.outer = self._current
        self.outer.sni_callback = self._choose

    def _choose(self, sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        sslobj.context = self.current()


class ClientTls(FollowsFiles[ssl.SSLContext]):
    """A client context that follows the files. Pass :meth:`current` per request
    (aiohttp pools connections by context, so new ones use the new certificate),
    or hand it to a connection that keeps one when it changes (the agent's NATS
    connection: a new context also drops a root retired by a rotation)."""

    def __init__(self, files: TlsFiles) -> None:
        super().__init__(files, client_context)


class GrpcServerCredentials:
    """gRPC server credentials that follow the files, like :class:`ReloadingContext`.

    ``grpc.dynamic_ssl_server_credentials`` asks :meth:`fetch` before each new
    handshake; it returns a new certificate configuration when the files
    changed (None keeps the current one), so a rotation needs no restart.
    Client certificates are required and checked against the bundle.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamp = files.stamp()
        self.reloads = 0
        self.failures = 0
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self.fetch,
            require_client_authentication=True,
        )

    def _configuration(self) -> Any:
        # Loaded through ssl first: a key that does not match its certificate fails
        # here, by name, not at the first handshake.
        server_context(self.files)
        return grpc.ssl_server_certificate_configuration(
            [(self.files.key.read_bytes(), self.files.cert.read_bytes())],
            root_certificates=self.files.bundle.read_bytes(),
        )

    def fetch(self) -> Any:
        try:
            stamp = self.files.stamp()
            if stamp == self._stamp:
                return None
            config = self._configuration()
        except (OSError, ssl.SSLError, ValueError):
            self.failures += 1  # mid-rotation: keep the previous files
            return None
        self._stamp = stamp
        self.reloads += 1
        return config


def grpc_channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Client credentials for an agent's gRPC port: our certificate, and the
    agent's checked against the bundle (and its address against its SANs)."""
    return grpc.ssl_channel_credentials(
        root_certificates=files.bundle.read_bytes(),
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )


class Callers:
    """Who is calling: the identity in a peer certificate, checked once per
    certificate (a connection's calls share it) and remembered, bounded."""

    MAX = 1024

    def __init__(self, trust_domain: str, kinds: frozenset[Kind]) -> None:
        self.trust_domain = trust_domain
        self.kinds = kinds
        self._seen: dict[bytes, Identity | PermissionDeniedError] = {}
        self._by_sans: dict[tuple[bytes, ...], Identity | PermissionDeniedError] = {}

    def identify_sans(self, sans: Sequence[bytes] | None) -> Identity:
        """The identity among the subject alternative names of a verified peer
        certificate, as gRPC gives them (``context.peer_identities()``): cheaper
        per call than the whole certificate, which the auth context carries."""
        if not sans:
            raise PermissionDeniedError("the caller presented no client certificate")
        key = tuple(sans)
        found = self._by_sans.get(key)
        if found is None:
            uris = [s for s in key if s.startswith(b"spiffe://")]
            if len(uris) != 1:
                found = PermissionDeniedError(
                    "the client certificate must name exactly one spiffe:// ID; "
                    f"it names {len(uris)}"
                )
            else:
                try:
                    found = self._judge(Identity.parse(uris[0].decode(), field="certificate"))
                except (InvalidArgumentError, UnicodeDecodeError) as exc:
                    found = PermissionDeniedError(
                        f"the client certificate names no identity: {exc}"
                    )
            if len(self._by_sans) >= self.MAX:
                self._by_sans.clear()
            self._by_sans[key] = found
        if isinstance(found, PermissionDeniedError):
            raise found
        return found

    def identify(self, cert: bytes | None) -> Identity:
        """The identity of a client certificate (DER, or PEM as gRPC gives it),
        or PermissionDeniedError naming why it may not call."""
        if not cert:
            raise PermissionDeniedError("the caller presented no client certificate")
        found = self._seen.get(cert)
        if found is None:
            found = self._check(cert)
            if len(self._seen) >= self.MAX:
                self._seen.clear()
            self._seen[cert] = found
        if isinstance(found, PermissionDeniedError):
            raise found
        return found

    def _check(self, cert: bytes) -> Identity | PermissionDeniedError:
        try:
            pem = cert.startswith(b"-----BEGIN")
            identity = identity_of_pem(cert) if pem else identity_of_der(cert)
        except (InvalidArgumentError, ValueError) as exc:
            return PermissionDeniedError(f"the client certificate names no identity: {exc}")
        return self._judge(identity)

    def _judge(self, identity: Identity) -> Identity | PermissionDeniedError:
        if identity.trust_domain != self.trust_domain:
            return PermissionDeniedError(f"{identity} is not in trust domain {self.trust_domain!r}")
        if identity.kind not in self.kinds:
            allowed = ", ".join(sorted(k.value for k in self.kinds))
            return PermissionDeniedError(
                f"{identity} is a {identity.kind.value}; only {allowed} identities may call"
            )
        return identity
