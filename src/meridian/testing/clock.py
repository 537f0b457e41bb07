"""A manual wall clock: a real :class:`meridian.core.hlc.Clock` that only moves when told.

Modelled on trio's ``MockClock``: time stands still until the test (or a chaos
scenario) moves it. Unlike ``MockClock`` it may also be :meth:`set` backwards,
because wall clocks do step backwards (NTP corrections, VM migration) and the
HLC must survive that.
"""

from __future__ import annotations

from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.core.hlc import MAX_WALL_MS, Clock


def _check_ms(field: str, value: int, *, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_WALL_MS:
        raise InvalidArgumentError(
            FieldViolation(field, f"must be an integer number of ms in {low}..{MAX_WALL_MS}")
        )


class ManualClock:
    """Wall-clock milliseconds under explicit control.

    ``now_ms()`` returns the current reading and never changes it by itself.
    Bad arguments raise :class:`InvalidArgumentError` and leave the reading as
    it was.
    """

    def __init__(self, start_ms: int = 0) -> None:
        _check_ms("start_ms", start_ms, low=0)
        self._now_ms = start_ms

    def now_ms(self) -> int:
        """The current reading, in milliseconds since the Unix epoch."""
        return self._now_ms

    def advance(self, delta_ms: int) -> int:
        """Move the clock forward by ``delta_ms`` (>= 0); return the new reading."""
        _check_ms("delta_ms", delta_ms, low=0)
        _check_ms("now_ms", self._now_ms + delta_ms, low=0)
        self._now_ms += delta_ms
        return self._now_ms

    def set(self, now_ms: int) -> None:
        """Jump to ``now_ms``, forwards or backwards."""
        _check_ms("now_ms", now_ms, low=0)
        self._now_ms = now_ms

    def __repr__(self) -> str:
        return f"ManualClock(now_ms={self._now_ms})"


class OffsetClock:
    """Another clock, ``offset_ms`` ahead (or behind, if negative): a skewed host."""

    def __init__(self, base: Clock, offset_ms: int) -> None:
        self.base = base
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return self.base.now_ms() + self.offset_ms
