"""The agents' internal messages never reach the SDKs.

proto/meridian/internal/v1 is generated for Python only: scripts/gen-go and
the Rust build script read proto/meridian/v1 alone, so the public contract
carries no agent-to-agent message.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = ROOT / "proto" / "meridian" / "internal" / "v1"


def internal_messages() -> set[str]:
    names: set[str] = set()
    for proto in INTERNAL.glob("*.proto"):
        names |= set(re.findall(r"^message (\w+)", proto.read_text(), re.M))
    return names


def test_internal_messages_exist_and_are_not_in_the_public_contract() -> None:
    internal = internal_messages()
    assert {"ForwardedCall", "ForwardedResult", "ForwardError"} <= internal
    for proto in (ROOT / "proto" / "meridian" / "v1").glob("*.proto"):
        public = set(re.findall(r"^message (\w+)", proto.read_text(), re.M))
        assert not public & internal, f"{proto.name} defines {sorted(public & internal)}"


def test_the_go_sdk_is_generated_without_them() -> None:
    generated = "".join(p.read_text() for p in (ROOT / "sdk/go/meridianpb").rglob("*.go"))
    assert "type InvokeRequest struct" in generated  # the public messages are there
    leaked = sorted(m for m in internal_messages() if re.search(rf"\btype {m} struct", generated))
    assert not leaked, f"Go SDK carries internal messages: {leaked}"
    assert "find meridian/v1 " in (ROOT / "scripts/gen-go").read_text()


def test_the_rust_sdk_compiles_the_public_package_only() -> None:
    build = (ROOT / "sdk/rust/build.rs").read_text()
    assert 'include.join("meridian/v1")' in build
    assert "internal" not in build


def test_the_vendored_google_api_protos_are_the_locked_packages_own() -> None:
    """proto/google/api is a copy, for the Go and Rust generators, of the
    google.api.http annotation protos the locked googleapis-common-protos ships
    (and Python imports at run time): byte for byte the same."""
    from google.api import annotations_pb2

    installed = Path(annotations_pb2.__file__).parent
    vendored = sorted((ROOT / "proto" / "google" / "api").glob("*.proto"))
    assert [p.name for p in vendored] == ["annotations.proto", "http.proto"]
    for proto in vendored:
        assert proto.read_bytes() == (installed / proto.name).read_bytes(), proto.name
