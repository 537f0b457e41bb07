"""The audit entry: one decision Meridian made, as the bytes the log commits to.

An entry's leaf in the Merkle tree is ``leaf_hash(entry.canonical())``: its
RFC 8785 (JCS) canonical JSON, produced by :mod:`meridian.core.canonical`, so
Python, Go and Rust verifiers hash the same bytes. :meth:`AuditEntry.parse`
accepts only that canonical form: one entry has one encoding and so one leaf
hash, and a stored entry that was re-spaced or re-ordered does not parse
instead of silently hashing to something else.

Limits keep one hostile entry from costing much: every string (detail keys
and values included) is at most :data:`MAX_STRING_CHARS` characters and the
canonical entry at most :data:`MAX_ENTRY_BYTES` bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from meridian.core.canonical import canonicalize
from meridian.core.canonical import parse as parse_json
from meridian.core.errors import InvalidArgumentError
from meridian.core.hlc import HlcTimestamp

#: Longest string any field (or detail key or value) may hold, in characters.
MAX_STRING_CHARS = 4096
#: Largest canonical entry, in bytes.
MAX_ENTRY_BYTES = 64 * 1024
DECISIONS = frozenset({"permit", "deny"})
SPIFFE_PREFIX = "spiffe://"
#: A region name, as meridian.config.model.REGION_NAME (which a model may
#: not import: models sit below config in the layers).
REGION_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]")


def _bad(name: str, rule: str) -> ValueError:
    return ValueError(f"{name}: {rule}")


def _check_string(name: str, value: object, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise _bad(name, f"must be a string, got {type(value).__name__}")
    if not value and not empty_ok:
        raise _bad(name, "must not be empty")
    if len(value) > MAX_STRING_CHARS:
        raise _bad(name, f"must be at most {MAX_STRING_CHARS} characters, got {len(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise _bad(name, "must be valid Unicode (no lone surrogates)") from None
    return value


@dataclass(frozen=True)
class AuditEntry:
    """One audited decision.

    Construction validates every field and raises :class:`ValueError` naming
    the field and the rule, so every entry that exists has a canonical form
    that :meth:`parse` accepts back: ``parse(e.canonical()) == e``.
    """

    #: The request's ID (non-empty).
    request_id: str
    #: Who asked: a SPIFFE ID (``spiffe://...``), or "" when unauthenticated.
    principal: str
    #: What was asked, e.g. "admin:policies", "state:write" (non-empty).
    action: str
    #: What it was asked of; may be "".
    resource: str
    #: "permit" or "deny".
    decision: str
    #: The region that decided (a region name).
    region: str
    #: When, as an HLC timestamp: 16 lowercase hex digits (HlcTimestamp.encode).
    hlc: str
    #: Small extra fields, string to string; kept read-only.
    detail: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_string("request_id", self.request_id)
        principal = _check_string("principal", self.principal, empty_ok=True)
        if principal and not principal.startswith(SPIFFE_PREFIX):
            raise _bad("principal", f"must be a SPIFFE ID ({SPIFFE_PREFIX}...) or empty")
        _check_string("action", self.action)
        _check_string("resource", self.resource, empty_ok=True)
        if _check_string("decision", self.decision) not in DECISIONS:
            raise _bad("decision", f'must be "permit" or "deny", got {self.decision!r:.40}')
        if not REGION_NAME.fullmatch(_check_string("region", self.region)):
            raise _bad(
                "region",
                "must be 2-32 characters of a-z, 0-9 and '-', "
                "starting with a letter and not ending with '-'",
            )
        try:
            HlcTimestamp.decode(_check_string("hlc", self.hlc))
        except InvalidArgumentError as exc:
            raise _bad("hlc", exc.violations[0].rule) from None
        if not isinstance(self.detail, Mapping):
            raise _bad("detail", f"must be a mapping of strings, got {type(self.detail).__name__}")
        detail: dict[str, str] = {}
        for key, value in self.detail.items():
            _check_string("detail key", key)
            detail[key] = _check_string(f"detail[{key[:40]!r}]", value, empty_ok=True)
        # A private copy behind a read-only view: the caller's dict can't
        # change a frozen entry, nor its canonical bytes, afterwards.
        object.__setattr__(self, "detail", MappingProxyType(detail))
        # Compact JSON of strings is as long as its canonical form (same
        # escapes, only the key order differs), so the size is checked before
        # canonicalize(), which refuses documents past 1 MiB with its own error.
        compact = json.dumps(self._as_json(), ensure_ascii=False, separators=(",", ":")).encode()
        if len(compact) > MAX_ENTRY_BYTES:
            raise _bad("entry", f"must be at most {MAX_ENTRY_BYTES} bytes as canonical JSON")
        # Computed once: canonical() returns it.
        object.__setattr__(self, "_canonical", canonicalize(compact))

    def _as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["detail"] = dict(self.detail)
        return out

    def canonical(self) -> bytes:
        """The entry as RFC 8785 canonical JSON (UTF-8): an object with every
        field, ``detail`` an object of strings. What the log's leaf hashes."""
        encoded: bytes = self.__dict__["_canonical"]
        return encoded

    @classmethod
    def parse(cls, data: bytes) -> AuditEntry:
        """The entry whose :meth:`canonical` form is ``data``.

        Raises :class:`ValueError` naming the field and the rule: input over
        :data:`MAX_ENTRY_BYTES` or not JSON, not an object, an unknown or a
        missing field, a value of the wrong type, a decision other than
        permit/deny, a string over :data:`MAX_STRING_CHARS` characters, or
        bytes that are not the canonical form of the entry they hold.
        """
        if not isinstance(data, bytes):
            raise _bad("entry", f"must be bytes, got {type(data).__name__}")
        if len(data) > MAX_ENTRY_BYTES:
            raise _bad("entry", f"must be at most {MAX_ENTRY_BYTES} bytes, got {len(data)}")
        try:
            value = parse_json(data)
        except InvalidArgumentError as exc:
            raise _bad("entry", exc.violations[0].rule) from None
        if not isinstance(value, dict):
            raise _bad("entry", f"must be a JSON object, got {type(value).__name__}")
        names = [f.name for f in fields(cls)]
        for key in value:
            if key not in names:
                raise _bad(str(key)[:40], "unknown field")
        for name in names:
            if name not in value:
                raise _bad(name, "missing field")
        detail = value["detail"]
        if not isinstance(detail, dict):
            raise _bad("detail", "must be an object of strings")
        entry = cls(**{name: value[name] for name in names if name != "detail"}, detail=detail)
        if entry.canonical() != data:
            raise _bad("entry", "must be in RFC 8785 canonical form")
        return entry
