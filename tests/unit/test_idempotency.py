"""The pure idempotency rules: the stored record, what a Begin finds, and request validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.errors import InvalidArgumentError
from meridian.idempotency.model import (
    IdempotencyRecord,
    RecordState,
    StoredResponse,
    Verdict,
    fingerprint_violations,
    judge,
    key_violations,
    lease_violations,
    response_violations,
    scope_violations,
    storage_key,
)

FP = "a" * 64


def in_progress(lease_expires_ms: int = 2_000, fp: str = FP) -> IdempotencyRecord:
    return IdempotencyRecord("shop", "k", fp, RecordState.IN_PROGRESS, 1_000, lease_expires_ms)


def completed(fp: str = FP) -> IdempotencyRecord:
    return IdempotencyRecord(
        "shop", "k", fp, RecordState.COMPLETED, 1_000, completed_token=7,
        response=StoredResponse(500, b"boom", (("x", "y"),)),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("record", "fp", "now", "verdict"),
    [
        (None, FP, 0, Verdict.ABSENT),
        (in_progress(), FP, 1_500, Verdict.IN_PROGRESS),
        (in_progress(), FP, 2_000, Verdict.EXPIRED),
        (in_progress(), "b" * 64, 1_500, Verdict.MISMATCH),
        (in_progress(), "b" * 64, 9_000, Verdict.MISMATCH),
        (completed(), FP, 10**12, Verdict.COMPLETED),
        (completed(), "b" * 64, 0, Verdict.MISMATCH),
    ],
)
def test_judge(record: IdempotencyRecord | None, fp: str, now: int, verdict: Verdict) -> None:
    assert judge(record, fp, now) is verdict


texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20)


@given(
    st.sampled_from(list(RecordState)),
    st.integers(0, 2**48),
    st.integers(0, 2**48),
    st.integers(0, 2**63),
    st.integers(-(2**31), 2**31 - 1),
    st.binary(max_size=64),
    st.lists(st.tuples(texts, texts), max_size=4),
    texts,
)
def test_record_round_trips(
    state: RecordState,
    created: int,
    lease: int,
    token: int,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]],
    key: str,
) -> None:
    if state is RecordState.IN_PROGRESS:
        record = IdempotencyRecord("s", key, FP, state, created, lease_expires_ms=lease)
    else:
        record = IdempotencyRecord(
            "s", key, FP, state, created, completed_token=token,
            response=StoredResponse(status, body, tuple(headers)),
        )  # fmt: skip
    assert IdempotencyRecord.decode(record.encode()) == record


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b'{"v": 2}', b'{"v": 1, "state": "odd"}',
     b'{"v":1,"state":"completed","scope":"s","key":"k","fingerprint":"f","created_ms":1,'
     b'"completed_token":1,"response":{"status":1,"body":"%%","headers":[]}}',
     b"[" * 100_000, b"x" * (5 << 20)],
)  # fmt: skip
def test_record_decode_rejects_anything_else(data: bytes) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        IdempotencyRecord.decode(data)
    assert err.value.field == "record"


def test_storage_keys_are_subject_safe_and_scoped() -> None:
    a = storage_key("shop", "order 1/ü?*>")
    assert a.startswith("k.") and len(a) == 66 and a[2:].isalnum()
    assert storage_key("shop", "k") != storage_key("shop2", "k")
    # The scope's length is part of the hash, so the boundary can't be moved.
    assert storage_key("ab", "c") != storage_key("a", "bc")


def test_storage_keys_are_the_owners_own() -> None:
    orders, mallory = "spiffe://td/service/orders", "spiffe://td/service/mallory"
    assert storage_key("shop", "k", orders) != storage_key("shop", "k", mallory)
    assert storage_key("shop", "k", orders) != storage_key("shop", "k")
    # The owner's length is in the hash too: no owner/scope boundary to move.
    assert storage_key("b:shop", "k", "a") != storage_key("shop", "k", "a\n6:b")
    # Insecure mode (no owner) keeps the keys written before identities.
    assert storage_key("shop", "k", "") == storage_key("shop", "k")


def test_validation_names_each_field_and_rule() -> None:
    assert scope_violations("ok.scope:1/@x") == []
    assert scope_violations("")[0].field == "scope"
    assert key_violations("Any printable ~ key!") == []
    assert key_violations("x" * 256)[0].rule.startswith("must be 1..255 printable ASCII")
    assert key_violations("new\nline") != []
    assert fingerprint_violations(FP) == []
    assert fingerprint_violations("A" * 64)[0].field == "fingerprint"
    assert lease_violations(1, 1000) == []
    assert lease_violations(0, 1000)[0].field == "lease"
    assert lease_violations(1001, 1000)[0].rule == "must be above zero and at most 1s"
    assert response_violations(StoredResponse(200, b"x" * (1 << 20))) == []
    big = response_violations(StoredResponse(200, b"x" * ((1 << 20) + 1)))
    assert [v.field for v in big] == ["response.body"]
    many = response_violations(StoredResponse(200, b"", tuple((str(i), "") for i in range(65))))
    assert [v.field for v in many] == ["response.headers"]
