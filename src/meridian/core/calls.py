"""What the caller of the API call being served sent beside its request message.

The transports set it for every call they serve (gRPC: the call's deadline;
HTTP: the ``Meridian-Timeout-Ms`` header as sent), the same way the trace
context is carried, so a service that needs it (invocation) reads it here and
no transport special-cases one RPC.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CallerTimeout:
    """How long the caller will wait: ``remaining_s`` already parsed (a gRPC
    deadline, a forwarded call's remaining time), ``timeout_ms`` the raw
    ``Meridian-Timeout-Ms`` text, validated where it is used."""

    remaining_s: float | None = None
    timeout_ms: str | None = None


NO_TIMEOUT = CallerTimeout()

#: The timeout of the API call being served; NO_TIMEOUT outside one.
CALLER_TIMEOUT: ContextVar[CallerTimeout] = ContextVar(
    "meridian_caller_timeout", default=NO_TIMEOUT
)
