"""The single table mapping Meridian error codes to gRPC and HTTP statuses.

Both transports and every SDK use this table; the stable string code travels
with the error (gRPC trailing metadata ``meridian-error-code``, HTTP JSON body
``error.code``) so clients rebuild the typed error.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from meridian.core.errors import ConflictError, ErrorCode, InvalidArgumentError, MeridianError


@dataclass(frozen=True)
class StatusMapping:
    grpc: grpc.StatusCode
    http: int


ERROR_TABLE: dict[ErrorCode, StatusMapping] = {
    ErrorCode.INVALID_ARGUMENT: StatusMapping(grpc.StatusCode.INVALID_ARGUMENT, 400),
    ErrorCode.NOT_FOUND: StatusMapping(grpc.StatusCode.NOT_FOUND, 404),
    ErrorCode.CONFLICT: StatusMapping(grpc.StatusCode.ABORTED, 409),
    ErrorCode.CLOCK_SKEW: StatusMapping(grpc.StatusCode.FAILED_PRECONDITION, 503),
    ErrorCode.QUORUM_UNAVAILABLE: StatusMapping(grpc.StatusCode.UNAVAILABLE, 503),
    ErrorCode.UNAVAILABLE: StatusMapping(grpc.StatusCode.UNAVAILABLE, 503),
    ErrorCode.DEADLINE_EXCEEDED: StatusMapping(grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    ErrorCode.INTERNAL: StatusMapping(grpc.StatusCode.INTERNAL, 500),
    ErrorCode.FENCED: StatusMapping(grpc.StatusCode.FAILED_PRECONDITION, 409),
    ErrorCode.IDEMPOTENCY_IN_PROGRESS: StatusMapping(grpc.StatusCode.ABORTED, 409),
    ErrorCode.IDEMPOTENCY_MISMATCH: StatusMapping(grpc.StatusCode.FAILED_PRECONDITION, 422),
    ErrorCode.RESOURCE_EXHAUSTED: StatusMapping(grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
}

ERROR_CODE_METADATA = "meridian-error-code"
CURRENT_REVISION_METADATA = "meridian-current-revision"


def error_metadata(error: MeridianError) -> tuple[tuple[str, str], ...]:
    """The gRPC trailing metadata that lets clients rebuild the typed error."""
    md: list[tuple[str, str]] = [(ERROR_CODE_METADATA, error.code.value)]
    if isinstance(error, ConflictError):
        md.append((CURRENT_REVISION_METADATA, str(error.current_revision)))
    if isinstance(error, InvalidArgumentError):
        md.append(("meridian-error-field", error.field))
    return tuple(md)


def mapping_for(error: MeridianError) -> StatusMapping:
    return ERROR_TABLE[error.code]


def error_body(error: MeridianError) -> dict[str, object]:
    """The JSON body of an HTTP error response."""
    body: dict[str, object] = {"code": error.code.value, "message": error.message}
    if isinstance(error, InvalidArgumentError):
        body["field"] = error.field
        body["violations"] = [{"field": v.field, "rule": v.rule} for v in error.violations]
    if isinstance(error, ConflictError):
        body["currentRevision"] = str(error.current_revision)
    return {"error": body}
