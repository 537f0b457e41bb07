"""The Meridian error tree.

Every error Meridian raises on purpose derives from :class:`MeridianError` and
carries a stable string ``code``. The transports map that code to a gRPC status
and an HTTP status in one table (``meridian.transport.errors``, written out for
the SDKs as ``testdata/errors.json``) and send it as ``google.rpc.ErrorInfo``
details; the SDKs rebuild the typed error from those details.

::

    MeridianError                   INTERNAL
    ├── InvalidArgumentError        INVALID_ARGUMENT         a bad request; names the field and the rule
    │   └── ConfigError             INVALID_ARGUMENT         a bad configuration file or environment
    ├── NotFoundError               NOT_FOUND
    ├── ConflictError               CONFLICT                 a conditional write lost; carries current_revision
    ├── ClockSkewError              CLOCK_SKEW
    ├── QuorumUnavailableError      QUORUM_UNAVAILABLE
    ├── UnavailableError            UNAVAILABLE              a dependency (NATS, a peer) can't be reached
    ├── DeadlineExceededError       DEADLINE_EXCEEDED
    ├── InternalError               INTERNAL                 a bug: logged with its traceback
    ├── FencedError                 FENCED                   a fencing token that lost its idempotency key
    ├── IdempotencyInProgressError  IDEMPOTENCY_IN_PROGRESS  another caller runs the command now
    ├── IdempotencyMismatchError    IDEMPOTENCY_MISMATCH     the key was used for another request
    ├── ResourceExhaustedError      RESOURCE_EXHAUSTED       a concurrency limit (a bulkhead) is full
    ├── PermissionDeniedError       PERMISSION_DENIED        the caller's identity may not do this
    └── ResidencyViolationError     RESIDENCY_VIOLATION      the data may not be stored or served here
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable error codes. Never renumber or rename: SDKs match on them."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    CLOCK_SKEW = "CLOCK_SKEW"
    QUORUM_UNAVAILABLE = "QUORUM_UNAVAILABLE"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"
    FENCED = "FENCED"
    IDEMPOTENCY_IN_PROGRESS = "IDEMPOTENCY_IN_PROGRESS"
    IDEMPOTENCY_MISMATCH = "IDEMPOTENCY_MISMATCH"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESIDENCY_VIOLATION = "RESIDENCY_VIOLATION"


class MeridianError(Exception):
    """Root of every error Meridian raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule: which field, and what the rule is."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class InvalidArgumentError(MeridianError):
    """A request broke a rule. ``violations`` name each field and rule; nothing was written."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        if not violations:
            raise ValueError("InvalidArgumentError needs at least one violation")
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        super().__init__("; ".join(str(v) for v in self.violations))

    @property
    def field(self) -> str:
        """The first offending field."""
        return self.violations[0].field


class ConfigError(InvalidArgumentError):
    """A configuration file or environment variable is invalid.

    The message lists every problem found, each naming the field (as a dotted
    path into the file) and saying how to fix it.
    """

    def __init__(self, violations: list[FieldViolation] | FieldViolation, source: str = "") -> None:
        super().__init__(violations)
        self.source = source
        if source:
            lines = "\n".join(f"  - {v}" for v in self.violations)
            self.message = f"invalid configuration in {source}:\n{lines}"
            self.args = (self.message,)


class NotFoundError(MeridianError):
    code = ErrorCode.NOT_FOUND


class ConflictError(MeridianError):
    """A conditional write lost. ``current_revision`` is the key's revision now (0: absent)."""

    code = ErrorCode.CONFLICT

    def __init__(self, message: str, *, current_revision: int = 0) -> None:
        super().__init__(message)
        self.current_revision = current_revision


class ClockSkewError(MeridianError):
    code = ErrorCode.CLOCK_SKEW


class QuorumUnavailableError(MeridianError):
    code = ErrorCode.QUORUM_UNAVAILABLE


class UnavailableError(MeridianError):
    code = ErrorCode.UNAVAILABLE


class DeadlineExceededError(MeridianError):
    code = ErrorCode.DEADLINE_EXCEEDED


class InternalError(MeridianError):
    """Something failed that should not have; the agent logs the original exception."""

    code = ErrorCode.INTERNAL


class FencedError(MeridianError):
    """A Complete or Abort carried a fencing token that no longer holds the key."""

    code = ErrorCode.FENCED


class IdempotencyInProgressError(MeridianError):
    """Another caller is running the command with this idempotency key right now."""

    code = ErrorCode.IDEMPOTENCY_IN_PROGRESS


class IdempotencyMismatchError(MeridianError):
    """The idempotency key was used before with a different request."""

    code = ErrorCode.IDEMPOTENCY_MISMATCH


class ResourceExhaustedError(MeridianError):
    """A concurrency limit (a bulkhead) is full; the call was refused before it started."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class PermissionDeniedError(MeridianError):
    """The caller's identity (from its certificate) may not do this: another
    identity's instance or idempotency key, say. Not retryable."""

    code = ErrorCode.PERMISSION_DENIED


class ResidencyViolationError(MeridianError):
    """The keyspace or topic may only be stored and served in certain regions
    (its residency), and this agent's region is not one of them. Not
    retryable here: call an agent in an allowed region."""

    code = ErrorCode.RESIDENCY_VIOLATION
