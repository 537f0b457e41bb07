"""Bulkheads: a concurrency limit per target, failing fast when full.

Like resilience4j's ``SemaphoreBulkhead`` with ``maxWaitDuration = 0`` and
Envoy's ``max_requests`` circuit-breaker threshold: a call either gets a slot
at once or is refused at once, so a slow target can tie up at most
``max_concurrent`` of the agent's calls and callers of other targets are not
held up behind it. The invocation path turns a refusal into 503 /
``RESOURCE_EXHAUSTED``.

There is no waiting queue on purpose: waiting would need a clock and a task to
wake, and a queue in front of a slow target only turns overload into latency.

This is plain bookkeeping with no locks: it is meant for one event loop thread,
where ``try_acquire`` and ``release`` run without interleaving.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from meridian.invocation.resilience.policy import BulkheadPolicy


class BulkheadLease:
    """One slot of a bulkhead. :meth:`release` is idempotent; use it in ``finally``.

    Also a (synchronous) context manager that releases on exit, which works
    around ``await`` too::

        with lease:
            await call()
    """

    __slots__ = ("_bulkhead", "released")

    def __init__(self, bulkhead: Bulkhead) -> None:
        self._bulkhead = bulkhead
        self.released = False

    def release(self) -> None:
        """Give the slot back; a second call does nothing."""
        if not self.released:
            self.released = True
            self._bulkhead._release()

    def __enter__(self) -> BulkheadLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Bulkhead:
    """At most ``policy.max_concurrent`` leases outstanding at once."""

    def __init__(self, policy: BulkheadPolicy | None = None) -> None:
        self.policy = policy or BulkheadPolicy()
        self._in_flight = 0
        #: Calls refused because the bulkhead was full.
        self.rejected = 0

    @property
    def limit(self) -> int:
        return self.policy.max_concurrent

    @property
    def in_flight(self) -> int:
        """Leases taken and not yet released; never above :attr:`limit`."""
        return self._in_flight

    @property
    def available(self) -> int:
        return self.limit - self._in_flight

    def try_acquire(self) -> BulkheadLease | None:
        """A lease if a slot is free, else None (and :attr:`rejected` grows). Never waits."""
        if self._in_flight >= self.limit:
            self.rejected += 1
            return None
        self._in_flight += 1
        return BulkheadLease(self)

    def _release(self) -> None:
        self._in_flight -= 1


class BulkheadRegistry:
    """One bulkhead per target, made on first use with ``policy_for(target)``.

    A target's bulkhead is replaced when its policy changes (a config reload);
    leases of the old one still release into the old one, so the new limit is
    never exceeded by the new bulkhead's own leases.
    """

    def __init__(self, policy_for: Callable[[str], BulkheadPolicy]) -> None:
        self._policy_for = policy_for
        self._bulkheads: dict[str, Bulkhead] = {}

    def get(self, target: str) -> Bulkhead:
        policy = self._policy_for(target)
        bulkhead = self._bulkheads.get(target)
        # ``is`` first: a policy set hands out the same object while it is unchanged.
        if bulkhead is None or (bulkhead.policy is not policy and bulkhead.policy != policy):
            bulkhead = self._bulkheads[target] = Bulkhead(policy)
        return bulkhead

    def items(self) -> list[tuple[str, Bulkhead]]:
        """Every bulkhead made so far; for the metrics exporter."""
        return list(self._bulkheads.items())
