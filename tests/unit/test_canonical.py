"""Canonical JSON, fingerprints and HLC against the shared vectors in testdata/."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.canonical import (
    MAX_DOCUMENT_BYTES,
    PayloadKind,
    canonicalize,
    fingerprint,
)
from meridian.core.errors import InvalidArgumentError
from meridian.core.hlc import HlcTimestamp

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"
CANONICAL = json.loads((TESTDATA / "canonical_json.json").read_text())
FINGERPRINTS = json.loads((TESTDATA / "fingerprint.json").read_text())
HLC = json.loads((TESTDATA / "hlc.json").read_text())


@pytest.mark.parametrize("case", CANONICAL["valid"], ids=lambda c: c["name"])
def test_canonical_vector(case: dict[str, str]) -> None:
    out = canonicalize(bytes.fromhex(case["input_hex"]))
    assert out == bytes.fromhex(case["canonical_hex"])
    # Canonical output is a fixed point.
    assert canonicalize(out) == out


@pytest.mark.parametrize("case", CANONICAL["invalid"], ids=lambda c: c["name"])
def test_canonical_rejects(case: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        canonicalize(bytes.fromhex(case["input_hex"]))
    violation = info.value.violations[0]
    assert violation.field == "payload"
    assert case["rule"] in violation.rule


@pytest.mark.parametrize("case", FINGERPRINTS["cases"], ids=lambda c: c["name"])
def test_fingerprint_vector(case: dict[str, str]) -> None:
    kind = PayloadKind(case["kind"])
    assert fingerprint(bytes.fromhex(case["payload_hex"]), kind) == case["fingerprint"]


def test_fingerprint_ignores_key_order_and_spacing_but_not_values() -> None:
    a = fingerprint(b'{"sku":"A-1","qty":2}')
    assert a == fingerprint(b'{ "qty": 2.0,\n "sku": "A-1" }')
    assert a != fingerprint(b'{"sku":"A-1","qty":3}')
    assert a != fingerprint(b'{"sku":"A-1","qty":2}', PayloadKind.BINARY)


@pytest.mark.parametrize("case", HLC["valid"], ids=lambda c: c["encoded"])
def test_hlc_vector(case: dict[str, object]) -> None:
    ts = HlcTimestamp(int(case["wall_ms"]), int(case["logical"]))  # type: ignore[call-overload]
    assert ts.to_int() == int(str(case["int"]))
    assert ts.encode() == case["encoded"]
    assert HlcTimestamp.decode(str(case["encoded"])) == ts


@pytest.mark.parametrize("case", HLC["invalid"], ids=lambda c: repr(c["text"]))
def test_hlc_rejects(case: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentError, match=case["rule"]):
        HlcTimestamp.decode(case["text"])


def test_oversized_document_is_rejected_before_parsing() -> None:
    big = b"[" + b"1," * (MAX_DOCUMENT_BYTES // 2) + b"1]"
    with pytest.raises(InvalidArgumentError, match="at most 1048576 bytes"):
        canonicalize(big)


def test_hostile_deep_nesting_is_an_error_not_a_crash() -> None:
    for doc in (b"[" * 100_000, b'{"a":' * 100_000):
        with pytest.raises(InvalidArgumentError):
            canonicalize(doc)


def test_non_bytes_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="must be bytes"):
        canonicalize("{}")  # type: ignore[arg-type]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(blacklist_categories=["Cs"])), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@given(json_values, st.booleans())
def test_canonical_form_is_stable_and_a_fixed_point(value: object, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=1).encode()
    out = canonicalize(text)
    assert canonicalize(out) == out
    # Same document, reading every number as a double (as JCS does).
    assert json.loads(out, parse_int=float) == json.loads(text, parse_int=float)
    assert fingerprint(text) == hashlib.sha256(out).hexdigest()
