"""The built-in certificate authority, for the sandbox and small deployments.

Everything is files under one directory (``.meridian/ca`` by default)::

    ca.json                     trust domain, key algorithm, the current root
    roots/<fingerprint>.crt     every trusted root (the bundle's members)
    roots/<fingerprint>.key     their private keys (mode 0600)
    bundle.pem                  the trust bundle: every trusted root
    identities/<slug>/cert.pem  a leaf: its SPIFFE ID as URI SAN, plus DNS/IP SANs
    identities/<slug>/key.pem   its private key (mode 0600)
    identities/<slug>/bundle.pem
    retired/                    roots dropped from the bundle

Files are written to a temporary name and renamed into place, so a reader
(an agent reloading its certificate) sees the old file or the new one, never
half of one. A key file is created 0600 before any byte is written.

Root rotation overlaps: :meth:`CertificateAuthority.rotate` adds a new root
and makes it current, every bundle trusts both; :meth:`renew` re-issues the
leaves (all those on an old root, and any past half-life); only then does
:meth:`finish_rotation` drop the old root, and it refuses, naming them, while
any leaf still hangs from it.

Keys and certificates are made with ``cryptography`` (ECDSA P-256 by default,
or Ed25519); nothing here is hand-rolled cryptography.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meridian.core.errors import FieldViolation, InvalidArgumentError, NotFoundError
from meridian.security.model import (
    DEFAULT_LEAF_LIFETIME_S,
    DEFAULT_ROOT_LIFETIME_S,
    NATS_SERVER_CN,
    Identity,
    Kind,
    Validity,
    droppable_roots,
    lifetime_violations,
)

ALGORITHMS = ("ecdsa-p256", "ed25519")
DEFAULT_DIR = Path(".meridian/ca")
#: How far back a certificate's validity starts, for clocks a little behind.
BACKDATE_S = 30
MAX_SANS = 32

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class CaError(InvalidArgumentError):
    """The CA can't do what was asked; names the field and the reason."""


@dataclass(frozen=True)
class Leaf:
    identity: Identity
    slug: str
    cert_path: Path
    key_path: Path
    bundle_path: Path
    validity: Validity
    issuer: str
    serial: int
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    common_name: str = ""


def common_name(identity: Identity) -> str:
    """The subject CN the CA gives ``identity``'s leaves: its slug, or the one
    name every NATS server shares (``NATS_SERVER_CN``, see security.model)."""
    return NATS_SERVER_CN if identity.kind is Kind.NATS else identity.slug


@dataclass(frozen=True)
class Root:
    fingerprint: str
    validity: Validity
    current: bool


def _new_key(algorithm: str) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """A root signs certificates (and CRLs); a leaf signs handshakes only."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def fingerprint(cert: x509.Certificate) -> str:
    """The first 16 hex digits of the certificate's SHA-256: a root's name."""
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


def validity_of(cert: x509.Certificate) -> Validity:
    return Validity(cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())


def issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    """Whether ``root`` signed ``cert`` (the signature checked, not just the names)."""
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """``data`` at ``path``, atomically (temporary file, then rename); mode
    0600 when ``private`` (keys), else 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _requested_lifetime(leaf: Leaf) -> int | None:
    """The lifetime the leaf was issued with (its ``leaf.json``)."""
    try:
        request = json.loads((leaf.cert_path.parent / "leaf.json").read_text())
        return int(request["lifetime_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (write it with ``private=True``)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _dns_violations(names: Sequence[str]) -> list[FieldViolation]:
    out = []
    for name in names:
        labels = name.split(".")
        if (
            not name
            or len(name) > 253
            or not all(
                0 < len(label) <= 63
                and label.replace("-", "").isalnum()
                and label.isascii()
                and not label.startswith("-")
                and not label.endswith("-")
                for label in labels
            )
        ):
            out.append(FieldViolation("dns", f"{name[:80]!r} is not a DNS name"))
    return out


class CertificateAuthority:
    """The CA in ``directory``; :meth:`init` makes one."""

    def __init__(self, directory: Path | str = DEFAULT_DIR) -> None:
        self.dir = Path(directory)

    # -- files --------------------------------------------------------------------

    @property
    def _meta_path(self) -> Path:
        return self.dir / "ca.json"

    def exists(self) -> bool:
        return self._meta_path.is_file()

    def _meta(self) -> dict[str, str]:
        if not self.exists():
            raise NotFoundError(f"no CA in {self.dir}: run `meridian ca init` first")
        meta: dict[str, str] = json.loads(self._meta_path.read_text())
        return meta

    @property
    def trust_domain(self) -> str:
        return self._meta()["trust_domain"]

    def _root(self, fp: str) -> tuple[x509.Certificate, PrivateKey]:
        cert = x509.load_pem_x509_certificate((self.dir / "roots" / f"{fp}.crt").read_bytes())
        key = serialization.load_pem_private_key(
            (self.dir / "roots" / f"{fp}.key").read_bytes(), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
        return cert, key

    def _trusted(self) -> dict[str, x509.Certificate]:
        return {
            p.stem: x509.load_pem_x509_certificate(p.read_bytes())
            for p in sorted((self.dir / "roots").glob("*.crt"))
        }

    def bundle_path(self) -> Path:
        return self.dir / "bundle.pem"

    def _write_bundles(self) -> None:
        """The trust bundle (every trusted root), at the top and in every identity."""
        bundle = b"".join(_pem(c) for c in self._trusted().values())
        write_file(self.bundle_path(), bundle)
        for ident_dir in sorted((self.dir / "identities").glob("*")):
            if ident_dir.is_dir():
                write_file(ident_dir / "bundle.pem", bundle)

    # -- the operations --------------------------------------------------------------

    def init(
        self,
        trust_domain: str,
        *,
        algorithm: str = "ecdsa-p256",
        root_lifetime_s: int = DEFAULT_ROOT_LIFETIME_S,
        now: float | None = None,
    ) -> Root:
        """A new CA with one root. Refuses to replace an existing one."""
        Identity(trust_domain, Kind.GATEWAY)  # checks the trust domain
        if algorithm not in ALGORITHMS:
            raise CaError(FieldViolation("algorithm", f"must be one of {', '.join(ALGORITHMS)}"))
        if self.exists():
            raise CaError(
                FieldViolation("dir", f"{self.dir} already holds a CA; use another directory")
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        meta = {"trust_domain": trust_domain, "algorithm": algorithm, "current": ""}
        write_file(self._meta_path, json.dumps(meta, indent=2).encode())
        return self._new_root(root_lifetime_s, now)

    def _new_root(self, lifetime_s: int, now: float | None) -> Root:
        meta = self._meta()
        now = time.time() if now is None else now
        key = _new_key(meta["algorithm"])
        start = dt.datetime.fromtimestamp(now - BACKDATE_S, dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Meridian"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME,
                    f"Meridian root {meta['trust_domain']} {secrets.token_hex(4)}",
                ),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(seconds=lifetime_s))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, _hash_for(key))
        )
        fp = fingerprint(cert)
        write_file(self.dir / "roots" / f"{fp}.key", private_key_pem(key), private=True)
        write_file(self.dir / "roots" / f"{fp}.crt", _pem(cert))
        meta["current"] = fp
        write_file(self._meta_path, json.dumps(meta, indent=2).encode())
        self._write_bundles()
        return Root(fp, validity_of(cert), True)

    def issue(
        self,
        identity: Identity,
        *,
        lifetime_s: int = DEFAULT_LEAF_LIFETIME_S,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        now: float | None = None,
    ) -> Leaf:
        """A leaf for ``identity`` from the current root, replacing any earlier
        one; the key is new each time."""
        meta = self._meta()
        violations = lifetime_violations(lifetime_s)
        if identity.trust_domain != meta["trust_domain"]:
            violations.append(
                FieldViolation("identity", f"must be in trust domain {meta['trust_domain']!r}")
            )
        violations += _dns_violations(dns_names)
        ips = []
        for ip in ip_addresses:
            try:
                ips.append(ipaddress.ip_address(ip))
            except ValueError:
                violations.append(FieldViolation("ip", f"{ip[:60]!r} is not an IP address"))
        if len(dns_names) + len(ip_addresses) > MAX_SANS:
            violations.append(FieldViolation("dns", f"at most {MAX_SANS} DNS names and IPs"))
        if violations:
            raise CaError(violations)
        root_cert, root_key = self._root(meta["current"])
        now = time.time() if now is None else now
        start = dt.datetime.fromtimestamp(now - min(BACKDATE_S, lifetime_s // 4), dt.UTC)
        end = dt.datetime.fromtimestamp(now + lifetime_s, dt.UTC)
        end = min(end, root_cert.not_valid_after_utc)
        key = _new_key(meta["algorithm"])
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        sans += [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ip) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Meridian"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name(identity)),
                    ]
                )
            )
            .issuer_name(root_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
            )
            .sign(root_key, _hash_for(root_key))
        )
        folder = self.dir / "identities" / identity.slug
        # The key first: a reader that sees the new certificate finds its key.
        write_file(folder / "key.pem", private_key_pem(key), private=True)
        write_file(folder / "cert.pem", _pem(cert))
        write_file(folder / "bundle.pem", self.bundle_path().read_bytes())
        request = {"lifetime_s": lifetime_s, "dns": list(dns_names), "ip": list(ip_addresses)}
        write_file(folder / "leaf.json", json.dumps(request).encode())
        return self._leaf(folder)

    def _leaf(self, folder: Path, trusted: dict[str, x509.Certificate] | None = None) -> Leaf:
        """The leaf in ``folder``; ``trusted``: the roots, when the caller has them."""
        cert = x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes())
        (uri,) = uri_sans(cert)
        trusted = self._trusted() if trusted is None else trusted
        issuer = next((fp for fp, root in trusted.items() if issued_by(cert, root)), "unknown")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return Leaf(
            identity=Identity.parse(uri),
            slug=folder.name,
            cert_path=folder / "cert.pem",
            key_path=folder / "key.pem",
            bundle_path=folder / "bundle.pem",
            validity=validity_of(cert),
            issuer=issuer,
            serial=cert.serial_number,
            dns_names=tuple(san.get_values_for_type(x509.DNSName)),
            ip_addresses=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
            common_name=",".join(
                str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            ),
        )

    def ensure(
        self,
        identity: Identity,
        *,
        lifetime_s: int = DEFAULT_LEAF_LIFETIME_S,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        now: float | None = None,
    ) -> Leaf:
        """The leaf of ``identity`` as asked: the one on disk if it has these SANs,
        this lifetime and the subject the CA gives now, comes from the current
        root and is not yet due for renewal; else a new one."""
        now = time.time() if now is None else now
        try:
            leaf = self.leaf(identity)
        except NotFoundError:
            leaf = None
        if (
            leaf is None
            or leaf.issuer != self._meta()["current"]
            or leaf.validity.state(now) != "ok"
            or _requested_lifetime(leaf) != lifetime_s
            or set(leaf.dns_names) != set(dns_names)
            or leaf.common_name != common_name(identity)
            or set(leaf.ip_addresses) != {str(ipaddress.ip_address(ip)) for ip in ip_addresses}
        ):
            leaf = self.issue(
                identity,
                lifetime_s=lifetime_s,
                dns_names=dns_names,
                ip_addresses=ip_addresses,
                now=now,
            )
        return leaf

    def leaves(self) -> list[Leaf]:
        self._meta()
        folders = sorted((self.dir / "identities").glob("*/cert.pem"))
        trusted = self._trusted()  # read once, not once per leaf
        return [self._leaf(p.parent, trusted) for p in folders]

    def leaf(self, identity: Identity) -> Leaf:
        folder = self.dir / "identities" / identity.slug
        if not (folder / "cert.pem").is_file():
            raise NotFoundError(f"no certificate for {identity} in {self.dir}")
        return self._leaf(folder)

    def roots(self) -> list[Root]:
        current = self._meta()["current"]
        return [Root(fp, validity_of(c), fp == current) for fp, c in self._trusted().items()]

    def rotate(
        self, *, root_lifetime_s: int = DEFAULT_ROOT_LIFETIME_S, now: float | None = None
    ) -> Root:
        """A new current root, trusted beside the old ones until
        :meth:`finish_rotation`; leaves keep working and :meth:`renew` moves them."""
        return self._new_root(root_lifetime_s, now)

    def renew(self, *, now: float | None = None, force: bool = False) -> list[Leaf]:
        """Re-issue every leaf past half its lifetime or issued by a root that is
        not the current one (all of them with ``force``), keeping its SANs and
        its lifetime. Returns the new leaves."""
        now = time.time() if now is None else now
        current = self._meta()["current"]
        out = []
        for leaf in self.leaves():
            if force or leaf.issuer != current or leaf.validity.state(now) != "ok":
                request = json.loads((leaf.cert_path.parent / "leaf.json").read_text())
                out.append(
                    self.issue(
                        leaf.identity,
                        lifetime_s=int(request["lifetime_s"]),
                        dns_names=request["dns"],
                        ip_addresses=request["ip"],
                        now=now,
                    )
                )
        return out

    def finish_rotation(self) -> list[str]:
        """Drop the old roots from every bundle (their files go to ``retired/``).
        Refuses, naming them, while any leaf still hangs from an old root."""
        meta = self._meta()
        leaves = self.leaves()
        trusted = set(self._trusted())
        old = droppable_roots(trusted, meta["current"], {lf.slug: lf.issuer for lf in leaves})
        if not old and trusted - {meta["current"]}:
            waiting = sorted(lf.slug for lf in leaves if lf.issuer != meta["current"])
            raise CaError(
                FieldViolation(
                    "rotation",
                    "these identities still hang from an old root; run `meridian ca renew` "
                    f"and restart or reload them first: {', '.join(waiting)}",
                )
            )
        retired = self.dir / "retired"
        retired.mkdir(exist_ok=True)
        for fp in sorted(old):
            for suffix in (".crt", ".key"):
                shutil.move(self.dir / "roots" / f"{fp}{suffix}", retired / f"{fp}{suffix}")
        self._write_bundles()
        return sorted(old)


def status_rows(ca: CertificateAuthority, now: float | None = None) -> list[dict[str, object]]:
    """One row per root and identity: what, expiry, seconds left and state."""
    now = time.time() if now is None else now
    rows: list[dict[str, object]] = []
    roots = ca.roots()
    current = next((r.fingerprint for r in roots if r.current), "")
    for root in roots:
        rows.append(
            {
                "kind": "root",
                "name": root.fingerprint + (" (current)" if root.current else ""),
                "not_after": dt.datetime.fromtimestamp(root.validity.not_after, dt.UTC).isoformat(),
                "left_s": round(root.validity.not_after - now),
                "state": root.validity.state(now),
            }
        )
    for leaf in ca.leaves():
        rows.append(
            {
                "kind": "identity",
                "name": leaf.identity.uri,
                "not_after": dt.datetime.fromtimestamp(leaf.validity.not_after, dt.UTC).isoformat(),
                "left_s": round(leaf.validity.not_after - now),
                "state": leaf.validity.state(now),
                "issuer": leaf.issuer,
                "on_current_root": leaf.issuer == current,
            }
        )
    return rows


def problems(rows: Iterable[dict[str, object]]) -> list[str]:
    """The warnings ``meridian ca status`` prints: anything expiring, expired or
    not yet valid, and identities on a root that is no longer current."""
    out = []
    for row in rows:
        if row["state"] in ("expiring", "expired", "not-yet-valid"):
            out.append(f"{row['kind']} {row['name']} is {row['state']} ({row['not_after']})")
        if row.get("on_current_root") is False:
            out.append(f"identity {row['name']} is still on an old root: renew it")
    return out
