"""A keyspace's materialized view in the agent, and how fresh it provably is.

The agent applies the keyspace's change feed (the KV stream) to a
:class:`KeyspaceView` in stream order. Freshness is proven, not assumed: the
agent periodically asks the stream's leader for its last sequence ("the
high-water mark") at local time ``t``; once the view has applied that sequence,
the view is known to hold every write acknowledged before ``t``. That instant is
``synced_at``; a read served from the view may be at most ``now - synced_at``
stale.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


@dataclass(frozen=True)
class StoredEntry:
    key: str
    value: bytes
    revision: int
    hlc: int
    region: str


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


E = TypeVar("E", bound=_Keyed)


class KeyspaceView(Generic[E]):
    """Key → latest entry, in stream order. Pure: the caller supplies times."""

    def __init__(self) -> None:
        self._entries: dict[str, E] = {}
        self._keys: list[str] = []  # sorted, for scans
        self.applied_seq = 0
        self.synced_at: float | None = None
        self._pending_marks: list[tuple[float, int]] = []  # (time asked, last seq then)

    def apply(self, seq: int, key: str, entry: E | None) -> None:
        """Apply one change-feed message at stream sequence ``seq`` (None deletes)."""
        if seq <= self.applied_seq:
            return  # a redelivery: already applied
        self.applied_seq = seq
        if entry is None:
            if self._entries.pop(key, None) is not None:
                i = bisect.bisect_left(self._keys, key)
                del self._keys[i]
        else:
            if key not in self._entries:
                bisect.insort(self._keys, key)
            self._entries[key] = entry
        self._settle()

    def merge_local(self, key: str, entry: E) -> None:
        """Show this agent's own write before it comes back through the feed
        (read-your-writes). Only for merge-based views, where applying the same
        write again later is harmless."""
        if key not in self._entries:
            bisect.insort(self._keys, key)
        self._entries[key] = entry

    def high_water_mark(self, asked_at: float, last_seq: int) -> None:
        """The leader's last sequence was ``last_seq`` when asked at local time ``asked_at``."""
        self._pending_marks.append((asked_at, last_seq))
        self._settle()

    def _settle(self) -> None:
        while self._pending_marks and self._pending_marks[0][1] <= self.applied_seq:
            asked_at, _ = self._pending_marks.pop(0)
            if self.synced_at is None or asked_at > self.synced_at:
                self.synced_at = asked_at
        # Keep only the newest unmet marks; older ones are implied by newer ones.
        if len(self._pending_marks) > 64:
            del self._pending_marks[:-64]

    def staleness(self, now: float) -> float | None:
        """How stale the view may be at ``now``; None when it was never synced."""
        return None if self.synced_at is None else max(0.0, now - self.synced_at)

    def get(self, key: str) -> E | None:
        return self._entries.get(key)

    def scan(self, prefix: str, after: str, limit: int) -> list[E]:
        """Up to ``limit`` entries with ``prefix``, in key order, strictly after ``after``."""
        start = bisect.bisect_right(self._keys, after) if after else 0
        start = max(start, bisect.bisect_left(self._keys, prefix))
        out: list[E] = []
        for key in self._keys[start:]:
            if not key.startswith(prefix) or len(out) >= limit:
                break
            out.append(self._entries[key])
        return out

    def __len__(self) -> int:
        return len(self._entries)
