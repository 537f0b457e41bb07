"""Per-identity caps on long-lived calls (watches, subscriptions): one caller
cannot hold every stream an agent can serve. Pure bookkeeping, no I/O."""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import AsyncIterator
from typing import TypeVar

from meridian.core.errors import ResourceExhaustedError

T = TypeVar("T")

#: Concurrent watches and subscriptions one identity may hold on one agent.
DEFAULT_STREAMS_PER_IDENTITY = 256


class StreamQuota:
    """How many streams each identity holds; :meth:`guard` refuses one too many."""

    def __init__(self, limit: int = DEFAULT_STREAMS_PER_IDENTITY) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()

    def held(self, identity: str) -> int:
        return self._held[identity]

    def check(self, identity: str, what: str) -> None:
        """RESOURCE_EXHAUSTED if ``identity`` holds as many streams as it may."""
        if self._held[identity] >= self.limit:
            who = identity or "unauthenticated callers"
            raise ResourceExhaustedError(
                f"{who} already hold {self.limit} watches and subscriptions on this agent; "
                f"close one before opening another {what}"
            )

    def guard(self, identity: str, what: str, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """``stream``, counted against ``identity`` ("" for unauthenticated
        callers, who share one quota) until it ends, is closed, or is dropped
        unread. RESOURCE_EXHAUSTED at once, before anything streams, beyond the
        limit."""
        self.check(identity, what)
        self._held[identity] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._held[identity] -= 1
                if not self._held[identity]:
                    del self._held[identity]

        async def counted() -> AsyncIterator[T]:
            try:
                async for item in stream:
                    yield item
            finally:
                release()

        out = counted()
        weakref.finalize(out, release)  # a stream never iterated still gives its slot back
        return out
