"""testdata/errors.json, the error table the Go and Rust SDKs check, against
the error tree (core/errors.py) and the agent's table (transport/errors.py).

The checker is a function of the document, so the tests at the end can feed
it wrong tables and see that it notices.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

import meridian.core.errors as tree
from meridian.core.errors import ErrorCode, MeridianError
from meridian.transport.errors import ERROR_DOMAIN, ERROR_TABLE, StatusMapping, table_rows

TABLE_PATH = Path(__file__).resolve().parents[2] / "testdata" / "errors.json"
ROW_KEYS = {"code", "grpc_code", "http_status", "retryable"}


def error_classes() -> list[type[MeridianError]]:
    """MeridianError and every subclass of it in core/errors.py."""
    found: list[type[MeridianError]] = [MeridianError]
    for cls in found:
        found.extend(s for s in cls.__subclasses__() if s.__module__ == tree.__name__)
    return found


def tree_codes() -> set[str]:
    """Every code the error tree uses: the ErrorCode enum and each class's code."""
    return {c.value for c in ErrorCode} | {cls.code.value for cls in error_classes()}


def problems(
    document: Any, codes: set[str], table: dict[ErrorCode, StatusMapping], domain: str
) -> list[str]:
    """What is wrong with ``document`` as the error table; empty when nothing is."""
    if not isinstance(document, dict) or not isinstance(document.get("errors"), list):
        return ["the document is not an object with an 'errors' list"]
    found: list[str] = []
    if document.get("domain") != domain:
        found.append(f"domain is {document.get('domain')!r}, the agent sends {domain!r}")
    seen: set[str] = set()
    for i, row in enumerate(document["errors"]):
        if not isinstance(row, dict) or set(row) != ROW_KEYS:
            found.append(f"row {i} does not have exactly the keys {sorted(ROW_KEYS)}: {row!r}")
            continue
        code = row["code"]
        if code in seen:
            found.append(f"row {i}: {code} appears twice")
            continue
        seen.add(code)
        if code not in codes:
            found.append(f"row {i}: {code} is not a code of the error tree")
            continue
        mapping = table.get(ErrorCode(code))
        if mapping is None:
            found.append(f"row {i}: {code} is not in the agent's table")
            continue
        want: dict[str, object] = {
            "grpc_code": mapping.grpc.name,
            "http_status": mapping.http,
            "retryable": mapping.retryable,
        }
        for key, value in want.items():
            # `is` as well: the JSON must say `false`, not 0.
            if row[key] != value or type(row[key]) is not type(value):
                found.append(f"row {i}: {code} has {key} {row[key]!r}, the agent uses {value!r}")
    for code in sorted(codes - seen):
        found.append(f"{code} is in the error tree but has no row")
    for code in sorted({c.value for c in table} - seen):
        found.append(f"{code} is in the agent's table but has no row")
    return found


def load() -> Any:
    return json.loads(TABLE_PATH.read_text(encoding="ascii"))


def test_the_table_file_agrees_with_the_tree_and_the_agent() -> None:
    assert problems(load(), tree_codes(), ERROR_TABLE, ERROR_DOMAIN) == []


def test_the_table_file_is_what_gen_vectors_writes_byte_for_byte() -> None:
    # The same rendering as scripts/gen-vectors: run it after changing the table.
    document = load()
    assert document["errors"] == table_rows()
    assert TABLE_PATH.read_text(encoding="ascii") == json.dumps(document, indent=1) + "\n"


def test_the_agent_table_covers_exactly_the_tree() -> None:
    assert {c.value for c in ERROR_TABLE} == tree_codes()


def test_every_grpc_code_in_the_table_is_a_real_one() -> None:
    for row in load()["errors"]:
        assert row["grpc_code"] in grpc.StatusCode.__members__
        assert row["grpc_code"] != "OK"


def test_the_docstring_tree_names_every_class_with_its_code() -> None:
    # The tree written out in core/errors.py is documentation users read.
    doc = tree.__doc__ or ""
    drawn = dict(re.findall(r"^\s*(?:[│├└─ ]*)(\w+Error)\s+([A-Z_]+)\b", doc, re.MULTILINE))
    assert drawn == {cls.__name__: cls.code.value for cls in error_classes()}


# The checker notices a bad table. Each case breaks a copy of the real one.


def broken(change: str) -> Any:
    document = copy.deepcopy(load())
    rows: list[dict[str, Any]] = document["errors"]
    conflict = next(r for r in rows if r["code"] == "CONFLICT")
    if change == "grpc":
        conflict["grpc_code"] = "FAILED_PRECONDITION"
    elif change == "http":
        conflict["http_status"] = 412
    elif change == "retryable":
        conflict["retryable"] = True
    elif change == "retryable as a number":
        conflict["retryable"] = 0
    elif change == "missing row":
        rows.remove(conflict)
    elif change == "unknown code":
        rows.append({**conflict, "code": "TEAPOT"})
    elif change == "duplicate row":
        rows.append(dict(conflict))
    elif change == "extra key":
        conflict["message"] = "lost"
    elif change == "domain":
        document["domain"] = "example.com"
    elif change == "not a table":
        document = {"rows": rows}
    return document


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("grpc", "CONFLICT has grpc_code 'FAILED_PRECONDITION', the agent uses 'ABORTED'"),
        ("http", "CONFLICT has http_status 412, the agent uses 409"),
        ("retryable", "CONFLICT has retryable True, the agent uses False"),
        ("retryable as a number", "CONFLICT has retryable 0, the agent uses False"),
        ("missing row", "CONFLICT is in the error tree but has no row"),
        ("unknown code", "TEAPOT is not a code of the error tree"),
        ("duplicate row", "CONFLICT appears twice"),
        ("extra key", "does not have exactly the keys"),
        ("domain", "domain is 'example.com'"),
        ("not a table", "not an object with an 'errors' list"),
    ],
)
def test_the_checker_notices_a_wrong_table(change: str, says: str) -> None:
    found = problems(broken(change), tree_codes(), ERROR_TABLE, ERROR_DOMAIN)
    assert any(says in p for p in found), found


def test_the_checker_notices_a_code_the_agent_table_lacks() -> None:
    table: dict[ErrorCode, StatusMapping] = {
        c: m for c, m in ERROR_TABLE.items() if c != ErrorCode.FENCED
    }
    found = problems(load(), tree_codes(), table, ERROR_DOMAIN)
    assert any("FENCED is not in the agent's table" in p for p in found), found


def test_the_checker_notices_a_code_only_the_tree_has() -> None:
    found = problems(load(), {*tree_codes(), "BRAND_NEW"}, ERROR_TABLE, ERROR_DOMAIN)
    assert found == ["BRAND_NEW is in the error tree but has no row"]
