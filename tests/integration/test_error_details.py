"""The Python client against a real gRPC server that ends calls with the
details the agent sends, and with missing or broken ones: the typed error
comes back from the details, and without them the client falls back to the
gRPC code and never raises anything else. (The agent's own errors over the
wire are covered by test_state.py and the other capability tests.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from meridian._pb.meridian.v1 import state_pb2, state_pb2_grpc
from meridian.client import MeridianClient
from meridian.core.errors import (
    ConflictError,
    DeadlineExceededError,
    FieldViolation,
    InvalidArgumentError,
    MeridianError,
    NotFoundError,
    UnavailableError,
)
from meridian.testing.ports import free_port
from meridian.transport.errors import grpc_status

DETAILS = "grpc-status-details-bin"


def status_bytes(code: grpc.StatusCode, message: str, reason: str) -> bytes:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="meridian.dev"))
    status = status_pb2.Status(code=code.value[0], message=message, details=[info])
    raw: bytes = status.SerializeToString()
    return raw


#: key -> (gRPC code, message, trailers) the server ends Get with.
ENDINGS: dict[str, tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]] = {
    "no-details": (grpc.StatusCode.ABORTED, "aborted by a proxy", ()),
    "garbage": (grpc.StatusCode.NOT_FOUND, "gone", ((DETAILS, b"\xff\xfe garbage \x00\x01"),)),
    "garbage-deadline": (grpc.StatusCode.DEADLINE_EXCEEDED, "late", ((DETAILS, b"\x0a\x05ab"),)),
    "unknown-reason": (
        grpc.StatusCode.FAILED_PRECONDITION,
        "new",
        ((DETAILS, status_bytes(grpc.StatusCode.FAILED_PRECONDITION, "new", "SOMETHING_NEW")),),
    ),
    "code-mismatch": (
        grpc.StatusCode.ABORTED,
        "x",
        ((DETAILS, status_bytes(grpc.StatusCode.NOT_FOUND, "x", "NOT_FOUND")),),
    ),
}

#: key -> the error the agent's transport would end Get with.
AGENT_ERRORS: dict[str, MeridianError] = {
    "conflict": ConflictError("accounts/a moved", current_revision=41),
    "invalid": InvalidArgumentError(
        [FieldViolation("key", "must not be empty"), FieldViolation("keyspace", "unknown")]
    ),
    "not-found": NotFoundError("no key 'a' in 'accounts'"),
    # More text than gRPC's 8 KiB of trailers if it were all sent.
    "many": InvalidArgumentError(
        [FieldViolation(f"keys[{i}]", "must not be empty " + "x" * 40) for i in range(1000)]
    ),
}


class EndingState(state_pb2_grpc.StateServiceServicer):
    async def Get(
        self, request: state_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> state_pb2.GetResponse:
        if request.key in AGENT_ERRORS:
            status = grpc_status(AGENT_ERRORS[request.key])
            await context.abort(status.code, status.message, status.trailing_metadata)
        code, message, trailers = ENDINGS[request.key]
        await context.abort(code, message, trailers)
        raise AssertionError("abort returned")


@pytest.fixture
async def client() -> AsyncIterator[MeridianClient]:
    server = grpc.aio.server()
    state_pb2_grpc.add_StateServiceServicer_to_server(EndingState(), server)  # type: ignore[no-untyped-call]
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with MeridianClient(f"127.0.0.1:{port}", timeout_s=5.0) as m:
            yield m
    finally:
        await server.stop(None)


async def failure(m: MeridianClient, key: str) -> MeridianError:
    with pytest.raises(MeridianError) as err:
        await m.get("accounts", key)
    return err.value


async def test_the_agents_details_come_back_typed(client: MeridianClient) -> None:
    conflict = await failure(client, "conflict")
    assert isinstance(conflict, ConflictError) and conflict.current_revision == 41
    invalid = await failure(client, "invalid")
    assert isinstance(invalid, InvalidArgumentError)
    assert invalid.violations == (
        FieldViolation("key", "must not be empty"),
        FieldViolation("keyspace", "unknown"),
    )
    assert isinstance(await failure(client, "not-found"), NotFoundError)
    many = await failure(client, "many")
    assert isinstance(many, InvalidArgumentError), many
    assert many.violations[0] == FieldViolation("keys[0]", "must not be empty " + "x" * 40)


@pytest.mark.parametrize(
    ("key", "expected", "message"),
    [
        ("no-details", UnavailableError, "ABORTED: aborted by a proxy"),
        ("garbage", UnavailableError, "NOT_FOUND: gone"),
        ("garbage-deadline", DeadlineExceededError, "late"),
        ("unknown-reason", UnavailableError, "FAILED_PRECONDITION: new"),
        ("code-mismatch", UnavailableError, "ABORTED: x"),
    ],
)
async def test_missing_or_broken_details_fall_back_to_the_grpc_code(
    client: MeridianClient, key: str, expected: type[MeridianError], message: str
) -> None:
    got = await failure(client, key)
    assert type(got) is expected
    assert got.message == message
