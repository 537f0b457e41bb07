"""The error table every transport and SDK relies on, and what bad input reads like."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest

from meridian.api.errors import ERROR_TABLE, error_body, mapping_for
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


def test_error_body_of_plain_error_has_code_and_message_only() -> None:
    assert error_body(NotFoundError("no key 'a' in 'users'")) == {
        "error": {"code": "NOT_FOUND", "message": "no key 'a' in 'users'"}
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
        "field": "key",
        "violations": [
            {"field": "key", "rule": "must not be empty"},
            {"field": "ttl_s", "rule": "must be between 1 and 86400"},
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
