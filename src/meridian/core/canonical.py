"""Canonical JSON (RFC 8785, JCS) and request fingerprints (DESIGN §4).

An idempotency key is bound to a fingerprint of its request: the SHA-256 of
the request's RFC 8785 canonical form when it is JSON, or of its raw bytes
when it is binary. Python, Go and Rust must produce the same bytes, so the
rules here are pinned down by the shared vectors in ``testdata/``:

- the input is UTF-8 JSON text with one top-level value, at most
  :data:`MAX_DOCUMENT_BYTES` long and at most :data:`MAX_DEPTH` deep;
- object keys must be unique and strings must be valid Unicode (no lone
  surrogates), as I-JSON (RFC 7493) requires;
- numbers are IEEE 754 doubles, as in JCS: ``1.0`` and ``1`` are the same,
  an integer past 2^53 is rounded to the nearest double and printed in
  ECMAScript form (``18446744073709551616`` → ``18446744073709552000``), and
  a number too large for a double (``1e400``) is an error.

Serialization is delegated to the ``rfc8785`` package; this module only
parses with the I-JSON rules above, which ``json.loads`` does not enforce on
its own.
"""

from __future__ import annotations

import hashlib
import json
import math
from enum import Enum
from typing import Any, NoReturn

import rfc8785

from meridian.core.errors import FieldViolation, InvalidArgumentError

#: Largest JSON document :func:`canonicalize` accepts (matches the value limit).
MAX_DOCUMENT_BYTES = 1024 * 1024
#: Deepest nesting of arrays and objects :func:`canonicalize` accepts.
MAX_DEPTH = 128
#: Integers of larger magnitude are not exact as doubles.
MAX_SAFE_INTEGER = (1 << 53) - 1


class PayloadKind(Enum):
    """How a payload is fingerprinted."""

    JSON = "json"
    BINARY = "binary"


def _bad(field: str, rule: str) -> NoReturn:
    raise InvalidArgumentError(FieldViolation(field, rule))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            shown = key if len(key) <= 40 else key[:37] + "..."
            _bad("payload", f"object keys must be unique (I-JSON), {shown!r} appears twice")
        out[key] = value
    return out


def _as_double(text: str) -> float | int:
    value = float(text)
    if math.isinf(value):
        _bad("payload", f"numbers must fit an IEEE 754 double, got {text[:32]}")
    # Keep exact small integers as int so rfc8785 prints them without a fraction;
    # it prints integral doubles the same way, so this is only a fast path.
    if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        return int(value)
    return value


def _no_constants(text: str) -> NoReturn:
    _bad("payload", f"NaN and Infinity are not JSON, got {text}")


def _check(value: Any, depth: int) -> None:
    # ``depth`` counts the arrays and objects around ``value``; recursion is
    # bounded by MAX_DEPTH.
    if isinstance(value, list | dict) and depth >= MAX_DEPTH:
        _bad("payload", f"JSON must be nested at most {MAX_DEPTH} deep")
    if isinstance(value, str):
        _check_string(value)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_string(key)
            _check(item, depth + 1)


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        _bad("payload", "strings must be valid Unicode (I-JSON): no lone surrogates")


def parse(data: bytes) -> Any:
    """Parse ``data`` as I-JSON text, with every number as a double.

    Raises :class:`InvalidArgumentError` naming ``payload`` and the broken rule.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        _bad("payload", f"must be bytes, got {type(data).__name__}")
    if len(data) > MAX_DOCUMENT_BYTES:
        _bad("payload", f"must be at most {MAX_DOCUMENT_BYTES} bytes, got {len(data)}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        _bad("payload", "must be UTF-8 text")
    if text.startswith("\ufeff"):
        _bad("payload", "must not start with a byte order mark")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_as_double,
            parse_float=_as_double,
            parse_constant=_no_constants,
        )
    except RecursionError:
        _bad("payload", f"JSON must be nested at most {MAX_DEPTH} deep")
    except ValueError as exc:  # JSONDecodeError
        _bad("payload", f"is not valid JSON: {str(exc)[:120]}")
    _check(value, 0)
    return value


def canonicalize(data: bytes) -> bytes:
    """The RFC 8785 canonical form of the JSON text ``data``."""
    return rfc8785.dumps(parse(data))


def fingerprint(payload: bytes, kind: PayloadKind = PayloadKind.JSON) -> str:
    """SHA-256 of the canonical JSON (or of the raw bytes), as 64 lowercase hex digits."""
    if kind is PayloadKind.JSON:
        body = canonicalize(payload)
    else:
        if not isinstance(payload, bytes | bytearray | memoryview):
            _bad("payload", f"must be bytes, got {type(payload).__name__}")
        body = bytes(payload)
    return hashlib.sha256(body).hexdigest()
