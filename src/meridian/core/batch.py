"""The rules every batch call shares (PublishBatch, GetMany, PutMany): how many
items, how many bytes in all, and each item's violations named by its index."""

from __future__ import annotations

from collections.abc import Iterable

from meridian.core.errors import FieldViolation

#: Items of one batch call, and the bytes of their payloads or values in all.
MAX_ITEMS = 1000
MAX_BYTES = 8 << 20


def batch_violations(
    field: str, count: int, total_bytes: int, *, item: str, data: str
) -> list[FieldViolation]:
    """The batch in ``field`` as a whole: 1..MAX_ITEMS ``item``s, at most
    MAX_BYTES of ``data`` (e.g. "payloads") in all."""
    if count == 0:
        return [FieldViolation(field, f"must hold at least one {item}")]
    out = []
    if count > MAX_ITEMS:
        out.append(FieldViolation(field, f"must hold at most {MAX_ITEMS} {item}s, got {count}"))
    if total_bytes > MAX_BYTES:
        out.append(
            FieldViolation(
                field, f"{data} must be at most {MAX_BYTES} bytes in all, got {total_bytes}"
            )
        )
    return out


def indexed(field: str, index: int, violations: Iterable[FieldViolation]) -> list[FieldViolation]:
    """``violations`` of item ``index`` of ``field``, named ``field[index].<their field>``."""
    return [FieldViolation(f"{field}[{index}].{v.field}", v.rule) for v in violations]
