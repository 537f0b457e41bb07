"""The sandbox's identities: issued once, kept while good, re-issued when due,
on an old root, or asked for with other names or lifetime."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meridian.config import MeridianConfig
from meridian.core.errors import ConfigError
from meridian.security import ca as ca_module
from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity, Kind
from meridian.security.pki import client_ssl, ensure_identity, ensure_sandbox, sandbox_ca
from tests.unit.config_harness import NO_LINKS, REGIONS, load_text


def config(tmp_path: Path, extra: str = "") -> MeridianConfig:
    return load_text(tmp_path, NO_LINKS + extra)


def serials(ca: CertificateAuthority) -> dict[str, int]:
    return {leaf.slug: leaf.serial for leaf in ca.leaves()}


def test_a_sandbox_gets_every_identity_once(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    issued = ensure_sandbox(cfg)
    assert {str(i) for i in issued} == {
        "spiffe://meridian.local/region/us-east/agent",
        "spiffe://meridian.local/region/eu-west/agent",
        "spiffe://meridian.local/region/ap-south/agent",
        "spiffe://meridian.local/gateway",
        "spiffe://meridian.local/operator/meridian",
        # The sandbox's six nats-servers and the system account's user.
        *(f"spiffe://meridian.local/nats/{p}{r}" for p in ("", "global-") for r in REGIONS),
        "spiffe://meridian.local/operator/nats-system",
    }
    ca = sandbox_ca(cfg)
    agent = ca.leaf(Identity("meridian.local", Kind.AGENT, "us-east"))
    assert agent.dns_names == ("localhost",)
    assert "127.0.0.1" in agent.ip_addresses
    before = serials(ca)
    ensure_sandbox(cfg)  # nothing due: nothing re-issued
    assert serials(ca) == before
    assert client_ssl(cfg) is not None


def test_due_changed_or_old_root_leaves_are_reissued(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ensure_sandbox(cfg)
    ca = sandbox_ca(cfg)
    gateway = Identity("meridian.local", Kind.GATEWAY)
    first = ca.leaf(gateway).serial
    # Past half its lifetime: due.
    ca.ensure(gateway, dns_names=["localhost"], ip_addresses=["127.0.0.1"], now=time.time())
    assert ca.leaf(gateway).serial == first
    later = time.time() + 13 * 3600
    renewed = ca.ensure(gateway, dns_names=["localhost"], ip_addresses=["127.0.0.1"], now=later)
    assert renewed.serial != first
    # Other names: re-issued.
    moved = ca.ensure(gateway, dns_names=["gw.example"], ip_addresses=["127.0.0.1"])
    assert moved.dns_names == ("gw.example",)
    # Another lifetime: re-issued.
    short = ca.ensure(gateway, lifetime_s=600, dns_names=["gw.example"], ip_addresses=["127.0.0.1"])
    assert short.validity.not_after - time.time() < 700
    # A new root: everything moves to it.
    ca.rotate()
    before = serials(ca)
    ensure_sandbox(cfg)
    after = serials(ca)
    assert all(after[slug] != before[slug] for slug in after)


def test_nats_servers_share_one_subject_and_older_leaves_are_reissued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    server = Identity("meridian.local", Kind.NATS, "global-us-east")
    # A sandbox from before NATS servers shared their subject: CN = the slug.
    with monkeypatch.context() as m:
        m.setattr(ca_module, "common_name", lambda identity: identity.slug)
        ensure_sandbox(cfg)
    ca = sandbox_ca(cfg)
    old = ca.leaf(server)
    assert old.common_name == "nats-global-us-east"
    ensure_sandbox(cfg)
    new = ca.leaf(server)
    assert new.common_name == "nats-server" and new.serial != old.serial
    assert ca.leaf(Identity("meridian.local", Kind.GATEWAY)).common_name == "gateway"
    ensure_sandbox(cfg)
    assert ca.leaf(server).serial == new.serial  # current subject: kept


def test_a_ca_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    ensure_sandbox(config(tmp_path))
    other = config(tmp_path, '[security]\ntrust_domain = "shop.example"\n')
    with pytest.raises(ConfigError) as err:
        ensure_identity(other, "service/orders")
    assert err.value.violations[0].field == "security.trust_domain"


def test_insecure_mode_issues_nothing_and_has_no_client_context(tmp_path: Path) -> None:
    cfg = config(tmp_path, '[security]\nmode = "insecure"\n')
    assert ensure_sandbox(cfg) == []
    assert client_ssl(cfg) is None
    assert not cfg.ca_path.exists()


def test_missing_client_files_are_a_config_error_naming_the_field(tmp_path: Path) -> None:
    cfg = config(tmp_path, '[security]\nclient_tls_dir = "nowhere"\n')
    with pytest.raises(ConfigError) as err:
        client_ssl(cfg)
    assert err.value.violations[0].field == "security.client_tls_dir"
