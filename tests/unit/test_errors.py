"""The error table every transport and SDK relies on, and what bad input reads like."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from meridian.core.errors import (
    ClockSkewError,
    ConfigError,
    ConflictError,
    DeadlineExceededError,
    ErrorCode,
    FieldViolation,
    InvalidArgumentError,
    MeridianError,
    NotFoundError,
    QuorumUnavailableError,
    UnavailableError,
)
from meridian.transport.errors import (
    ERROR_DOMAIN,
    ERROR_TABLE,
    error_body,
    grpc_status,
    mapping_for,
)

DOCUMENTED = {
    ErrorCode.INVALID_ARGUMENT: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorCode.NOT_FOUND: (404, grpc.StatusCode.NOT_FOUND),
    ErrorCode.CONFLICT: (409, grpc.StatusCode.ABORTED),
    ErrorCode.QUORUM_UNAVAILABLE: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorCode.CLOCK_SKEW: (503, grpc.StatusCode.FAILED_PRECONDITION),
    ErrorCode.DEADLINE_EXCEEDED: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ErrorCode.UNAVAILABLE: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorCode.INTERNAL: (500, grpc.StatusCode.INTERNAL),
    ErrorCode.FENCED: (409, grpc.StatusCode.FAILED_PRECONDITION),
    # The IETF Idempotency-Key draft: a concurrent duplicate is 409, a reused key
    # with another payload 422.
    ErrorCode.IDEMPOTENCY_IN_PROGRESS: (409, grpc.StatusCode.ABORTED),
    ErrorCode.IDEMPOTENCY_MISMATCH: (422, grpc.StatusCode.FAILED_PRECONDITION),
    ErrorCode.RESOURCE_EXHAUSTED: (503, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorCode.PERMISSION_DENIED: (403, grpc.StatusCode.PERMISSION_DENIED),
    ErrorCode.RESIDENCY_VIOLATION: (451, grpc.StatusCode.FAILED_PRECONDITION),
}


def body_of(error: MeridianError) -> dict[str, Any]:
    """The ``error`` object of the HTTP error body."""
    return cast(dict[str, Any], error_body(error)["error"])


def test_every_error_code_has_a_mapping() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode)


def test_every_error_code_is_documented_here() -> None:
    # A new code needs a deliberate decision about its statuses, recorded above.
    assert set(DOCUMENTED) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_mapping_is_the_documented_pair(code: ErrorCode) -> None:
    http, grpc_code = DOCUMENTED[code]
    assert ERROR_TABLE[code].http == http
    assert ERROR_TABLE[code].grpc == grpc_code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgumentError(FieldViolation("key", "must not be empty")), "INVALID_ARGUMENT"),
        (ConfigError(FieldViolation("region", "declare one")), "INVALID_ARGUMENT"),
        (NotFoundError("no such key"), "NOT_FOUND"),
        (ConflictError("version moved"), "CONFLICT"),
        (ClockSkewError("clock 900ms ahead"), "CLOCK_SKEW"),
        (QuorumUnavailableError("no quorum"), "QUORUM_UNAVAILABLE"),
        (UnavailableError("NATS down"), "UNAVAILABLE"),
        (DeadlineExceededError("2s passed"), "DEADLINE_EXCEEDED"),
        (MeridianError("boom"), "INTERNAL"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v,
)
def test_each_error_class_carries_its_stable_code(error: MeridianError, code: str) -> None:
    assert error.code.value == code
    assert mapping_for(error) == ERROR_TABLE[ErrorCode(code)]
    assert body_of(error)["code"] == code


def test_error_body_of_plain_error_has_code_message_status_and_error_info() -> None:
    assert error_body(NotFoundError("no key 'a' in 'users'")) == {
        "error": {
            "code": "NOT_FOUND",
            "message": "no key 'a' in 'users'",
            "status": "NOT_FOUND",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "NOT_FOUND",
                    "domain": "meridian.dev",
                    "metadata": {},
                }
            ],
        }
    }


def test_error_body_lists_every_violation_with_field_and_rule() -> None:
    error = InvalidArgumentError(
        [
            FieldViolation("key", "must not be empty"),
            FieldViolation("ttl_s", "must be between 1 and 86400"),
        ]
    )
    body = body_of(error)
    assert body == {
        "code": "INVALID_ARGUMENT",
        "message": "key: must not be empty; ttl_s: must be between 1 and 86400",
        "status": "INVALID_ARGUMENT",
        "field": "key",
        "violations": [
            {"field": "key", "rule": "must not be empty"},
            {"field": "ttl_s", "rule": "must be between 1 and 86400"},
        ],
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "INVALID_ARGUMENT",
                "domain": "meridian.dev",
                "metadata": {},
            },
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": "key", "description": "must not be empty"},
                    {"field": "ttl_s", "description": "must be between 1 and 86400"},
                ],
            },
        ],
    }


def test_single_violation_is_accepted_bare() -> None:
    error = InvalidArgumentError(FieldViolation("key", "must not be empty"))
    assert error.violations == (FieldViolation("key", "must not be empty"),)
    assert error.field == "key"
    assert str(error) == "key: must not be empty"


def test_invalid_argument_without_violations_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one violation"):
        InvalidArgumentError([])


def test_config_error_without_violations_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one violation"):
        ConfigError([], "meridian.toml")


def test_config_error_names_the_source_and_lists_each_violation_on_its_own_line() -> None:
    error = ConfigError(
        [
            FieldViolation("wan.link[0].a", "unknown region 'mars'"),
            FieldViolation("sandbox.base_port", "port must be between 1 and 65535, got 0"),
        ],
        "/etc/meridian.toml",
    )
    lines = str(error).splitlines()
    assert "/etc/meridian.toml" in lines[0]
    assert lines[1:] == [
        "  - wan.link[0].a: unknown region 'mars'",
        "  - sandbox.base_port: port must be between 1 and 65535, got 0",
    ]
    assert error.message == str(error)
    assert error.source == "/etc/meridian.toml"


def test_config_error_is_an_invalid_argument_with_the_same_body_shape() -> None:
    error = ConfigError(FieldViolation("agent.log_level", "must be debug, info, warning or error"))
    assert isinstance(error, InvalidArgumentError)
    assert mapping_for(error).http == 400
    body = body_of(error)
    assert body["field"] == "agent.log_level"
    assert body["violations"] == [
        {"field": "agent.log_level", "rule": "must be debug, info, warning or error"}
    ]


# The details: google.rpc.Status over gRPC, the same details as JSON over HTTP.

EVERY_ERROR: list[MeridianError] = [
    InvalidArgumentError(
        [FieldViolation("key", "must not be empty"), FieldViolation("value", "must be bytes")]
    ),
    NotFoundError("no such key"),
    ConflictError("accounts/a moved", current_revision=7),
    ConflictError("accounts/a is gone"),
    ClockSkewError("clock 900ms ahead"),
    QuorumUnavailableError("no quorum"),
    UnavailableError("NATS down"),
    DeadlineExceededError("2s passed"),
    MeridianError("boom"),
]


def sent_status(error: MeridianError) -> status_pb2.Status:
    """The google.rpc.Status in the grpc-status-details-bin trailer."""
    trailers = dict(grpc_status(error).trailing_metadata)
    raw = trailers["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    return status_pb2.Status.FromString(raw)


@pytest.mark.parametrize("error", EVERY_ERROR, ids=lambda e: e.message)
def test_grpc_status_carries_error_info_with_the_stable_code(error: MeridianError) -> None:
    status = grpc_status(error)
    assert status.code == ERROR_TABLE[error.code].grpc
    assert status.message == error.message
    rich = sent_status(error)
    assert rich.code == status.code.value[0] and rich.message == error.message
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert info.reason == error.code.value
    assert info.domain == ERROR_DOMAIN == "meridian.dev"


def test_a_conflict_puts_the_current_revision_in_error_info_metadata() -> None:
    info = error_details_pb2.ErrorInfo()
    assert sent_status(ConflictError("moved", current_revision=7)).details[0].Unpack(info)
    assert dict(info.metadata) == {"currentRevision": "7"}
    assert sent_status(ConflictError("gone")).details[0].Unpack(info)
    assert dict(info.metadata) == {"currentRevision": "0"}


def test_an_invalid_argument_lists_every_violation_in_bad_request() -> None:
    error = InvalidArgumentError(
        [FieldViolation("key", "must not be empty"), FieldViolation("ttl_s", "too long")]
    )
    details = sent_status(error).details
    assert len(details) == 2
    bad = error_details_pb2.BadRequest()
    assert details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("key", "must not be empty"),
        ("ttl_s", "too long"),
    ]


def test_only_an_invalid_argument_has_bad_request() -> None:
    for error in EVERY_ERROR:
        types = [d.type_url.rsplit(".", 1)[-1] for d in sent_status(error).details]
        want = (
            ["ErrorInfo", "BadRequest"]
            if isinstance(error, InvalidArgumentError)
            else ["ErrorInfo"]
        )
        assert types == want, error


def test_the_older_trailers_are_still_sent() -> None:
    trailers = dict(grpc_status(ConflictError("moved", current_revision=7)).trailing_metadata)
    assert trailers["meridian-error-code"] == "CONFLICT"
    assert trailers["meridian-current-revision"] == "7"
    trailers = dict(
        grpc_status(InvalidArgumentError(FieldViolation("key", "empty"))).trailing_metadata
    )
    assert trailers["meridian-error-field"] == "key"


@pytest.mark.parametrize("error", EVERY_ERROR, ids=lambda e: e.message)
def test_the_http_body_has_the_grpc_details_in_proto_json(error: MeridianError) -> None:
    body = body_of(error)
    assert body["code"] == error.code.value
    assert body["status"] == ERROR_TABLE[error.code].grpc.name
    parsed = json_format.ParseDict({"details": body["details"]}, status_pb2.Status())
    assert list(parsed.details) == list(sent_status(error).details)


def test_the_http_body_keeps_the_older_conflict_field() -> None:
    body = body_of(ConflictError("moved", current_revision=7))
    assert body["currentRevision"] == "7"
    assert body["details"][0]["metadata"] == {"currentRevision": "7"}


def test_a_long_error_is_cut_to_fit_grpc_trailers_but_not_http() -> None:
    # gRPC clients refuse trailers past 8 KiB; the message and the details are both
    # trailers, so a thousand violations must not end the call with RESOURCE_EXHAUSTED.
    many = InvalidArgumentError(
        [FieldViolation(f"keys[{i}]", "must not be empty") for i in range(1000)]
    )
    status = grpc_status(many)
    size = sum(len(k) + len(v) for k, v in status.trailing_metadata)
    assert size < 6 * 1024
    bad = error_details_pb2.BadRequest()
    assert sent_status(many).details[1].Unpack(bad)
    kept = len(bad.field_violations)
    assert 10 < kept < 1000
    assert [v.field for v in bad.field_violations] == [f"keys[{i}]" for i in range(kept)]
    assert status.message.endswith(f"; and {1000 - kept} more")
    assert sent_status(many).message == status.message
    assert len(body_of(many)["violations"]) == 1000


def test_a_long_message_is_cut_for_grpc() -> None:
    status = grpc_status(UnavailableError("x" * 10_000))
    assert len(status.message) < 2100 and status.message.endswith("[cut]")
    assert body_of(UnavailableError("x" * 10_000))["message"] == "x" * 10_000
