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
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.security.model import SCHEME, Identity


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


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3 with our certificate; the server must chain to the bundle. Check
    its identity with :func:`peer_identity` after the handshake."""
    ctx = _base(ssl.Purpose.SERVER_AUTH, files)
    ctx.check_hostname = False  # SPIFFE: the URI SAN is checked, not the host name
    return ctx


class ReloadingContext:
    """A server context whose certificate, key and bundle follow the files.

    The context given to the server stays the same object; its SNI callback
    hands each new handshake the context built from the files as they are now
    (rebuilt when their inode or mtime changes; a half-written set that fails
    to load keeps the previous one, so a rotation never breaks new connections).
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamp = files.stamp()
        self._current = server_context(files)
        self.reloads = 0
        self.failures = 0
        #: The context the server holds: the first one built, choosing per handshake.
        self.outer = self._current
        self.outer.sni_callback = self._choose

    def current(self) -> ssl.SSLContext:
        try:
            stamp = self.files.stamp()
        except OSError:
            self.failures += 1
            return self._current
        if stamp != self._stamp:
            try:
                self._current = server_context(self.files)
            except (OSError, ssl.SSLError, ValueError):
                self.failures += 1  # mid-rotation: keep serving with the previous files
            else:
                self._stamp = stamp
                self.reloads += 1
        return self._current

    def _choose(self, sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        sslobj.context = self.current()
