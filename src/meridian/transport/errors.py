"""The single table mapping Meridian error codes to gRPC and HTTP statuses.

Both transports use this table, and ``testdata/errors.json`` is written from
it (``scripts/gen-vectors``) so that the Go and Rust SDKs check the same rows.
An error travels as ``google.rpc`` details, built here once:

- gRPC: a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer,
  with an ``ErrorInfo`` (``reason`` = the stable code, ``domain`` =
  :data:`ERROR_DOMAIN`, ``metadata`` = the error's structured fields, e.g.
  ``currentRevision`` for ``CONFLICT``) and, for ``INVALID_ARGUMENT``, a
  ``BadRequest`` whose field violations name each field and rule.
- HTTP: the JSON body ``{"error": {...}}`` with ``code`` (the stable code),
  ``message``, ``status`` (the gRPC code's name) and ``details``, the same
  details in the proto3 JSON mapping (each with its ``@type``). The older
  fields ``field``, ``violations`` and ``currentRevision`` stay for clients
  that read them.

The trailers ``meridian-error-code``, ``meridian-current-revision`` and
``meridian-error-field`` are still sent for clients older than the details;
the SDKs read only the details.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from meridian.core.errors import (
    ConflictError,
    ErrorCode,
    FieldViolation,
    InvalidArgumentError,
    MeridianError,
)

#: ``ErrorInfo.domain`` of every error the agent raises.
ERROR_DOMAIN = "meridian.dev"


@dataclass(frozen=True)
class StatusMapping:
    grpc: grpc.StatusCode
    http: int
    #: The same call may succeed if sent again after a backoff, unchanged: the
    #: cause is transient (a quorum, a dependency, a clock, a limit, another
    #: caller's run). A deadline is not: whether to repeat a call that may
    #: have taken effect is the caller's decision.
    retryable: bool


ERROR_TABLE: dict[ErrorCode, StatusMapping] = {
    ErrorCode.INVALID_ARGUMENT: StatusMapping(grpc.StatusCode.INVALID_ARGUMENT, 400, False),
    ErrorCode.NOT_FOUND: StatusMapping(grpc.StatusCode.NOT_FOUND, 404, False),
    ErrorCode.CONFLICT: StatusMapping(grpc.StatusCode.ABORTED, 409, False),
    ErrorCode.CLOCK_SKEW: StatusMapping(grpc.StatusCode.FAILED_PRECONDITION, 503, True),
    ErrorCode.QUORUM_UNAVAILABLE: StatusMapping(grpc.StatusCode.UNAVAILABLE, 503, True),
    ErrorCode.UNAVAILABLE: StatusMapping(grpc.StatusCode.UNAVAILABLE, 503, True),
    ErrorCode.DEADLINE_EXCEEDED: StatusMapping(grpc.StatusCode.DEADLINE_EXCEEDED, 504, False),
    ErrorCode.INTERNAL: StatusMapping(grpc.StatusCode.INTERNAL, 500, False),
    ErrorCode.FENCED: StatusMapping(grpc.StatusCode.FAILED_PRECONDITION, 409, False),
    ErrorCode.IDEMPOTENCY_IN_PROGRESS: StatusMapping(grpc.StatusCode.ABORTED, 409, True),
    ErrorCode.IDEMPOTENCY_MISMATCH: StatusMapping(grpc.StatusCode.FAILED_PRECONDITION, 422, False),
    ErrorCode.RESOURCE_EXHAUSTED: StatusMapping(grpc.StatusCode.RESOURCE_EXHAUSTED, 503, True),
    ErrorCode.PERMISSION_DENIED: StatusMapping(grpc.StatusCode.PERMISSION_DENIED, 403, False),
    # HTTP 451, "Unavailable For Legal Reasons" (RFC 7725): the law keeps the data elsewhere.
    ErrorCode.RESIDENCY_VIOLATION: StatusMapping(grpc.StatusCode.FAILED_PRECONDITION, 451, False),
}

#: ``ErrorInfo.metadata`` key of a ``CONFLICT``: the key's revision now, in decimal.
CURRENT_REVISION_KEY = "currentRevision"

# The trailers of clients older than the details (see the module docstring).
ERROR_CODE_METADATA = "meridian-error-code"
CURRENT_REVISION_METADATA = "meridian-current-revision"
ERROR_FIELD_METADATA = "meridian-error-field"

_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


def mapping_for(error: MeridianError) -> StatusMapping:
    return ERROR_TABLE[error.code]


def table_rows() -> list[dict[str, object]]:
    """ERROR_TABLE as the rows of ``testdata/errors.json``, in ``ErrorCode`` order."""
    return [
        {
            "code": code.value,
            "grpc_code": ERROR_TABLE[code].grpc.name,
            "http_status": ERROR_TABLE[code].http,
            "retryable": ERROR_TABLE[code].retryable,
        }
        for code in ErrorCode
    ]


def error_info_metadata(error: MeridianError) -> dict[str, str]:
    """The structured fields of ``error``, as ``ErrorInfo.metadata``."""
    if isinstance(error, ConflictError):
        return {CURRENT_REVISION_KEY: str(error.current_revision)}
    return {}


#: How much text (message, and field violations) one gRPC error carries, in
#: bytes. gRPC sends both as trailers, and clients refuse trailers past 8 KiB
#: (gRPC's default metadata limit: the call fails with RESOURCE_EXHAUSTED
#: instead), so a longer text is cut here; the HTTP body keeps all of it.
GRPC_TEXT_BUDGET = 2048


def _cut(text: str, budget: int) -> str:
    raw = text.encode()
    if len(raw) <= budget:
        return text
    return raw[:budget].decode(errors="ignore") + " [cut]"


def _grpc_text(error: MeridianError) -> tuple[str, list[FieldViolation]]:
    """The message and the field violations ``error`` sends over gRPC: all of
    them while they fit :data:`GRPC_TEXT_BUDGET`, else the first ones and a
    count of the rest."""
    if not isinstance(error, InvalidArgumentError):
        return _cut(error.message, GRPC_TEXT_BUDGET), []
    kept: list[FieldViolation] = []
    used = 0
    for v in error.violations:
        used += len(v.field.encode()) + len(v.rule.encode()) + 4
        if kept and used > GRPC_TEXT_BUDGET:
            break
        kept.append(FieldViolation(v.field, _cut(v.rule, GRPC_TEXT_BUDGET)))
    if len(kept) == len(error.violations):
        return _cut(error.message, GRPC_TEXT_BUDGET), kept
    more = len(error.violations) - len(kept)
    message = "; ".join(str(v) for v in kept) + f"; and {more} more"
    return _cut(message, GRPC_TEXT_BUDGET), kept


def rich_status(error: MeridianError) -> status_pb2.Status:
    """``error`` as a ``google.rpc.Status``: code, message and details, with
    its text cut to :data:`GRPC_TEXT_BUDGET`."""
    message, violations = _grpc_text(error)
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.code.value, domain=ERROR_DOMAIN, metadata=error_info_metadata(error)
        )
    )
    details = [info]
    if violations:
        bad_request = any_pb2.Any()
        bad_request.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.rule)
                    for v in violations
                ]
            )
        )
        details.append(bad_request)
    return status_pb2.Status(
        code=mapping_for(error).grpc.value[0], message=message, details=details
    )


@dataclass(frozen=True)
class GrpcStatus:
    """What a gRPC call that failed with an error ends with."""

    code: grpc.StatusCode
    message: str
    #: The details (``grpc-status-details-bin``) and the older trailers.
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def grpc_status(error: MeridianError) -> GrpcStatus:
    """``error`` as a gRPC status: its code, its message, and the trailers
    that carry its details."""
    status = rpc_status.to_status(rich_status(error))
    legacy: list[tuple[str, str | bytes]] = [(ERROR_CODE_METADATA, error.code.value)]
    if isinstance(error, ConflictError):
        legacy.append((CURRENT_REVISION_METADATA, str(error.current_revision)))
    if isinstance(error, InvalidArgumentError):
        legacy.append((ERROR_FIELD_METADATA, error.field))
    return GrpcStatus(status.code, status.details, (*legacy, *status.trailing_metadata))


def error_body(error: MeridianError) -> dict[str, object]:
    """The JSON body of an HTTP error response: the gRPC details in the proto3
    JSON mapping, plus the fields clients read before there were details."""
    mapping = mapping_for(error)
    details: list[dict[str, object]] = [
        {
            "@type": _ERROR_INFO_TYPE,
            "reason": error.code.value,
            "domain": ERROR_DOMAIN,
            "metadata": error_info_metadata(error),
        }
    ]
    body: dict[str, object] = {
        "code": error.code.value,
        "message": error.message,
        "status": mapping.grpc.name,
    }
    if isinstance(error, InvalidArgumentError):
        body["field"] = error.field
        body["violations"] = [{"field": v.field, "rule": v.rule} for v in error.violations]
        details.append(
            {
                "@type": _BAD_REQUEST_TYPE,
                "fieldViolations": [
                    {"field": v.field, "description": v.rule} for v in error.violations
                ],
            }
        )
    if isinstance(error, ConflictError):
        body["currentRevision"] = str(error.current_revision)
    body["details"] = details
    return {"error": body}
