"""The ``[security]`` table, and the TLS folders of regions and the gateway
(see :mod:`meridian.config` and docs/security.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meridian.config.model import (
    DEFAULT_TRUST_DOMAIN,
    LOOPBACK_HOSTS,
    SECURITY_MODES,
    SecurityConfig,
)
from meridian.config.reader import Reader
from meridian.security.model import (
    MAX_LEAF_LIFETIME_S,
    MIN_LEAF_LIFETIME_S,
    TRUST_DOMAIN,
)

#: Set to 1 (``--insecure`` does) to run without TLS whatever the file says.
INSECURE_ENV = "MERIDIAN_INSECURE"


def folder(rd: Reader, raw: Mapping[str, Any], key: str, path: str, base_dir: Path) -> Path | None:
    """An optional directory path; relative to the configuration file's directory."""
    if key not in raw:
        return None
    text = rd.string(raw, key, path, "")
    if not text or "\x00" in text:
        rd.bad(path, "must be a non-empty path to a directory")
        return None
    p = Path(text)
    return p if p.is_absolute() else base_dir / p


def security_section(
    rd: Reader, raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path
) -> SecurityConfig:
    rd.known(
        raw,
        {"mode", "trust_domain", "ca_dir", "client_tls_dir", "leaf_lifetime_s"},
        "security",
    )
    d = SecurityConfig()
    mode = rd.string(raw, "mode", "security.mode", d.mode)
    if mode not in SECURITY_MODES:
        rd.bad("security.mode", f"must be mtls or insecure; got {mode!r}")
        mode = d.mode
    if env.get(INSECURE_ENV, "") not in ("", "0"):
        if env[INSECURE_ENV] != "1":
            rd.bad(INSECURE_ENV, f"must be 1 (or unset); got {env[INSECURE_ENV][:20]!r}")
        else:
            mode = "insecure"
    domain = rd.string(raw, "trust_domain", "security.trust_domain", DEFAULT_TRUST_DOMAIN)
    if not TRUST_DOMAIN.match(domain):
        rd.bad(
            "security.trust_domain",
            "must be 1-255 characters of a-z, 0-9, '.', '-' and '_', starting and ending "
            "with a letter or digit",
        )
        domain = DEFAULT_TRUST_DOMAIN
    return SecurityConfig(
        mode=mode,
        trust_domain=domain,
        ca_dir=folder(rd, raw, "ca_dir", "security.ca_dir", base_dir),
        client_tls_dir=folder(rd, raw, "client_tls_dir", "security.client_tls_dir", base_dir),
        leaf_lifetime_s=rd.number(
            raw,
            "leaf_lifetime_s",
            "security.leaf_lifetime_s",
            d.leaf_lifetime_s,
            low=MIN_LEAF_LIFETIME_S,
            high=MAX_LEAF_LIFETIME_S,
        ),
    )


def check_plaintext_listeners(
    rd: Reader, security: SecurityConfig, listeners: Mapping[str, str]
) -> None:
    """Without TLS, nothing may listen beyond loopback: ``listeners`` is
    field path -> host."""
    if security.tls:
        return
    for path, host in listeners.items():
        if host not in LOOPBACK_HOSTS:
            rd.bad(
                path,
                f"{host!r} is not a loopback address, and security.mode is insecure: "
                'a plaintext listener must stay on 127.0.0.1; set security.mode = "mtls"',
            )
