"""The built-in CA on real files and real certificates: what it issues chains
to its bundle and names the identity; rotation overlaps and refuses to drop a
root that a leaf still hangs from; bad requests are named and write nothing."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from meridian.core.errors import InvalidArgumentError, NotFoundError
from meridian.security.ca import CaError, CertificateAuthority, issued_by, problems, status_rows
from meridian.security.model import Identity, Kind
from meridian.security.tls import TlsFiles, identity_of_pem

TD = "test.meridian"
ORDERS = Identity(TD, Kind.SERVICE, "orders")
AGENT = Identity(TD, Kind.AGENT, "us-east")


def _chain_ok(leaf_pem: bytes, bundle_pem: bytes) -> bool:
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    return any(issued_by(leaf, root) for root in x509.load_pem_x509_certificates(bundle_pem))


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init(TD)
    return authority


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "ed25519"])
def test_a_leaf_chains_to_the_bundle_and_names_its_identity(tmp_path: Path, algorithm: str) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    ca.init(TD, algorithm=algorithm)
    leaf = ca.issue(AGENT, dns_names=["localhost"], ip_addresses=["127.0.0.1", "::1"])
    files = TlsFiles.in_folder(leaf.cert_path.parent)
    assert files.identity() == AGENT
    assert _chain_ok(files.cert.read_bytes(), files.bundle.read_bytes())
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    key_type = ed25519.Ed25519PublicKey if algorithm == "ed25519" else ec.EllipticCurvePublicKey
    assert isinstance(cert.public_key(), key_type)
    assert leaf.dns_names == ("localhost",) and leaf.ip_addresses == ("127.0.0.1", "::1")
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Keys are private to their owner; the CA directory too.
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(next((ca.dir / "roots").glob("*.key")).stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.dir.stat().st_mode) == 0o700
    # 24 h by default, renewal due at half-life.
    assert 86400 <= leaf.validity.lifetime_s <= 86400 + 60
    assert leaf.validity.state(time.time()) == "ok"
    assert leaf.validity.state(time.time() + 13 * 3600) == "renew"


def test_a_leaf_from_another_ca_does_not_chain(tmp_path: Path, ca: CertificateAuthority) -> None:
    other = CertificateAuthority(tmp_path / "other")
    other.init(TD)
    stranger = other.issue(ORDERS)
    assert not _chain_ok(stranger.cert_path.read_bytes(), ca.bundle_path().read_bytes())


def test_reissuing_replaces_the_key_and_keeps_the_identity(ca: CertificateAuthority) -> None:
    first = ca.issue(ORDERS, lifetime_s=60)
    key1 = first.key_path.read_bytes()
    second = ca.issue(ORDERS, lifetime_s=60)
    assert second.serial != first.serial and second.key_path.read_bytes() != key1
    assert identity_of_pem(second.cert_path.read_bytes()) == ORDERS
    assert [lf.identity for lf in ca.leaves()] == [ORDERS]


def test_rotation_overlaps_then_drops_the_old_root(ca: CertificateAuthority) -> None:
    (old,) = ca.roots()
    ca.issue(ORDERS)
    ca.issue(AGENT)
    new = ca.rotate()
    assert {r.fingerprint for r in ca.roots()} == {old.fingerprint, new.fingerprint}
    # Every bundle trusts both: leaves from either root are accepted meanwhile.
    for leaf in ca.leaves():
        assert leaf.issuer == old.fingerprint
        assert len(x509.load_pem_x509_certificates(leaf.bundle_path.read_bytes())) == 2
        assert _chain_ok(leaf.cert_path.read_bytes(), leaf.bundle_path.read_bytes())
    warnings = problems(status_rows(ca))
    assert any("still on an old root" in w for w in warnings), warnings
    with pytest.raises(CaError) as info:
        ca.finish_rotation()
    assert info.value.violations[0].field == "rotation"
    assert "agent-us-east" in str(info.value) and "service-orders" in str(info.value)
    assert len(ca.roots()) == 2  # nothing dropped

    renewed = ca.renew()
    assert {lf.identity for lf in renewed} == {ORDERS, AGENT}
    assert all(lf.issuer == new.fingerprint for lf in ca.leaves())
    assert ca.finish_rotation() == [old.fingerprint]
    assert [r.fingerprint for r in ca.roots()] == [new.fingerprint]
    for leaf in ca.leaves():
        assert len(x509.load_pem_x509_certificates(leaf.bundle_path.read_bytes())) == 1
        assert _chain_ok(leaf.cert_path.read_bytes(), leaf.bundle_path.read_bytes())
    assert (ca.dir / "retired" / f"{old.fingerprint}.key").is_file()
    assert problems(status_rows(ca)) == []


def test_renew_reissues_only_what_is_due(ca: CertificateAuthority) -> None:
    now = time.time()
    ca.issue(ORDERS, lifetime_s=100, now=now)
    ca.issue(AGENT, lifetime_s=86400, now=now)
    assert ca.renew(now=now + 10) == []
    (renewed,) = ca.renew(now=now + 60)  # past half of 100 s
    assert renewed.identity == ORDERS
    assert 100 <= renewed.validity.lifetime_s <= 130  # the lifetime it was asked for


def test_status_warns_before_anything_expires(ca: CertificateAuthority) -> None:
    now = time.time()
    ca.issue(ORDERS, lifetime_s=100, now=now)
    assert problems(status_rows(ca, now)) == []
    (warning,) = problems(status_rows(ca, now + 85))
    assert "service/orders is expiring" in warning
    assert "is expired" in problems(status_rows(ca, now + 200))[0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lifetime_s": 1}, "lifetime"),
        ({"lifetime_s": 10**9}, "lifetime"),
        ({"dns_names": ["bad name"]}, "dns"),
        ({"dns_names": ["-x.example"]}, "dns"),
        ({"dns_names": ["a" * 64 + ".example"]}, "dns"),
        ({"dns_names": ["ex\u00e4mple.com"]}, "dns"),
        ({"ip_addresses": ["300.1.1.1"]}, "ip"),
        ({"ip_addresses": ["localhost"]}, "ip"),
        ({"dns_names": [f"h{i}.example" for i in range(40)]}, "dns"),
    ],
)
def test_a_bad_issue_request_is_named_and_writes_nothing(
    ca: CertificateAuthority, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        ca.issue(ORDERS, **kwargs)  # type: ignore[arg-type]
    assert field in [v.field for v in info.value.violations]
    assert not (ca.dir / "identities").exists()


def test_an_identity_from_another_trust_domain_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        ca.issue(Identity("other.domain", Kind.SERVICE, "orders"))
    assert info.value.violations[0].field == "identity"


def test_init_refuses_to_replace_a_ca_and_checks_its_arguments(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    with pytest.raises(CaError) as info:
        CertificateAuthority(ca.dir).init(TD)
    assert info.value.violations[0].field == "dir"
    with pytest.raises(InvalidArgumentError) as info:
        CertificateAuthority(tmp_path / "x").init("Not A Domain")
    assert info.value.violations[0].field == "trust_domain"
    with pytest.raises(InvalidArgumentError) as info:
        CertificateAuthority(tmp_path / "y").init(TD, algorithm="rsa")
    assert info.value.violations[0].field == "algorithm"
    with pytest.raises(NotFoundError):
        CertificateAuthority(tmp_path / "none").issue(ORDERS)


def test_a_root_signs_certificates_and_a_leaf_only_handshakes(ca: CertificateAuthority) -> None:
    leaf = ca.issue(ORDERS)
    (root_path,) = (ca.dir / "roots").glob("*.crt")
    root = x509.load_pem_x509_certificate(root_path.read_bytes())
    cert = x509.load_pem_x509_certificate(leaf.cert_path.read_bytes())
    root_ku = root.extensions.get_extension_for_class(x509.KeyUsage).value
    leaf_ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (root_ku.key_cert_sign, root_ku.crl_sign, root_ku.digital_signature) == (
        True,
        True,
        False,
    )
    assert (leaf_ku.key_cert_sign, leaf_ku.crl_sign, leaf_ku.digital_signature) == (
        False,
        False,
        True,
    )
