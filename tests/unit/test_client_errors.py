"""The Python client rebuilds typed errors from a failed call's google.rpc
details, and falls back to the gRPC code when they are missing or broken.

Each failed call is a real ``grpc.aio.AioRpcError`` carrying the trailers the
agent's gRPC transport sends (``meridian.transport.errors.grpc_status``);
tests/integration/test_error_details.py sends the same over a real server.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from meridian.client import error_from_rpc
from meridian.core.errors import (
    ClockSkewError,
    ConflictError,
    DeadlineExceededError,
    ErrorCode,
    FencedError,
    FieldViolation,
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    InternalError,
    InvalidArgumentError,
    MeridianError,
    NotFoundError,
    PermissionDeniedError,
    QuorumUnavailableError,
    ResidencyViolationError,
    ResourceExhaustedError,
    UnavailableError,
)
from meridian.transport.errors import ERROR_TABLE, grpc_status

DETAILS = "grpc-status-details-bin"


def failed_call(
    code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, str | bytes], ...] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details=message
    )


def as_sent(error: MeridianError) -> grpc.aio.AioRpcError:
    """The failed call a client sees when the agent raises ``error``."""
    status = grpc_status(error)
    return failed_call(status.code, status.message, status.trailing_metadata)


def with_details(code: grpc.StatusCode, message: str, *details: Any) -> grpc.aio.AioRpcError:
    packed = []
    for detail in details:
        if isinstance(detail, any_pb2.Any):
            packed.append(detail)
        else:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return failed_call(code, message, ((DETAILS, status.SerializeToString()),))


def info(reason: str, domain: str = "meridian.dev", **metadata: str) -> Any:
    return error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)


EVERY_ERROR: list[MeridianError] = [
    InvalidArgumentError(FieldViolation("key", "must not be empty")),
    NotFoundError("no key 'a'"),
    ConflictError("accounts/a moved", current_revision=7),
    ClockSkewError("900 ms ahead"),
    QuorumUnavailableError("no quorum"),
    UnavailableError("NATS down"),
    DeadlineExceededError("2 s passed"),
    InternalError("a bug"),
    FencedError("token 3 lost the key"),
    IdempotencyInProgressError("running elsewhere"),
    IdempotencyMismatchError("another request"),
    ResourceExhaustedError("bulkhead full"),
    PermissionDeniedError("instance i-1 belongs to another identity"),
    ResidencyViolationError("keyspace 'eu' may only be stored and served in eu-west"),
]


def test_every_code_is_covered_here() -> None:
    assert {e.code for e in EVERY_ERROR} == set(ErrorCode) == set(ERROR_TABLE)


@pytest.mark.parametrize("error", EVERY_ERROR, ids=lambda e: e.code.value)
def test_each_error_comes_back_as_the_same_type_and_message(error: MeridianError) -> None:
    got = error_from_rpc(as_sent(error))
    assert type(got) is type(error)
    assert got.code == error.code
    assert got.message == error.message


def test_a_conflict_carries_the_current_revision_from_error_info() -> None:
    got = error_from_rpc(as_sent(ConflictError("moved", current_revision=42)))
    assert isinstance(got, ConflictError) and got.current_revision == 42


def test_every_violation_comes_back_from_bad_request() -> None:
    sent = InvalidArgumentError(
        [
            FieldViolation("key", "is 2000 bytes; at most 1024 bytes allowed"),
            FieldViolation("value", "must be bytes"),
        ]
    )
    got = error_from_rpc(as_sent(sent))
    assert isinstance(got, InvalidArgumentError)
    assert got.violations == sent.violations
    assert got.field == "key"


def test_only_the_details_count_not_the_older_trailers() -> None:
    # A trailer alone (an agent older than the details) is not read.
    call = failed_call(
        grpc.StatusCode.ABORTED,
        "moved",
        (("meridian-error-code", "CONFLICT"), ("meridian-current-revision", "9")),
    )
    got = error_from_rpc(call)
    assert isinstance(got, UnavailableError) and "ABORTED" in got.message


def test_the_reason_wins_over_the_grpc_code() -> None:
    got = error_from_rpc(
        with_details(grpc.StatusCode.UNAVAILABLE, "no quorum", info("QUORUM_UNAVAILABLE"))
    )
    assert isinstance(got, QuorumUnavailableError)


# Malformed or missing details: fall back to the gRPC code, never raise.


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.UNIMPLEMENTED, UnavailableError),
        (grpc.StatusCode.ABORTED, UnavailableError),
        (grpc.StatusCode.INVALID_ARGUMENT, UnavailableError),
    ],
    ids=lambda v: getattr(v, "name", getattr(v, "__name__", "")),
)
def test_a_status_without_details_maps_by_its_grpc_code(
    code: grpc.StatusCode, expected: type[MeridianError]
) -> None:
    got = error_from_rpc(failed_call(code, "why"))
    assert type(got) is expected
    if expected is UnavailableError:
        assert got.message == f"{code.name}: why"


def test_an_empty_status_proto_maps_by_the_grpc_code() -> None:
    got = error_from_rpc(with_details(grpc.StatusCode.NOT_FOUND, "gone"))
    assert isinstance(got, UnavailableError) and got.message == "NOT_FOUND: gone"


def test_an_unknown_reason_maps_by_the_grpc_code() -> None:
    call = with_details(grpc.StatusCode.DEADLINE_EXCEEDED, "late", info("SOMETHING_NEW"))
    assert isinstance(error_from_rpc(call), DeadlineExceededError)
    call = with_details(grpc.StatusCode.FAILED_PRECONDITION, "new", info("SOMETHING_NEW"))
    got = error_from_rpc(call)
    assert isinstance(got, UnavailableError) and got.message == "FAILED_PRECONDITION: new"


def test_a_reason_from_another_domain_is_not_a_meridian_code() -> None:
    call = with_details(grpc.StatusCode.NOT_FOUND, "nope", info("NOT_FOUND", domain="example.com"))
    assert isinstance(error_from_rpc(call), UnavailableError)


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff", b"not a protobuf at all", b"\x0a\x05ab"],
    ids=["bytes", "text", "truncated"],
)
def test_garbage_details_map_by_the_grpc_code(garbage: bytes) -> None:
    call = failed_call(grpc.StatusCode.ABORTED, "x", ((DETAILS, garbage),))
    got = error_from_rpc(call)
    assert isinstance(got, UnavailableError) and got.message == "ABORTED: x"


def test_details_whose_code_is_not_the_calls_are_ignored() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="x")
    packed = any_pb2.Any()
    packed.Pack(info("NOT_FOUND"))
    status.details.append(packed)
    call = failed_call(grpc.StatusCode.ABORTED, "x", ((DETAILS, status.SerializeToString()),))
    assert isinstance(error_from_rpc(call), UnavailableError)


def test_an_undecodable_error_info_is_ignored_but_the_rest_is_read() -> None:
    broken = any_pb2.Any(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff")
    call = with_details(grpc.StatusCode.DEADLINE_EXCEEDED, "late", broken)
    assert isinstance(error_from_rpc(call), DeadlineExceededError)
    # A second, readable ErrorInfo after a broken one is still found.
    call = with_details(grpc.StatusCode.NOT_FOUND, "gone", broken, info("NOT_FOUND"))
    assert isinstance(error_from_rpc(call), NotFoundError)


def test_a_bad_current_revision_is_zero() -> None:
    for value in ("", "seven", "-3"):
        call = with_details(
            grpc.StatusCode.ABORTED, "moved", info("CONFLICT", currentRevision=value)
        )
        got = error_from_rpc(call)
        assert isinstance(got, ConflictError) and got.current_revision == 0, value


def test_invalid_argument_without_bad_request_names_the_request() -> None:
    call = with_details(grpc.StatusCode.INVALID_ARGUMENT, "something odd", info("INVALID_ARGUMENT"))
    got = error_from_rpc(call)
    assert isinstance(got, InvalidArgumentError)
    assert got.violations == (FieldViolation("request", "something odd"),)
