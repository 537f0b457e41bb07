"""A keyspace's materialized view in the agent, and how fresh it provably is.

The agent applies the keyspace's change feed (a stream) to a
:class:`KeyspaceView` in stream order. Freshness is proven, never assumed
(:class:`Freshness`): a read served from the view may be at most
``now - synced_at`` stale, where ``synced_at`` is the latest local time ``t``
for which both of these hold:

- **a proof**: something a quorum committed says that every write
  acknowledged before ``t`` has a stream sequence of at most ``s``. The ack of
  any write invoked at ``t`` is one: a read barrier (a no-op committed through
  the quorum), or one of the agent's own writes. A write acknowledged before
  ``t`` was committed before the later write was even proposed, so it sits
  earlier in the log. A server's report of its last sequence is *not* a
  proof: a follower cut off from its leader, or a leader deposed without
  knowing it yet, reports its own stale last sequence (the chaos harness saw
  BOUNDED reads 23 s stale through exactly that);
- **completeness**: the view holds the effect of every message up to ``s``.
  Having applied ``s`` is not enough, because a feed can skip a message that
  a later one of the same key replaced (a last-per-subject snapshot, or a
  stream keeping one message per subject): the skipped write shows only once
  its replacement arrives. A message delivered with nothing pending after it
  closes that gap: every message up to it was delivered, or replaced by one
  that was.

Pure: the caller supplies times and sequences.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

#: Unsettled proofs kept per stream; past that the oldest are dropped (a drop
#: only delays freshness, never overstates it).
MAX_PENDING_PROOFS = 64


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


class Freshness:
    """How fresh a local copy of one stream provably is (see the module docstring)."""

    def __init__(self) -> None:
        #: Every message up to this sequence has taken effect in the copy.
        self.complete_seq = 0
        #: The latest local time before which every acknowledged write is in the copy.
        self.synced_at: float | None = None
        self._pending: list[tuple[float, int]] = []  # (asked at, sequence)

    def prove(self, asked_at: float, seq: int) -> None:
        """Every write acknowledged before local time ``asked_at`` has a sequence of
        at most ``seq`` (a quorum committed ``seq`` for a write invoked then)."""
        if seq <= self.complete_seq:
            self._settle(asked_at)
            return
        self._pending.append((asked_at, seq))
        if len(self._pending) > MAX_PENDING_PROOFS:
            self._pending.sort()
            del self._pending[:-MAX_PENDING_PROOFS]

    def completed(self, seq: int) -> None:
        """Every message up to ``seq`` has taken effect in the copy."""
        if seq <= self.complete_seq:
            return
        self.complete_seq = seq
        if self._pending:
            still = []
            for asked_at, proven in self._pending:
                if proven <= seq:
                    self._settle(asked_at)
                else:
                    still.append((asked_at, proven))
            self._pending = still

    def _settle(self, asked_at: float) -> None:
        if self.synced_at is None or asked_at > self.synced_at:
            self.synced_at = asked_at

    def staleness(self, now: float) -> float | None:
        """How stale the copy may be at ``now``; None when nothing was ever proven."""
        return None if self.synced_at is None else max(0.0, now - self.synced_at)


class KeyspaceView(Generic[E]):
    """Key → latest entry, in stream order. Pure: the caller supplies times.

    ``freshness`` is the proof for the stream the view applies in order;
    ``sources`` holds one per source stream for views that merge several
    streams (``replicated`` keyspaces: one per writing region). Both belong to
    this view: a view made anew starts unproven.
    """

    def __init__(self) -> None:
        self._entries: dict[str, E] = {}
        self._keys: list[str] = []  # sorted, for scans
        self.applied_seq = 0
        self.freshness = Freshness()
        self.sources: dict[str, Freshness] = {}

    def apply(self, seq: int, key: str, entry: E | None, *, pending: int | None = None) -> None:
        """Apply one change-feed message at stream sequence ``seq`` (None deletes).
        ``pending``: how many messages the feed said were still to come after
        it; 0 makes the view complete up to ``seq``."""
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
        if pending == 0:
            self.freshness.completed(seq)

    def merge_local(self, key: str, entry: E) -> None:
        """Show a merged entry outside stream order: this agent's own write before
        it comes back through the feed (read-your-writes), or a message read
        straight from a source stream. Only for merge-based views, where
        applying the same write again later is harmless."""
        if key not in self._entries:
            bisect.insort(self._keys, key)
        self._entries[key] = entry

    @property
    def complete_seq(self) -> int:
        return self.freshness.complete_seq

    def prove(self, asked_at: float, seq: int) -> None:
        """See :meth:`Freshness.prove`."""
        self.freshness.prove(asked_at, seq)

    def staleness(self, now: float) -> float | None:
        """How stale the view may be at ``now``; None when it was never proven fresh."""
        return self.freshness.staleness(now)

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
