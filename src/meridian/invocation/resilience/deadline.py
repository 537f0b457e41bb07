"""Deadline propagation: reading and writing timeouts on the wire.

A call carries how long the caller is still willing to wait. The agent turns
that into an absolute deadline on its own monotonic clock when the request
arrives, spends from it on every hop and retry, and sends the *remaining*
time on each outgoing call, so the whole chain gives up together. Two
headers carry it:

``grpc-timeout`` (gRPC, the PROTOCOL-HTTP2 spec)
    ``TimeoutValue TimeoutUnit``: 1 to 8 ASCII digits, then one unit letter,
    ``H`` hours, ``M`` minutes, ``S`` seconds, ``m`` milliseconds, ``u``
    microseconds, ``n`` nanoseconds. E.g. ``100m``, ``5S``.

``Meridian-Timeout-Ms`` (HTTP/JSON)
    The remaining time in whole milliseconds: 1 to 8 ASCII digits
    (at most 99 999 999 ms, about 27.8 hours), e.g. ``Meridian-Timeout-Ms: 250``.
    Surrounding spaces and tabs (HTTP "OWS") are ignored; nothing else is
    accepted: no sign, no fraction, no unit, no ``1_000``, no non-ASCII digits.

A value of zero is accepted and means the deadline has already passed; the
call then fails with ``DEADLINE_EXCEEDED`` rather than ``INVALID_ARGUMENT``.
If both headers are present, the earlier deadline wins. A request with neither
gets :attr:`~meridian.invocation.resilience.policy.TimeoutPolicy.default_s`, and no
request may ask for more than ``max_s``.

Anything else in either header is rejected with
:class:`~meridian.core.errors.InvalidArgumentError` naming the header and the
rule; the offending value is quoted, escaped and cut short, since it may be
hostile. Formatting rounds *down*, so a forwarded deadline is never later
than the one it was derived from.
"""

from __future__ import annotations

import math
import re

from meridian.core.errors import DeadlineExceededError, FieldViolation, InvalidArgumentError
from meridian.invocation.resilience.policy import TimeoutPolicy

GRPC_TIMEOUT_HEADER = "grpc-timeout"
HTTP_TIMEOUT_HEADER = "Meridian-Timeout-Ms"
MAX_DIGITS = 8
MAX_VALUE = 10**MAX_DIGITS - 1

#: Nanoseconds per grpc-timeout unit, finest first (the order :func:`format_grpc_timeout` tries).
GRPC_UNITS_NS: tuple[tuple[str, int], ...] = (
    ("n", 1),
    ("u", 1_000),
    ("m", 1_000_000),
    ("S", 1_000_000_000),
    ("M", 60 * 1_000_000_000),
    ("H", 3600 * 1_000_000_000),
)
_UNIT_NS = dict(GRPC_UNITS_NS)
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])", re.ASCII)
_TIMEOUT_MS = re.compile(r"[0-9]{1,8}", re.ASCII)
#: Longer values are refused before any regex runs.
_MAX_LEN = 32


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def parse_grpc_timeout(value: str) -> int:
    """A ``grpc-timeout`` value as nanoseconds; raise InvalidArgumentError if malformed."""
    match = None
    if isinstance(value, str) and len(value) <= _MAX_LEN:
        match = _GRPC_TIMEOUT.fullmatch(value)
    if match is None:
        raise InvalidArgumentError(
            FieldViolation(
                GRPC_TIMEOUT_HEADER,
                "must be 1 to 8 ASCII digits followed by one unit of H, M, S, m, u, n"
                f" (e.g. 100m); got {_show(value)}",
            )
        )
    return int(match.group(1)) * _UNIT_NS[match.group(2)]


def format_grpc_timeout(ns: int) -> str:
    """``ns`` nanoseconds (>= 0) as a ``grpc-timeout`` value, in the finest unit that fits.

    Rounds down to that unit, so ``parse_grpc_timeout(format_grpc_timeout(ns))``
    is ``ns`` whenever ``ns`` is a whole number of that unit, and otherwise less
    than ``ns`` by under one unit: a relative error below 1e-5 (a value that
    needs a coarser unit has at least five digits left in it). Values too large
    for 8 digits of hours are capped at ``99999999H``.
    """
    if ns < 0:
        raise ValueError("a timeout can't be negative")
    for unit, size in GRPC_UNITS_NS:
        if ns // size <= MAX_VALUE:
            return f"{ns // size}{unit}"
    return f"{MAX_VALUE}H"


def parse_timeout_ms(value: str) -> int:
    """A ``Meridian-Timeout-Ms`` value as milliseconds; raise InvalidArgumentError if malformed."""
    match = None
    if isinstance(value, str) and len(value) <= _MAX_LEN:
        match = _TIMEOUT_MS.fullmatch(value.strip(" \t"))
    if match is None:
        raise InvalidArgumentError(
            FieldViolation(
                HTTP_TIMEOUT_HEADER,
                f"must be a whole number of milliseconds, 1 to 8 ASCII digits; got {_show(value)}",
            )
        )
    return int(match.group(0))


def format_timeout_ms(seconds: float) -> str:
    """``seconds`` (>= 0) as a ``Meridian-Timeout-Ms`` value: whole ms, rounded down, capped."""
    if not seconds >= 0:
        raise ValueError("a timeout must be a number >= 0")
    if seconds * 1000 >= MAX_VALUE:
        return str(MAX_VALUE)
    return str(math.floor(seconds * 1000))


def resolve_deadline(
    now: float,
    policy: TimeoutPolicy,
    *,
    grpc_timeout: str | None = None,
    timeout_ms: str | None = None,
    remaining_s: float | None = None,
) -> float:
    """The absolute deadline (same clock as ``now``) for a request that arrived at ``now``.

    Pass the raw header values as received (None when absent), and
    ``remaining_s`` when the time left is already known (a gRPC server's
    deadline, a forwarded call's remaining time; below zero counts as zero).
    The earliest wins; none means ``policy.default_s``; anything longer than
    ``policy.max_s`` is cut to it. Raises InvalidArgumentError for a malformed
    value, checking both headers before using either.

    Every deadline the agent gives a call it serves comes from here.
    """
    violations: list[FieldViolation] = []
    timeouts: list[float] = [] if remaining_s is None else [max(remaining_s, 0.0)]
    if grpc_timeout is not None:
        try:
            timeouts.append(parse_grpc_timeout(grpc_timeout) / 1e9)
        except InvalidArgumentError as exc:
            violations.extend(exc.violations)
    if timeout_ms is not None:
        try:
            timeouts.append(parse_timeout_ms(timeout_ms) / 1e3)
        except InvalidArgumentError as exc:
            violations.extend(exc.violations)
    if violations:
        raise InvalidArgumentError(violations)
    timeout = min(timeouts) if timeouts else policy.default_s
    return now + min(timeout, policy.max_s)


def remaining_s(deadline: float, now: float) -> float:
    """Seconds left until ``deadline`` (negative once it has passed)."""
    return deadline - now


def outgoing_headers(deadline: float, now: float, *, grpc: bool) -> dict[str, str]:
    """The header to send on an outgoing call made at ``now`` towards ``deadline``.

    ``grpc`` chooses ``grpc-timeout``, otherwise ``Meridian-Timeout-Ms``.
    Raises :class:`~meridian.core.errors.DeadlineExceededError` if no time is
    left, so a call is never sent that its caller has given up on.
    """
    left = deadline - now
    if left <= 0:
        raise DeadlineExceededError(f"the deadline passed {-left:.3f}s ago; the call was not sent")
    if grpc:
        return {GRPC_TIMEOUT_HEADER: format_grpc_timeout(math.floor(left * 1e9))}
    return {HTTP_TIMEOUT_HEADER: format_timeout_ms(left)}
