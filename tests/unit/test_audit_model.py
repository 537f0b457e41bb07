"""audit.model: the audit entry and its canonical JSON."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.audit.merkle import leaf_hash
from meridian.audit.model import MAX_ENTRY_BYTES, MAX_STRING_CHARS, AuditEntry
from meridian.core.hlc import HlcTimestamp

ENTRY = AuditEntry(
    request_id="req-1",
    principal="spiffe://prod.example/operator/alice",
    action="admin:policies",
    resource="policies/default",
    decision="deny",
    region="us-east",
    hlc=HlcTimestamp(1_700_000_000_000, 3).encode(),
    detail={"reason": "not an admin", "method": "PUT"},
)


def test_the_canonical_form_is_sorted_compact_json() -> None:
    assert ENTRY.canonical() == (
        b'{"action":"admin:policies","decision":"deny",'
        b'"detail":{"method":"PUT","reason":"not an admin"},'
        b'"hlc":"018bcfe568000003","principal":"spiffe://prod.example/operator/alice",'
        b'"region":"us-east","request_id":"req-1","resource":"policies/default"}'
    )
    assert AuditEntry.parse(ENTRY.canonical()) == ENTRY
    # Key order in detail does not change the entry, its bytes or its leaf.
    same = dataclasses.replace(ENTRY, detail={"method": "PUT", "reason": "not an admin"})
    assert same == ENTRY and hash(same) == hash(ENTRY)
    assert leaf_hash(same.canonical()) == leaf_hash(ENTRY.canonical())


def test_non_ascii_is_kept_as_utf8() -> None:
    e = dataclasses.replace(ENTRY, resource="clés/\u2603", detail={"\u00e9": "\U0001f600"})
    assert "clés/\u2603".encode() in e.canonical()
    assert AuditEntry.parse(e.canonical()) == e


def test_the_entry_is_immutable_and_owns_its_detail() -> None:
    detail = {"k": "v"}
    e = dataclasses.replace(ENTRY, detail=detail)
    before = e.canonical()
    detail["k"] = "changed"
    assert e.detail == {"k": "v"} and e.canonical() == before
    with pytest.raises(TypeError):
        e.detail["k"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.decision = "permit"  # type: ignore[misc]
    assert AuditEntry(**{**_fields(ENTRY), "detail": {}}).detail == {}


def _fields(e: AuditEntry) -> dict[str, Any]:
    return {f.name: getattr(e, f.name) for f in dataclasses.fields(e)}


LONG = "x" * (MAX_STRING_CHARS + 1)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"request_id": ""}, "request_id: must not be empty"),
        ({"request_id": 7}, "request_id: must be a string, got int"),
        ({"principal": "alice"}, "principal: must be a SPIFFE ID"),
        ({"action": LONG}, f"action: must be at most {MAX_STRING_CHARS} characters"),
        ({"resource": LONG}, "resource: must be at most"),
        ({"decision": "allow"}, 'decision: must be "permit" or "deny"'),
        ({"decision": ["deny"]}, "decision: must be a string"),
        ({"region": "US-East"}, "region: must be 2-32 characters"),
        ({"region": "us-east-"}, "region"),
        ({"hlc": "1700000000"}, "hlc: must be exactly 16 lowercase hex digits"),
        ({"hlc": "018BCFE568000003"}, "hlc: must be exactly 16 lowercase hex digits"),
        ({"detail": {"k": 1}}, "detail['k']: must be a string, got int"),
        ({"detail": {"": "v"}}, "detail key: must not be empty"),
        ({"detail": {LONG: "v"}}, "detail key: must be at most"),
        ({"detail": {"k": LONG}}, "detail['k']: must be at most"),
        ({"detail": [("k", "v")]}, "detail: must be a mapping"),
        ({"resource": "\ud800"}, "resource: must be valid Unicode"),
        (
            {"detail": {f"k{i}": "v" * 4000 for i in range(17)}},
            "entry: must be at most 65536 bytes",
        ),
        ({"detail": {f"k{i}": "v" * 4000 for i in range(300)}}, "entry: must be at most 65536"),
    ],
)
def test_construction_names_the_field_and_the_rule(change: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        AuditEntry(**{**_fields(ENTRY), **change})


def _doc(**change: Any) -> bytes:
    doc = json.loads(ENTRY.canonical())
    doc.update(change)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (_doc(extra="x"), "extra: unknown field"),
        (_doc(decision="maybe"), 'decision: must be "permit" or "deny"'),
        (_doc(region=None), "region: must be a string, got NoneType"),
        (_doc(hlc=12), "hlc: must be a string, got int"),
        (_doc(detail=["a"]), "detail: must be an object of strings"),
        (_doc(detail={"k": {"nested": "x"}}), "detail['k']: must be a string, got dict"),
        (_doc(action="a" * (MAX_STRING_CHARS + 1)), "action: must be at most 4096 characters"),
        (
            ENTRY.canonical().replace(b',"resource":"policies/default"', b""),
            "resource: missing field",
        ),
        (b"[]", "entry: must be a JSON object, got list"),
        (b'"x"', "entry: must be a JSON object, got str"),
        (b"{", "entry: is not valid JSON"),
        (b"\xff", "entry: must be UTF-8"),
        (ENTRY.canonical()[:-1] + b',"action":"x"}', "object keys must be unique"),
        (b" " * (MAX_ENTRY_BYTES + 1), "entry: must be at most 65536 bytes"),
        (ENTRY.canonical() + b"\n", "entry: must be in RFC 8785 canonical form"),
        (json.dumps(json.loads(ENTRY.canonical())).encode(), "canonical form"),  # spaces
        (_doc(resource="\u00e9").replace("\u00e9".encode(), b"\\u00e9"), "canonical form"),
        ("{}", "entry: must be bytes, got str"),
    ],
)
def test_parse_names_the_field_and_the_rule(data: bytes, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        AuditEntry.parse(data)


_text = st.text(st.characters(codec="utf-8"), max_size=30)
_nonempty = _text.filter(bool)

entries = st.builds(
    AuditEntry,
    request_id=_nonempty,
    principal=st.one_of(st.just(""), _text.map(lambda s: "spiffe://" + s)),
    action=_nonempty,
    resource=_text,
    decision=st.sampled_from(["permit", "deny"]),
    region=st.from_regex(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", fullmatch=True),
    hlc=st.integers(0, 2**64 - 1).map(lambda n: HlcTimestamp.from_int(n).encode()),
    detail=st.dictionaries(_nonempty, _text, max_size=5),
)


@given(entries)
def test_parse_inverts_canonical(entry: AuditEntry) -> None:
    data = entry.canonical()
    assert AuditEntry.parse(data) == entry
    assert AuditEntry.parse(data).canonical() == data
    assert len(data) <= MAX_ENTRY_BYTES
