"""Circuit breaker per (service, region): closed, open, half-open (DESIGN §5)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from meridian.invocation.resilience.breaker import (
    ALLOWED_TRANSITIONS,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    Permit,
    Transition,
    TransitionReason,
)
from meridian.invocation.resilience.policy import BreakerPolicy, WindowKind

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def _call(breaker: CircuitBreaker, now: float, success: bool) -> bool:
    """One call through the breaker; False if it was refused."""
    permit = breaker.allow(now)
    if permit is None:
        return False
    breaker.record(permit, success, now)
    return True


def test_opens_after_consecutive_failures_and_rejects_fast() -> None:
    seen: list[Transition] = []
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=3), on_transition=seen.append)
    for t in range(2):
        assert _call(breaker, t, success=False)
    assert breaker.state is CLOSED
    assert _call(breaker, 2, success=False)
    assert breaker.state is OPEN
    assert breaker.allow(2.5) is None
    assert breaker.rejected == 1
    assert seen == [Transition(CLOSED, OPEN, 2, TransitionReason.CONSECUTIVE_FAILURES)]
    assert breaker.retry_after(3.0) == pytest.approx(4.0)


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=3, minimum_calls=10))
    for t, ok in enumerate([False, False, True, False, False, True, False, False]):
        _call(breaker, t, ok)
    assert breaker.state is CLOSED


def test_opens_on_failure_rate_once_minimum_calls_are_in_the_window() -> None:
    policy = BreakerPolicy(
        consecutive_failures=0, window_size=10, minimum_calls=10, failure_rate=0.5
    )
    breaker = CircuitBreaker(policy)
    # 4 failures in 9 calls: not yet judged (below minimum_calls)
    for t, ok in enumerate([True, False] * 4 + [True]):
        _call(breaker, t, ok)
    assert breaker.state is CLOSED
    assert breaker.window_totals(9) == (9, 4)
    _call(breaker, 9, success=False)  # 5 of 10 failed: 50%
    assert breaker.state is OPEN
    assert breaker.recent[-1].reason is TransitionReason.FAILURE_RATE


def test_count_window_forgets_the_oldest_calls() -> None:
    policy = BreakerPolicy(
        consecutive_failures=0, window_size=4, minimum_calls=4, failure_rate=0.75
    )
    breaker = CircuitBreaker(policy)
    for t, ok in enumerate([False, False, True, True, True, False]):
        _call(breaker, t, ok)
    # window now holds True, True, True, False: 25%
    assert breaker.window_totals(6) == (4, 1)
    assert breaker.state is CLOSED


def test_time_window_forgets_calls_older_than_the_window() -> None:
    policy = BreakerPolicy(
        window=WindowKind.TIME,
        window_s=10,
        window_buckets=10,
        minimum_calls=5,
        failure_rate=0.5,
        consecutive_failures=0,
    )
    breaker = CircuitBreaker(policy)
    for i in range(4):
        _call(breaker, 0.1 * i, success=False)
    assert breaker.window_totals(1.0) == (4, 4)
    # ten seconds later those four have left the window: one more failure is 1 of 1
    assert breaker.window_totals(10.5) == (0, 0)
    _call(breaker, 10.5, success=False)
    assert breaker.state is CLOSED
    for i in range(4):
        _call(breaker, 11 + 0.1 * i, success=True)
    assert breaker.state is CLOSED
    assert breaker.window_totals(11.5) == (5, 1)


def test_full_cycle_open_half_open_closed() -> None:
    policy = BreakerPolicy(consecutive_failures=1, open_cooldown_s=5, half_open_probes=2)
    breaker = CircuitBreaker(policy)
    _call(breaker, 0, success=False)
    assert breaker.state_at(4.999) is OPEN
    assert breaker.state_at(5.0) is HALF_OPEN
    first, second = breaker.allow(5.0), breaker.allow(5.0)
    assert first is not None and first.probe
    assert second is not None and second.probe
    assert breaker.allow(5.0) is None  # only two probes
    breaker.record(first, True, 5.1)
    assert breaker.state is HALF_OPEN
    assert breaker.allow(5.1) is None  # one success, one in flight: no third probe
    breaker.record(second, True, 5.2)
    assert breaker.state is CLOSED
    assert [(t.source, t.target) for t in breaker.recent] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert breaker.transition_counts[(HALF_OPEN, CLOSED)] == 1
    assert breaker.window_totals(5.2) == (0, 0)  # a closed breaker starts afresh


def test_a_failed_probe_reopens_with_a_fresh_cooldown() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=1, open_cooldown_s=5))
    _call(breaker, 0, success=False)
    probe = breaker.allow(6)
    assert probe is not None
    breaker.record(probe, False, 7)
    assert breaker.state is OPEN
    assert breaker.recent[-1].reason is TransitionReason.PROBE_FAILED
    assert breaker.state_at(11.9) is OPEN
    assert breaker.state_at(12) is HALF_OPEN


def test_a_released_probe_gives_its_slot_back() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=1, open_cooldown_s=1))
    _call(breaker, 0, success=False)
    probe = breaker.allow(1)
    assert probe is not None
    assert breaker.allow(1) is None
    breaker.release(probe, 1.5)  # e.g. the caller was cancelled
    assert breaker.state is HALF_OPEN
    assert breaker.allow(1.5) is not None


def test_late_outcomes_from_before_a_transition_are_ignored() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=1, open_cooldown_s=1))
    slow = breaker.allow(0)
    assert slow is not None
    _call(breaker, 0, success=False)  # opens
    probe = breaker.allow(1)
    assert probe is not None
    breaker.record(probe, True, 1)
    assert breaker.state is CLOSED
    breaker.record(slow, False, 2)  # granted before the breaker opened: ignored
    assert breaker.state is CLOSED
    assert breaker.window_totals(2) == (0, 0)


def test_settling_a_permit_twice_is_a_bug() -> None:
    breaker = CircuitBreaker()
    permit = breaker.allow(0)
    assert permit is not None
    breaker.record(permit, True, 0)
    with pytest.raises(ValueError, match="already settled"):
        breaker.record(permit, True, 0)
    with pytest.raises(ValueError, match="already settled"):
        breaker.release(permit, 0)


def test_time_going_backwards_does_not_shorten_the_cooldown() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=1, open_cooldown_s=5))
    _call(breaker, 100, success=False)
    assert breaker.state_at(3) is OPEN  # an earlier reading is read as 100
    assert breaker.state_at(105) is HALF_OPEN


def test_registry_keeps_one_breaker_per_service_and_region() -> None:
    policies = {"orders": BreakerPolicy(consecutive_failures=1)}
    seen: list[tuple[str, str, BreakerState]] = []
    registry = BreakerRegistry(
        lambda s: policies.get(s, BreakerPolicy()),
        on_transition=lambda s, r, t: seen.append((s, r, t.target)),
    )
    us = registry.get("orders", "us-east")
    assert registry.get("orders", "us-east") is us
    assert registry.get("orders", "eu-west") is not us
    _call(us, 0, success=False)
    assert seen == [("orders", "us-east", OPEN)]
    assert registry.get("orders", "eu-west").state is CLOSED
    policies["orders"] = BreakerPolicy(consecutive_failures=2)  # a reload starts afresh
    assert registry.get("orders", "us-east").state is CLOSED
    assert {key for key, _ in registry.items()} == {("orders", "us-east"), ("orders", "eu-west")}


# --- properties ---------------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, outcomes, cancellations and time steps against one breaker."""

    @initialize(
        probes=st.integers(1, 4),
        consecutive=st.integers(0, 4),
        window=st.sampled_from(list(WindowKind)),
        minimum=st.integers(1, 6),
        rate=st.sampled_from([0.25, 0.5, 1.0]),
    )
    def setup(
        self, probes: int, consecutive: int, window: WindowKind, minimum: int, rate: float
    ) -> None:
        self.policy = BreakerPolicy(
            window=window,
            window_size=6,
            window_s=4.0,
            window_buckets=4,
            minimum_calls=minimum,
            failure_rate=rate,
            consecutive_failures=consecutive,
            open_cooldown_s=2.0,
            half_open_probes=probes,
        )
        self.seen: list[Transition] = []
        self.breaker = CircuitBreaker(self.policy, on_transition=self.seen.append)
        self.now = 0.0
        # Each outstanding permit with the number of transitions seen when it was granted.
        self.outstanding: list[tuple[Permit, int]] = []
        # Probes admitted in the current HALF_OPEN episode and not released.
        self.episode_probes = 0
        self.episode = -1

    def _sync_episode(self) -> None:
        if len(self.seen) != self.episode:
            self.episode = len(self.seen)
            self.episode_probes = 0

    @rule(dt=st.floats(0, 3, allow_nan=False))
    def tick(self, dt: float) -> None:
        self.now += dt
        before = self.breaker.state
        after = self.breaker.state_at(self.now)
        if before is OPEN and after is OPEN:
            assert self.now < self.seen[-1].at + self.policy.open_cooldown_s

    @rule()
    def allow(self) -> None:
        state = self.breaker.state_at(self.now)
        self._sync_episode()
        permit = self.breaker.allow(self.now)
        if state is OPEN:
            assert permit is None, "an OPEN breaker admitted a call"
        if state is CLOSED:
            assert permit is not None and not permit.probe
        if permit is not None:
            self.outstanding.append((permit, len(self.seen)))
            if permit.probe:
                self.episode_probes += 1

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data(), success=st.booleans(), cancel=st.booleans())
    def settle(self, data: st.DataObject, success: bool, cancel: bool) -> None:
        index = data.draw(st.integers(0, len(self.outstanding) - 1))
        permit, granted_after = self.outstanding.pop(index)
        self._sync_episode()
        if cancel:
            self.breaker.release(permit, self.now)
            if permit.probe and granted_after == len(self.seen):
                self.episode_probes -= 1  # the slot went back to this episode
        else:
            self.breaker.record(permit, success, self.now)

    @invariant()
    def at_most_n_probes_per_half_open_episode(self) -> None:
        self._sync_episode()
        if self.breaker.state is HALF_OPEN:
            assert self.episode_probes <= self.policy.half_open_probes
            assert self.breaker.probes_in_flight <= self.policy.half_open_probes

    @invariant()
    def transitions_only_along_allowed_edges(self) -> None:
        previous = CLOSED
        for t in self.seen:
            assert (t.source, t.target) in ALLOWED_TRANSITIONS
            assert t.source is previous, "transitions must chain"
            previous = t.target
        assert previous is self.breaker.state
        assert (OPEN, CLOSED) not in self.breaker.transition_counts
        assert sum(self.breaker.transition_counts.values()) == len(self.seen)

    @invariant()
    def transitions_are_in_time_order(self) -> None:
        times = [t.at for t in self.seen]
        assert times == sorted(times)


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
