"""Idempotency keys: what is stored per key, and what a Begin finds (DESIGN §4).

A key's record is ``in_progress`` (a caller holds a lease) or ``completed``
(the command's response is stored). The fencing token of a holder is the
storage revision of the record that granted its lease, so tokens grow with
every grant and a holder whose lease was taken over can be told apart.

This module decides; the agent does the storage I/O around it:

- :func:`judge` turns what storage holds into the answer for a Begin;
- :class:`IdempotencyRecord` is the stored form (canonical JSON);
- the ``check_*`` functions validate requests before anything is written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn

from meridian.core.errors import FieldViolation, InvalidArgumentError

SCOPE = re.compile(r"[A-Za-z0-9._:/@-]{1,128}")
#: Printable ASCII, as an HTTP header's sf-string can carry it.
KEY = re.compile(r"[\x20-\x7e]{1,255}")
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
MAX_BODY_BYTES = 1 << 20
MAX_HEADERS = 64
MAX_HEADER_BYTES = 8 * 1024
#: The stored record: body base64 plus envelope.
MAX_RECORD_BYTES = 2 * MAX_BODY_BYTES
RECORD_VERSION = 1


class RecordState(Enum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


@dataclass(frozen=True)
class StoredResponse:
    """What the command returned, errors included, exactly as the caller gave it."""

    status: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IdempotencyRecord:
    """One key's stored record.

    ``lease_expires_ms`` holds for ``in_progress``; ``completed_token`` and
    ``response`` for ``completed`` (the token that completed it, so a retried
    Complete is recognised).
    """

    scope: str
    key: str
    fingerprint: str
    state: RecordState
    created_ms: int
    lease_expires_ms: int = 0
    completed_token: int = 0
    response: StoredResponse = field(default_factory=StoredResponse)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "v": RECORD_VERSION,
            "scope": self.scope,
            "key": self.key,
            "fingerprint": self.fingerprint,
            "state": self.state.value,
            "created_ms": self.created_ms,
        }
        if self.state is RecordState.IN_PROGRESS:
            doc["lease_expires_ms"] = self.lease_expires_ms
        else:
            doc["completed_token"] = self.completed_token
            doc["response"] = {
                "status": self.response.status,
                "body": base64.b64encode(self.response.body).decode("ascii"),
                "headers": [list(h) for h in self.response.headers],
            }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> IdempotencyRecord:
        """Inverse of :meth:`encode`; anything else raises InvalidArgumentError."""
        if len(data) > MAX_RECORD_BYTES:
            _bad(f"is larger than {MAX_RECORD_BYTES} bytes")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            _bad("is not JSON")
        if not isinstance(doc, dict) or doc.get("v") != RECORD_VERSION:
            _bad(f"is not a version {RECORD_VERSION} record")
        try:
            state = RecordState(doc["state"])
            response = StoredResponse()
            if state is RecordState.COMPLETED:
                raw = doc["response"]
                response = StoredResponse(
                    status=int(raw["status"]),
                    body=base64.b64decode(raw["body"], validate=True),
                    headers=tuple((str(k), str(v)) for k, v in raw["headers"]),
                )
            return cls(
                scope=str(doc["scope"]),
                key=str(doc["key"]),
                fingerprint=str(doc["fingerprint"]),
                state=state,
                created_ms=int(doc["created_ms"]),
                lease_expires_ms=int(doc.get("lease_expires_ms", 0)),
                completed_token=int(doc.get("completed_token", 0)),
                response=response,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            _bad(f"is malformed ({exc})")


def _bad(rule: str) -> NoReturn:
    raise InvalidArgumentError(FieldViolation("record", rule))


# -- what a Begin finds -------------------------------------------------------


class Verdict(Enum):
    ABSENT = "absent"  # nothing stored: create the record
    NEW = "new"  # the caller got the key
    IN_PROGRESS = "in_progress"  # someone else holds a live lease
    COMPLETED = "completed"  # the stored response answers
    MISMATCH = "mismatch"  # the key is bound to another request
    EXPIRED = "expired"  # a lease ran out: take over at the record's revision


def judge(record: IdempotencyRecord | None, fingerprint: str, now_ms: int) -> Verdict:
    """What a Begin with ``fingerprint`` at ``now_ms`` finds in ``record``.

    A mismatch wins over every state: a key bound to one request never answers
    for another, not even while that one is in progress.
    """
    if record is None:
        return Verdict.ABSENT
    if record.fingerprint != fingerprint:
        return Verdict.MISMATCH
    if record.state is RecordState.COMPLETED:
        return Verdict.COMPLETED
    if now_ms >= record.lease_expires_ms:
        return Verdict.EXPIRED
    return Verdict.IN_PROGRESS


def storage_key(scope: str, key: str, owner: str = "") -> str:
    """The storage key of (scope, key) of the caller ``owner`` (its SPIFFE ID;
    "" in insecure mode): a SHA-256, so any printable key fits a NATS subject,
    two scopes never collide, and one identity can neither see nor touch
    another's keys (the same scope and key of another owner is another record)."""
    text = f"{len(scope)}:{scope}\n{key}"
    if owner:
        text = f"{len(owner)}:{owner}\n{text}"
    return f"k.{hashlib.sha256(text.encode()).hexdigest()}"


# -- request validation --------------------------------------------------------


def scope_violations(scope: str) -> list[FieldViolation]:
    if not SCOPE.fullmatch(scope):
        return [FieldViolation("scope", "must be 1..128 characters of A-Z a-z 0-9 . _ - : / @")]
    return []


def key_violations(key: str) -> list[FieldViolation]:
    if not KEY.fullmatch(key):
        return [FieldViolation("key", "must be 1..255 printable ASCII characters (0x20..0x7e)")]
    return []


def fingerprint_violations(fingerprint: str) -> list[FieldViolation]:
    if not FINGERPRINT.fullmatch(fingerprint):
        return [FieldViolation("fingerprint", "must be a SHA-256 as 64 lowercase hex digits")]
    return []


def lease_violations(lease_ms: int, max_lease_ms: int) -> list[FieldViolation]:
    if not 0 < lease_ms <= max_lease_ms:
        return [FieldViolation("lease", f"must be above zero and at most {max_lease_ms / 1000:g}s")]
    return []


def response_violations(response: StoredResponse) -> list[FieldViolation]:
    out = []
    if len(response.body) > MAX_BODY_BYTES:
        out.append(
            FieldViolation(
                "response.body", f"must be at most {MAX_BODY_BYTES} bytes, got {len(response.body)}"
            )
        )
    if len(response.headers) > MAX_HEADERS:
        out.append(FieldViolation("response.headers", f"must be at most {MAX_HEADERS} headers"))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in response.headers)
    if size > MAX_HEADER_BYTES:
        out.append(
            FieldViolation(
                "response.headers", f"must be at most {MAX_HEADER_BYTES} bytes in all, got {size}"
            )
        )
    return out


def token_violations(token: int) -> list[FieldViolation]:
    if token <= 0:
        return [FieldViolation("fencing_token", "must be the token a NEW Begin returned")]
    return []
