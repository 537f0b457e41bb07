"""Sliding windows over outcomes: by count, and by time in fixed slices.

Both are bounded in memory whatever the request rate, which is why the time
window is sliced (resilience4j's "partial aggregations", Finagle's
``WindowedAdder``) rather than a log of every event. The price is granularity:
a time window covers the current slice and the ``buckets - 1`` before it, so
it spans between ``window_s - width`` and ``window_s`` seconds of history.

Time is a float in seconds from any monotonic origin, passed in by the caller.
A reading earlier than one already seen is treated as that later reading:
these windows never move backwards.
"""

from __future__ import annotations

import math

#: Marks a slice that has never been used (no real slice number is this low).
_UNUSED = -(1 << 62)


class CountWindow:
    """The outcomes of the last ``size`` calls: how many, and how many failed."""

    __slots__ = ("_failures", "_filled", "_next", "_ring", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._ring = [False] * size
        self._next = 0
        self._filled = 0
        self._failures = 0

    def add(self, failed: bool) -> None:
        """Record one call; the oldest falls out once the window is full."""
        if self._filled == self.size:
            self._failures -= self._ring[self._next]
        else:
            self._filled += 1
        self._ring[self._next] = failed
        self._failures += failed
        self._next = (self._next + 1) % self.size

    @property
    def calls(self) -> int:
        return self._filled

    @property
    def failures(self) -> int:
        return self._failures

    def reset(self) -> None:
        self._ring = [False] * self.size
        self._next = self._filled = self._failures = 0


class TimeWindow:
    """Integer counters summed over the last ``window_s`` seconds, in ``buckets`` slices.

    Each slice holds ``arity`` counters (e.g. calls and failures). Slice ``i``
    covers ``[i * width, (i + 1) * width)`` with ``width = window_s / buckets``.
    """

    __slots__ = ("_counts", "_index", "_latest", "arity", "buckets", "width")

    def __init__(self, window_s: float, buckets: int, arity: int) -> None:
        if not (window_s > 0 and math.isfinite(window_s)) or buckets < 1 or arity < 1:
            raise ValueError("window_s must be > 0, buckets and arity >= 1")
        self.buckets = buckets
        self.arity = arity
        self.width = window_s / buckets
        self._index = [_UNUSED] * buckets
        self._counts = [[0] * arity for _ in range(buckets)]
        self._latest = -math.inf

    def slice_of(self, now: float) -> int:
        """The slice number ``now`` falls in (after clamping to the latest reading)."""
        self._latest = max(self._latest, now)
        return math.floor(self._latest / self.width)

    def add(self, now: float, *deltas: int) -> None:
        """Add ``deltas`` (one per counter) to the slice ``now`` falls in."""
        idx = self.slice_of(now)
        pos = idx % self.buckets
        if self._index[pos] != idx:
            self._index[pos] = idx
            self._counts[pos] = [0] * self.arity
        counts = self._counts[pos]
        for i, d in enumerate(deltas):
            counts[i] += d

    def totals(self, now: float) -> tuple[int, ...]:
        """Each counter summed over the slices still inside the window at ``now``."""
        idx = self.slice_of(now)
        sums = [0] * self.arity
        for pos in range(self.buckets):
            if idx - self.buckets < self._index[pos] <= idx:
                for i, c in enumerate(self._counts[pos]):
                    sums[i] += c
        return tuple(sums)

    def newest_first(self, now: float) -> list[tuple[int, ...]]:
        """The counters of each slice in the window, the current slice first."""
        idx = self.slice_of(now)
        out: list[tuple[int, ...]] = []
        for i in range(idx, idx - self.buckets, -1):
            pos = i % self.buckets
            out.append(tuple(self._counts[pos]) if self._index[pos] == i else (0,) * self.arity)
        return out

    def reset(self) -> None:
        self._index = [_UNUSED] * self.buckets
        self._counts = [[0] * self.arity for _ in range(self.buckets)]
