"""Hybrid logical clock (HLC) and the clock-skew self-check (DESIGN §3).

A timestamp packs 48 bits of wall-clock milliseconds and a 16-bit logical
counter into one unsigned 64-bit integer, so comparing the integers (or the
fixed-width hex encodings) compares the timestamps.

:class:`HybridLogicalClock` follows Kulkarni et al., "Logical Physical Clocks
and Consistent Snapshots in Globally Distributed Databases" (2014), with two
Meridian rules on top:

- a remote timestamp more than ``max_offset_ms`` (ε) ahead of the local
  physical clock is rejected with :class:`ClockSkewError` and counted, so one
  peer with a runaway clock cannot drag every region's clock forward;
- when the logical counter would overflow 16 bits, the wall part advances by
  1 ms instead, so timestamps stay strictly increasing.

:class:`SkewMonitor` decides when this node is so far off its peers that it
must stop serving writes that need the clock. Reading the time is the only
effect in this module (:class:`SystemClock`); nothing here sleeps or does I/O.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Protocol

from meridian.core.errors import ClockSkewError, FieldViolation, InvalidArgumentError

WALL_BITS = 48
LOGICAL_BITS = 16
MAX_WALL_MS = (1 << WALL_BITS) - 1
MAX_LOGICAL = (1 << LOGICAL_BITS) - 1
MAX_TIMESTAMP = (1 << (WALL_BITS + LOGICAL_BITS)) - 1
DEFAULT_MAX_OFFSET_MS = 250
#: The fraction of ε past which this node counts itself off from a peer.
SKEW_FRACTION = 0.8

_ENCODED = re.compile(r"[0-9a-f]{16}")


def _is_int(value: object) -> bool:
    # bool is an int subclass; True is never a valid timestamp component.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, order=True, slots=True)
class HlcTimestamp:
    """One HLC reading: ``wall_ms`` (0..2^48-1) and ``logical`` (0..2^16-1).

    Ordering is by ``(wall_ms, logical)``, the same as ordering by
    :meth:`to_int` and by :meth:`encode`. Construction raises
    :class:`InvalidArgumentError` for out-of-range or non-integer parts.
    """

    wall_ms: int
    logical: int = 0

    def __post_init__(self) -> None:
        violations = []
        if not _is_int(self.wall_ms) or not 0 <= self.wall_ms <= MAX_WALL_MS:
            violations.append(
                FieldViolation("wall_ms", f"must be an integer in 0..{MAX_WALL_MS} (48 bits)")
            )
        if not _is_int(self.logical) or not 0 <= self.logical <= MAX_LOGICAL:
            violations.append(
                FieldViolation("logical", f"must be an integer in 0..{MAX_LOGICAL} (16 bits)")
            )
        if violations:
            raise InvalidArgumentError(violations)

    def to_int(self) -> int:
        """The 64-bit integer ``wall_ms << 16 | logical``."""
        return (self.wall_ms << LOGICAL_BITS) | self.logical

    @classmethod
    def from_int(cls, value: int) -> HlcTimestamp:
        """Inverse of :meth:`to_int`; raises :class:`InvalidArgumentError` outside 0..2^64-1."""
        if not _is_int(value) or not 0 <= value <= MAX_TIMESTAMP:
            raise InvalidArgumentError(FieldViolation("hlc", "must be an unsigned 64-bit integer"))
        return cls(value >> LOGICAL_BITS, value & MAX_LOGICAL)

    def encode(self) -> str:
        """16 lowercase hex digits, zero-padded, so string order equals timestamp order."""
        return f"{self.to_int():016x}"

    @classmethod
    def decode(cls, text: str) -> HlcTimestamp:
        """Inverse of :meth:`encode`.

        Only the canonical form is accepted (exactly 16 lowercase hex digits),
        so every timestamp has one encoding; anything else raises
        :class:`InvalidArgumentError` naming the rule.
        """
        if not isinstance(text, str) or not _ENCODED.fullmatch(text):
            shown = repr(text) if len(repr(text)) <= 40 else repr(text)[:37] + "..."
            raise InvalidArgumentError(
                FieldViolation("hlc", f"must be exactly 16 lowercase hex digits, got {shown}")
            )
        return cls.from_int(int(text, 16))

    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.logical}"


class Clock(Protocol):
    """A source of physical time. The only port the HLC needs."""

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch. May jump backwards."""
        ...


class SystemClock:
    """The host's wall clock (``time.time_ns()``), in milliseconds."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class HybridLogicalClock:
    """A hybrid logical clock over an injectable :class:`Clock`.

    Guarantees: every timestamp returned by :meth:`now` or :meth:`update` is
    strictly greater than every timestamp this clock returned before and than
    every remote timestamp it accepted, even when the physical clock steps
    backwards. Not thread-safe: the caller serialises calls (the agent runs
    one event loop).
    """

    def __init__(self, clock: Clock, max_offset_ms: int = DEFAULT_MAX_OFFSET_MS) -> None:
        if not _is_int(max_offset_ms) or max_offset_ms <= 0:
            raise InvalidArgumentError(
                FieldViolation("max_offset_ms", "must be a positive integer number of ms")
            )
        self._clock = clock
        self._max_offset_ms = max_offset_ms
        self._last = HlcTimestamp(0, 0)
        self._rejected = 0

    @property
    def max_offset_ms(self) -> int:
        """ε: how far ahead of the local physical clock a remote timestamp may be."""
        return self._max_offset_ms

    @property
    def last(self) -> HlcTimestamp:
        """The latest timestamp issued or accepted (zero before the first event)."""
        return self._last

    @property
    def rejected_count(self) -> int:
        """How many remote timestamps :meth:`update` rejected for being too far ahead."""
        return self._rejected

    def _physical(self) -> int:
        pt = self._clock.now_ms()
        if not _is_int(pt) or not 0 <= pt <= MAX_WALL_MS:
            raise ClockSkewError(
                f"physical clock reading {pt!r} is not a millisecond count in 0..{MAX_WALL_MS}"
            )
        return pt

    def _commit(self, wall: int, logical: int) -> HlcTimestamp:
        if logical > MAX_LOGICAL:
            # The logical counter is full: borrow the next millisecond rather
            # than wrap (which would go backwards) or refuse to tick.
            wall, logical = wall + 1, 0
        if wall > MAX_WALL_MS:
            raise ClockSkewError("hybrid logical clock exhausted its 48-bit wall range")
        self._last = HlcTimestamp(wall, logical)
        return self._last

    def now(self) -> HlcTimestamp:
        """A timestamp for a local or send event, greater than any before it.

        Raises :class:`ClockSkewError` if the physical clock returns something
        that is not a 48-bit millisecond count; the state is then unchanged.
        """
        pt = self._physical()
        last = self._last
        if pt > last.wall_ms:
            return self._commit(pt, 0)
        return self._commit(last.wall_ms, last.logical + 1)

    def update(self, remote: HlcTimestamp) -> HlcTimestamp:
        """Merge a timestamp received from a peer; return the receive event's timestamp.

        Raises :class:`ClockSkewError` (and increments :attr:`rejected_count`)
        when ``remote`` is more than ε ahead of the local physical clock. A
        rejected update leaves the clock exactly as it was.
        """
        if not isinstance(remote, HlcTimestamp):
            raise InvalidArgumentError(FieldViolation("remote", "must be an HlcTimestamp"))
        pt = self._physical()
        ahead = remote.wall_ms - pt
        if ahead > self._max_offset_ms:
            self._rejected += 1
            raise ClockSkewError(
                f"remote HLC timestamp {remote.encode()} ({remote}) is {ahead} ms ahead of "
                f"the local physical clock; the limit (max_offset) is {self._max_offset_ms} ms"
            )
        last = self._last
        wall = max(last.wall_ms, remote.wall_ms, pt)
        if wall == last.wall_ms == remote.wall_ms:
            logical = max(last.logical, remote.logical) + 1
        elif wall == last.wall_ms:
            logical = last.logical + 1
        elif wall == remote.wall_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        return self._commit(wall, logical)


class SkewMonitor:
    """Decides whether this node's clock is too far off its peers to serve clock writes.

    Record the latest measured offset to each peer with :meth:`observe`
    (``peer clock - local clock``, in ms; positive means the peer is ahead).
    :meth:`check` reports a problem only when this node is more than
    0.8·ε off a strict majority of the peers it has observations for: one bad
    peer is that peer's problem, most peers disagreeing is ours. Deterministic:
    the same observations always give the same answer and the same words.
    Forget peers that have left with :meth:`forget`.
    """

    def __init__(self, max_offset_ms: int = DEFAULT_MAX_OFFSET_MS, peers: int = 0) -> None:
        """``peers``: how many peers are configured. The majority is counted over at
        least that many, so a node that has so far heard only from one bad peer
        does not blame its own clock."""
        if not _is_int(max_offset_ms) or max_offset_ms <= 0:
            raise InvalidArgumentError(
                FieldViolation("max_offset_ms", "must be a positive integer number of ms")
            )
        if not _is_int(peers) or peers < 0:
            raise InvalidArgumentError(FieldViolation("peers", "must be a count, 0 or more"))
        self._max_offset_ms = max_offset_ms
        self._peers = peers
        self._offsets: dict[str, float] = {}

    @property
    def threshold_ms(self) -> float:
        """0.8·ε: the offset past which this node counts itself off from a peer."""
        return SKEW_FRACTION * self._max_offset_ms

    @property
    def offsets(self) -> dict[str, float]:
        """A copy of the latest offset per peer."""
        return dict(self._offsets)

    def observe(self, peer: str, offset_ms: float) -> None:
        """Record the latest offset to ``peer``, replacing any earlier one.

        Raises :class:`InvalidArgumentError` for an empty peer name or a
        non-finite offset.
        """
        if not isinstance(peer, str) or not peer:
            raise InvalidArgumentError(FieldViolation("peer", "must be a non-empty string"))
        if (
            not isinstance(offset_ms, int | float)
            or isinstance(offset_ms, bool)
            or not math.isfinite(offset_ms)
        ):
            raise InvalidArgumentError(FieldViolation("offset_ms", "must be a finite number"))
        self._offsets[peer] = offset_ms

    def forget(self, peer: str) -> None:
        """Drop ``peer``'s observation (it left the cluster). Unknown peers are ignored."""
        self._offsets.pop(peer, None)

    def check(self) -> str | None:
        """``None`` if the clock may be used for writes, else a reason a person can act on."""
        if not self._offsets:
            return None
        # Compare as 5·|offset| > 4·ε so integer offsets are judged exactly.
        far = {
            peer: off
            for peer, off in sorted(self._offsets.items())
            if abs(off) * 5 > self._max_offset_ms * 4
        }
        total = max(len(self._offsets), self._peers)
        if 2 * len(far) <= total:
            return None
        detail = ", ".join(f"{peer} {off:+g} ms" for peer, off in far.items())
        return (
            f"local clock is more than {self.threshold_ms:g} ms (0.8 x max_offset "
            f"{self._max_offset_ms} ms) off {len(far)} of {total} peers ({detail}); "
            "refusing writes that need the clock until the clock is fixed"
        )
