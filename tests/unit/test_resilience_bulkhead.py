"""Bulkheads: a concurrency limit per target that fails fast when full (DESIGN §5)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from meridian.invocation.resilience.bulkhead import Bulkhead, BulkheadLease, BulkheadRegistry
from meridian.invocation.resilience.policy import BulkheadPolicy


def test_full_bulkhead_refuses_at_once_and_frees_on_release() -> None:
    bulkhead = Bulkhead(BulkheadPolicy(max_concurrent=2))
    a, b = bulkhead.try_acquire(), bulkhead.try_acquire()
    assert a is not None and b is not None
    assert bulkhead.try_acquire() is None
    assert bulkhead.rejected == 1
    a.release()
    a.release()  # idempotent: must not free a second slot
    assert bulkhead.in_flight == 1
    c = bulkhead.try_acquire()
    assert c is not None
    assert bulkhead.try_acquire() is None
    assert bulkhead.available == 0


def test_lease_releases_when_the_block_raises() -> None:
    bulkhead = Bulkhead(BulkheadPolicy(max_concurrent=1))
    lease = bulkhead.try_acquire()
    assert lease is not None
    try:
        with lease:
            raise RuntimeError("the call failed")
    except RuntimeError:
        pass
    assert bulkhead.in_flight == 0


def test_a_slow_target_does_not_block_another_target() -> None:
    registry = BulkheadRegistry(lambda target: BulkheadPolicy(max_concurrent=3))
    slow = [registry.get("slow").try_acquire() for _ in range(5)]
    assert sum(lease is not None for lease in slow) == 3
    assert registry.get("fast").try_acquire() is not None
    assert registry.get("slow") is registry.get("slow")
    assert {name for name, _ in registry.items()} == {"slow", "fast"}


class BulkheadMachine(RuleBasedStateMachine):
    @initialize(limit=st.integers(1, 5))
    def setup(self, limit: int) -> None:
        self.limit = limit
        self.bulkhead = Bulkhead(BulkheadPolicy(max_concurrent=limit))
        self.leases: list[BulkheadLease] = []
        self.released: list[BulkheadLease] = []

    @rule()
    def acquire(self) -> None:
        full = len(self.leases) >= self.limit
        lease = self.bulkhead.try_acquire()
        assert (lease is None) == full
        if lease is not None:
            self.leases.append(lease)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        lease.release()
        self.released.append(lease)

    @precondition(lambda self: self.released)
    @rule(data=st.data())
    def release_again(self, data: st.DataObject) -> None:
        self.released[data.draw(st.integers(0, len(self.released) - 1))].release()

    @invariant()
    def in_flight_never_exceeds_the_limit(self) -> None:
        assert 0 <= self.bulkhead.in_flight <= self.limit
        assert self.bulkhead.in_flight == len(self.leases)


TestBulkheadMachine = BulkheadMachine.TestCase
TestBulkheadMachine.settings = settings(max_examples=100, deadline=None)
