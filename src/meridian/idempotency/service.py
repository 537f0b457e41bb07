"""The Idempotency API, once, for both transports: proto in, proto out.

Every field is validated before anything is written; a bad request gets
INVALID_ARGUMENT naming the field and the rule. Leases are measured on the
agent's clock, so an agent whose clock is off its peers refuses Begin with
CLOCK_SKEW rather than take over a lease that has not run out.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from meridian._pb.meridian.v1 import idempotency_pb2 as pb
from meridian.core.calls import CALLER
from meridian.core.canonical import PayloadKind, fingerprint
from meridian.core.errors import ClockSkewError, FieldViolation, InvalidArgumentError
from meridian.core.hlc import SkewMonitor
from meridian.idempotency.model import (
    MAX_BODY_BYTES,
    StoredResponse,
    Verdict,
    fingerprint_violations,
    key_violations,
    lease_violations,
    response_violations,
    scope_violations,
    token_violations,
)
from meridian.idempotency.store import BeginResult, IdempotencyComponent

Outcome = pb.BeginResponse.Outcome
_OUTCOMES = {
    Verdict.NEW: Outcome.OUTCOME_NEW,
    Verdict.IN_PROGRESS: Outcome.OUTCOME_IN_PROGRESS,
    Verdict.COMPLETED: Outcome.OUTCOME_COMPLETED,
    Verdict.MISMATCH: Outcome.OUTCOME_MISMATCH,
}
_KINDS = {
    pb.PAYLOAD_KIND_UNSPECIFIED: PayloadKind.JSON,
    pb.PAYLOAD_KIND_JSON: PayloadKind.JSON,
    pb.PAYLOAD_KIND_BINARY: PayloadKind.BINARY,
}


def _timestamp(epoch_ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(epoch_ms)
    return ts


def _check(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgumentError(violations)


def response_from_proto(msg: pb.StoredResponse) -> StoredResponse:
    return StoredResponse(
        status=msg.status, body=msg.body, headers=tuple(sorted(msg.headers.items()))
    )


def response_to_proto(response: StoredResponse) -> pb.StoredResponse:
    return pb.StoredResponse(
        status=response.status, body=response.body, headers=dict(response.headers)
    )


class IdempotencyApi:
    """The IdempotencyService over the agent's idempotency store."""

    def __init__(self, store: IdempotencyComponent, *, skew: SkewMonitor) -> None:
        self.store = store
        self.skew = skew
        self.default_lease_ms = int(store.config.default_lease_s * 1000)
        self.max_lease_ms = int(store.config.max_lease_s * 1000)

    async def begin(self, request: pb.BeginRequest) -> pb.BeginResponse:
        violations = scope_violations(request.scope) + key_violations(request.key)
        if request.HasField("lease"):
            lease_ms = request.lease.ToMilliseconds()
            violations += lease_violations(lease_ms, self.max_lease_ms)
        else:
            lease_ms = self.default_lease_ms
        if request.payload_kind not in _KINDS:
            violations.append(FieldViolation("payload_kind", "must be JSON or BINARY"))
        if request.fingerprint:
            violations += fingerprint_violations(request.fingerprint)
            if request.payload:
                violations.append(
                    FieldViolation("payload", "send either fingerprint or payload, not both")
                )
        elif len(request.payload) > MAX_BODY_BYTES:
            violations.append(
                FieldViolation(
                    "payload", f"must be at most {MAX_BODY_BYTES} bytes, got {len(request.payload)}"
                )
            )
        _check(violations)
        fp = request.fingerprint or fingerprint(request.payload, _KINDS[request.payload_kind])
        reason = self.skew.check()
        if reason:
            raise ClockSkewError(f"this agent refuses to grant idempotency leases: {reason}")
        owner = CALLER.get().identity
        return _begin_to_proto(
            await self.store.begin(request.scope, request.key, fp, lease_ms, owner=owner)
        )

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteResponse:
        response = response_from_proto(request.response)
        _check(
            scope_violations(request.scope)
            + key_violations(request.key)
            + token_violations(request.fencing_token)
            + response_violations(response)
        )
        expires = await self.store.complete(
            request.scope,
            request.key,
            request.fencing_token,
            response,
            owner=CALLER.get().identity,
        )
        return pb.CompleteResponse(expires_at=_timestamp(expires))

    async def abort(self, request: pb.AbortRequest) -> pb.AbortResponse:
        _check(
            scope_violations(request.scope)
            + key_violations(request.key)
            + token_violations(request.fencing_token)
        )
        await self.store.abort(
            request.scope, request.key, request.fencing_token, owner=CALLER.get().identity
        )
        return pb.AbortResponse()


def _begin_to_proto(result: BeginResult) -> pb.BeginResponse:
    out = pb.BeginResponse(outcome=_OUTCOMES[result.verdict], fingerprint=result.fingerprint)
    if result.verdict is Verdict.NEW:
        out.fencing_token = result.token
        out.took_over = result.took_over
    if result.lease_expires_ms:
        out.lease_expires_at.CopyFrom(_timestamp(result.lease_expires_ms))
    if result.response is not None:
        out.response.CopyFrom(response_to_proto(result.response))
    if result.expires_ms:
        out.expires_at.CopyFrom(_timestamp(result.expires_ms))
    return out
