"""The identities a sandbox or a test fleet needs, from the built-in CA.

``meridian sandbox up`` calls :func:`ensure_sandbox` before it starts anything:
the CA is created on first use (in ``security.ca_dir``, trust domain
``security.trust_domain``), and each agent, the gateway and the CLI's
``operator/meridian`` identity get a leaf, re-issued when it is missing, due
for renewal, on an old root, or asked for with other names or lifetime.
Services get theirs from :func:`ensure_identity` as they are started.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path

from meridian.audit.keys import ensure_keys
from meridian.config import MeridianConfig
from meridian.core.errors import ConfigError, FieldViolation
from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity, Kind
from meridian.security.tls import ClientTls, TlsFiles


def sandbox_ca(config: MeridianConfig) -> CertificateAuthority:
    """The built-in CA of ``config``, created if it does not exist yet."""
    ca = CertificateAuthority(config.ca_path)
    want = config.security.trust_domain
    if not ca.exists():
        ca.init(want)
    elif ca.trust_domain != want:
        raise ConfigError(
            FieldViolation(
                "security.trust_domain",
                f"is {want!r}, but the CA in {ca.dir} is for {ca.trust_domain!r}; "
                "use that trust domain or another security.ca_dir",
            ),
            config.source,
        )
    return ca


def ensure_identity(
    config: MeridianConfig,
    spec: str,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> Path:
    """The folder (cert.pem, key.pem, bundle.pem) of ``spec`` (``service/orders``,
    ``agent/us-east``, ...), issued or renewed as needed."""
    ca = sandbox_ca(config)
    identity = Identity.from_spec(ca.trust_domain, spec)
    leaf = ca.ensure(
        identity,
        lifetime_s=round(config.security.leaf_lifetime_s),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    return leaf.cert_path.parent


def _host_sans(host: str) -> tuple[list[str], list[str]]:
    """DNS and IP SANs for a listener on ``host`` (and ``localhost``)."""
    dns, ips = ["localhost"], ["127.0.0.1"]
    try:
        ips.append(str(ipaddress.ip_address(host)))
    except ValueError:
        dns.append(host)
    return sorted(set(dns)), sorted(set(ips))


def ensure_sandbox(config: MeridianConfig) -> list[Identity]:
    """Every identity a sandbox runs as: one agent per region (unless the region
    brings its own ``tls_dir``), the gateway and the CLI. Nothing in insecure mode."""
    if not config.security.tls:
        return []
    done = []
    for region in config.regions:
        if region.tls_dir is None:
            dns, ips = _host_sans(region.listen_host)
            ensure_identity(config, f"agent/{region.name}", dns_names=dns, ip_addresses=ips)
            done.append(Identity(config.security.trust_domain, Kind.AGENT, region.name))
    if config.gateway.tls_dir is None:
        dns, ips = _host_sans(config.gateway.host)
        ensure_identity(config, "gateway", dns_names=dns, ip_addresses=ips)
        done.append(Identity(config.security.trust_domain, Kind.GATEWAY))
    if config.security.client_tls_dir is None:
        ensure_identity(config, "operator/meridian")
        done.append(Identity(config.security.trust_domain, Kind.OPERATOR, "meridian"))
    # The sandbox's nats-servers (their client ports), and the system account's user.
    td = config.security.trust_domain
    for region in config.regions:
        if region.nats_urls:
            continue  # a real supercluster's servers are not ours to certify
        for server in (region.name, f"global-{region.name}"):
            ensure_identity(
                config, f"nats/{server}", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
            )
            done.append(Identity(td, Kind.NATS, server))
    if config.runs_sandbox:
        ensure_identity(config, "operator/nats-system")
        done.append(Identity(td, Kind.OPERATOR, "nats-system"))
    # Each region's audit key: its agent signs checkpoints with it.
    ensure_keys(config.audit_keys_dir, config.region_names)
    return done


def client_files(config: MeridianConfig) -> TlsFiles | None:
    """What the CLI and tools present to agents: ``security.client_tls_dir`` (the
    built-in CA's ``operator-meridian`` by default); None in insecure mode."""
    folder = config.client_tls_dir
    return None if folder is None else TlsFiles.in_folder(folder)


def client_tls(config: MeridianConfig) -> ClientTls | None:
    """The CLI's and tools' client context for the agents' HTTPS ports, as
    :func:`client_files`, following the files: call ``current()`` for each new
    connection, so a tool that polls for longer than a leaf lives keeps
    presenting a valid certificate. None in insecure mode; ConfigError naming
    the field when the files can't be read."""
    files = client_files(config)
    if files is None:
        return None
    try:
        return ClientTls(files)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            FieldViolation(
                "security.client_tls_dir",
                f"cannot load a client certificate from {files.cert.parent} ({exc}); "
                "run `meridian sandbox up` (it issues operator/meridian) or point "
                "security.client_tls_dir at cert.pem, key.pem and bundle.pem",
            ),
            config.source,
        ) from exc


def client_ssl(config: MeridianConfig) -> ssl.SSLContext | None:
    """:func:`client_tls`'s context as the files are now, for a one-off call."""
    tls = client_tls(config)
    return None if tls is None else tls.current()


def front_door_ssl(config: MeridianConfig) -> ssl.SSLContext | None:
    """How an outside client (the demo's shoppers) trusts the gateway: the CA's
    bundle, the gateway's host name checked, no client certificate. None in
    insecure mode."""
    if not config.security.tls:
        return None
    bundle = TlsFiles.in_folder(config.gateway_tls_dir).bundle
    return ssl.create_default_context(cafile=str(bundle))
