"""Who is calling the API call being served, and what it sent beside its request.

The transports set it for every call they serve (gRPC: the call's deadline;
HTTP: the ``Meridian-Timeout-Ms`` header as sent; both: the identity in the
caller's client certificate), the same way the trace context is carried, so a
service that needs it (invocation, the registry, idempotency) reads it here
and no transport special-cases one RPC.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """How long the caller will wait: ``remaining_s`` already parsed (a gRPC
    deadline, a forwarded call's remaining time), ``timeout_ms`` the raw
    ``Meridian-Timeout-Ms`` text, validated where it is used. ``identity`` is
    the SPIFFE ID of the caller's certificate ("" in insecure mode)."""

    remaining_s: float | None = None
    timeout_ms: str | None = None
    identity: str = ""


NO_CALLER = Caller()

#: The caller of the API call being served; NO_CALLER outside one.
CALLER: ContextVar[Caller] = ContextVar("meridian_caller", default=NO_CALLER)
