"""The ``[security]`` table, the TLS folders and ``gateway.allow``: defaults,
the ``MERIDIAN_INSECURE`` switch, and bad values named by field."""

from __future__ import annotations

from pathlib import Path

import pytest

from meridian.core.paths import DEFAULT_ALLOW
from tests.unit.config_harness import NO_LINKS, assert_violation, config_error, load_text


def test_mutual_tls_is_the_default_and_paths_follow_the_workdir(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, NO_LINKS)
    assert cfg.security.mode == "mtls"
    assert cfg.security.trust_domain == "meridian.local"
    assert cfg.ca_path == tmp_path / ".meridian/sandbox/ca"
    assert cfg.agent_tls_dir("eu-west") == cfg.ca_path / "identities/agent-eu-west"
    assert cfg.gateway_tls_dir == cfg.ca_path / "identities/gateway"
    assert cfg.client_tls_dir == cfg.ca_path / "identities/operator-meridian"
    assert all(r.http_url.startswith("https://") for r in cfg.regions)
    assert cfg.gateway.allow == DEFAULT_ALLOW


def test_own_folders_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        NO_LINKS
        + '[security]\nca_dir = "pki"\nclient_tls_dir = "/etc/me"\n'
        + '[gateway]\ntls_dir = "gw"\n'
        + '[[region]]\nname = "us-east"\ntls_dir = "certs/us"\n',
    )
    assert cfg.ca_path == tmp_path / "pki"
    assert cfg.client_tls_dir == Path("/etc/me")
    assert cfg.gateway_tls_dir == tmp_path / "gw"
    assert cfg.agent_tls_dir("us-east") == tmp_path / "certs/us"


def test_insecure_mode_from_the_file_or_the_environment(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, NO_LINKS + '[security]\nmode = "insecure"\n')
    assert not cfg.security.tls
    assert cfg.client_tls_dir is None
    assert all(r.http_url.startswith("http://") for r in cfg.regions)
    cfg = load_text(tmp_path, NO_LINKS, env={"MERIDIAN_INSECURE": "1"})
    assert cfg.security.mode == "insecure"
    assert load_text(tmp_path, NO_LINKS, env={"MERIDIAN_INSECURE": "0"}).security.tls


@pytest.mark.parametrize(
    ("text", "env", "field", "hint"),
    [
        ('[security]\nmode = "tls"\n', {}, "security.mode", "mtls or insecure"),
        ("[security]\nmode = 1\n", {}, "security.mode", "must be a string"),
        ('[security]\ntrust_domain = "Bad Domain"\n', {}, "security.trust_domain", "a-z"),
        ('[security]\ntrust_domain = ""\n', {}, "security.trust_domain", "a-z"),
        ('[security]\ntrust_domain = "a/b"\n', {}, "security.trust_domain", "a-z"),
        ('[security]\nca_dir = ""\n', {}, "security.ca_dir", "non-empty path"),
        ('[security]\nca_dir = "a\\u0000b"\n', {}, "security.ca_dir", "non-empty path"),
        ("[security]\nclient_tls_dir = 3\n", {}, "security.client_tls_dir", "must be a string"),
        ("[security]\nleaf_lifetime_s = 1\n", {}, "security.leaf_lifetime_s", "between"),
        ('[security]\nleaf_lifetime_s = "1d"\n', {}, "security.leaf_lifetime_s", "number"),
        ("[security]\nkeys = 1\n", {}, "security.keys", "unknown setting"),
        ("", {"MERIDIAN_INSECURE": "yes"}, "MERIDIAN_INSECURE", "must be 1"),
        (
            '[security]\nmode = "insecure"\n[gateway]\nhost = "0.0.0.0"\n',
            {},
            "gateway.host",
            "not a loopback address",
        ),
        ('[gateway]\nallow = "/v1/invoke/*"\n', {}, "gateway.allow", "list of paths"),
        ('[gateway]\nallow = ["/v1/../state/*"]\n', {}, "gateway.allow[0]", "lowercase"),
        ('[gateway]\nallow = ["/v1/health", 7]\n', {}, "gateway.allow[1]", "lowercase"),
        ('[gateway]\ntls_dir = ""\n', {}, "gateway.tls_dir", "non-empty path"),
    ],
)
def test_bad_security_settings_are_named(
    tmp_path: Path, text: str, env: dict[str, str], field: str, hint: str
) -> None:
    assert_violation(config_error(tmp_path, NO_LINKS + text, env), field, hint)


def test_a_non_loopback_gateway_is_fine_with_tls(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, NO_LINKS + '[gateway]\nhost = "0.0.0.0"\n')
    assert cfg.gateway.host == "0.0.0.0"


def test_loopback_endpoints_follow_whether_a_sandbox_runs(tmp_path: Path) -> None:
    assert load_text(tmp_path, NO_LINKS).endpoint_policy.loopback  # the sandbox
    real = "".join(
        f'[[region]]\nname = "{r}"\nnats_urls = ["nats://n.{r}:4222"]\n'
        for r in ("us-east", "eu-west", "ap-south")
    )
    assert not load_text(tmp_path, NO_LINKS + real).endpoint_policy.loopback
    forced = load_text(tmp_path, NO_LINKS + real + '[invocation]\nloopback_endpoints = "allow"\n')
    assert forced.endpoint_policy.loopback
    nets = load_text(tmp_path, NO_LINKS + '[invocation]\nallowed_networks = ["10.0.0.0/8"]\n')
    assert [str(n) for n in nets.endpoint_policy.networks] == ["10.0.0.0/8"]


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ('[invocation]\nloopback_endpoints = "yes"\n', "invocation.loopback_endpoints", "sandbox"),
        (
            '[invocation]\nallowed_networks = ["10.0.0.1/8"]\n',
            "invocation.allowed_networks[0]",
            "CIDR",
        ),
        ('[invocation]\nallowed_networks = "10.0.0.0/8"\n', "invocation.allowed_networks", "list"),
    ],
)
def test_bad_endpoint_settings_are_named(tmp_path: Path, text: str, field: str, hint: str) -> None:
    assert_violation(config_error(tmp_path, NO_LINKS + text), field, hint)
