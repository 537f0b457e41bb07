"""Circuit breaker per (service, region): CLOSED, OPEN, HALF_OPEN.

Modelled on resilience4j's ``CircuitBreaker``, with Hystrix/Polly's stricter
half-open rule:

- **CLOSED** admits every call and records outcomes in a sliding window, by
  count (the last ``window_size`` calls) or by time (the last ``window_s``
  seconds, sliced; see :mod:`.window`). It opens when ``consecutive_failures``
  calls in a row failed, or when the window holds at least ``minimum_calls``
  calls and the failure rate is ``>= failure_rate``.
- **OPEN** rejects every call. After ``open_cooldown_s`` the next look at the
  breaker (:meth:`CircuitBreaker.allow` or :meth:`CircuitBreaker.state_at`)
  moves it to HALF_OPEN.
- **HALF_OPEN** admits at most ``half_open_probes`` probe calls. Any probe
  failure reopens the breaker (with a fresh cooldown); once that many probes
  have succeeded it closes, with an empty window. A probe whose outcome says
  nothing about the target (:meth:`CircuitBreaker.release`: cancelled, or a
  4xx) gives its slot back.

The only edges are CLOSED→OPEN, OPEN→HALF_OPEN, HALF_OPEN→CLOSED and
HALF_OPEN→OPEN (:data:`ALLOWED_TRANSITIONS`); OPEN never goes straight to CLOSED.

Every admitted call gets a :class:`Permit`, which the caller must settle
exactly once with :meth:`~CircuitBreaker.record` or
:meth:`~CircuitBreaker.release` (use ``try/finally``; on cancellation, release).
A permit remembers the breaker's generation: an outcome that arrives after the
breaker has changed state since the permit was granted is ignored, so a slow
failure from before the breaker opened can't reopen a breaker that has since
closed, and only real probes count in HALF_OPEN.

Transitions are reported to the ``on_transition`` callback (for metrics and
logs), counted in :attr:`CircuitBreaker.transition_counts`, and the last few
are kept in :attr:`CircuitBreaker.recent`.

No I/O and no clock: ``now`` is a monotonic reading in seconds, passed in. A
reading earlier than the latest one seen is treated as the latest.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass

from meridian.core.window import CountWindow, TimeWindow
from meridian.invocation.resilience.policy import BreakerPolicy, WindowKind


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class TransitionReason(enum.StrEnum):
    CONSECUTIVE_FAILURES = "consecutive_failures"
    FAILURE_RATE = "failure_rate"
    COOLDOWN_ELAPSED = "cooldown_elapsed"
    PROBE_FAILED = "probe_failed"
    PROBES_SUCCEEDED = "probes_succeeded"


ALLOWED_TRANSITIONS = frozenset(
    {
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
    }
)


@dataclass(frozen=True)
class Transition:
    """One change of state, at monotonic time ``at``, and why."""

    source: BreakerState
    target: BreakerState
    at: float
    reason: TransitionReason


class Permit:
    """Leave to make one call. Settle it exactly once.

    ``probe`` is true for a HALF_OPEN probe. Settling twice raises
    :class:`ValueError`: it would count one call as two.
    """

    __slots__ = ("generation", "probe", "settled")

    def __init__(self, generation: int, probe: bool) -> None:
        self.generation = generation
        self.probe = probe
        self.settled = False

    def __repr__(self) -> str:
        return f"Permit(generation={self.generation}, probe={self.probe}, settled={self.settled})"


class CircuitBreaker:
    """One breaker's state machine; see the module docstring for the rules."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        on_transition: Callable[[Transition], None] | None = None,
        keep_recent: int = 16,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._latest = float("-inf")
        self._opened_at = 0.0
        self._consecutive = 0
        self._probes_out = 0
        self._probe_successes = 0
        self._count: CountWindow | None = None
        self._time: TimeWindow | None = None
        if self.policy.window is WindowKind.COUNT:
            self._count = CountWindow(self.policy.window_size)
        else:
            self._time = TimeWindow(self.policy.window_s, self.policy.window_buckets, 2)
        #: (source, target) → how many times the breaker took that edge.
        self.transition_counts: collections.Counter[tuple[BreakerState, BreakerState]] = (
            collections.Counter()
        )
        #: The last ``keep_recent`` transitions, oldest first.
        self.recent: collections.deque[Transition] = collections.deque(maxlen=keep_recent)
        #: Calls refused because the breaker was OPEN or had no probe slot free.
        self.rejected = 0

    # --- reading -------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state as of the latest reading; an elapsed cooldown shows only via :meth:`state_at`."""
        return self._state

    def state_at(self, now: float) -> BreakerState:
        """The state at ``now``, moving OPEN to HALF_OPEN if the cooldown has elapsed."""
        self._advance(now)
        return self._state

    def retry_after(self, now: float) -> float:
        """Seconds until an OPEN breaker half-opens (0 in any other state); for ``Retry-After``."""
        self._advance(now)
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.policy.open_cooldown_s - self._latest)

    def window_totals(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the CLOSED window at ``now``."""
        self._advance(now)
        if self._count is not None:
            return self._count.calls, self._count.failures
        assert self._time is not None
        calls, failures = self._time.totals(self._latest)
        return calls, failures

    @property
    def probes_in_flight(self) -> int:
        """HALF_OPEN probes admitted and not yet settled."""
        return self._probes_out if self._state is BreakerState.HALF_OPEN else 0

    # --- the state machine ---------------------------------------------------

    def allow(self, now: float) -> Permit | None:
        """A permit for one call, or None if the breaker refuses it (fail fast)."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return Permit(self._generation, probe=False)
        if (
            self._state is BreakerState.HALF_OPEN
            and self._probes_out + self._probe_successes < self.policy.half_open_probes
        ):
            self._probes_out += 1
            return Permit(self._generation, probe=True)
        self.rejected += 1
        return None

    def record(self, permit: Permit, success: bool, now: float) -> None:
        """Settle ``permit`` with the call's outcome as seen from the target.

        ``success`` false means the target failed (5xx, gateway error, reset,
        timeout); the caller decides what counts, and should :meth:`release`
        outcomes that say nothing about the target's health.
        """
        self._settle(permit)
        self._advance(now)
        if permit.generation != self._generation:
            return
        if self._state is BreakerState.CLOSED:
            self._record_closed(success)
        elif self._state is BreakerState.HALF_OPEN and permit.probe:
            self._probes_out -= 1
            if not success:
                self._open(TransitionReason.PROBE_FAILED)
            else:
                self._probe_successes += 1
                if self._probe_successes >= self.policy.half_open_probes:
                    self._move(BreakerState.CLOSED, TransitionReason.PROBES_SUCCEEDED)

    def release(self, permit: Permit, now: float) -> None:
        """Settle ``permit`` without an outcome; a HALF_OPEN probe slot is given back."""
        self._settle(permit)
        self._advance(now)
        if (
            permit.generation == self._generation
            and permit.probe
            and self._state is BreakerState.HALF_OPEN
        ):
            self._probes_out -= 1

    # --- internals -----------------------------------------------------------

    @staticmethod
    def _settle(permit: Permit) -> None:
        if permit.settled:
            raise ValueError("this permit was already settled")
        permit.settled = True

    def _advance(self, now: float) -> None:
        self._latest = max(self._latest, now)
        if (
            self._state is BreakerState.OPEN
            and self._latest >= self._opened_at + self.policy.open_cooldown_s
        ):
            self._move(BreakerState.HALF_OPEN, TransitionReason.COOLDOWN_ELAPSED)

    def _record_closed(self, success: bool) -> None:
        policy = self.policy
        self._consecutive = 0 if success else self._consecutive + 1
        if self._count is not None:
            self._count.add(not success)
            calls, failures = self._count.calls, self._count.failures
        else:
            assert self._time is not None
            self._time.add(self._latest, 1, 0 if success else 1)
            calls, failures = self._time.totals(self._latest)
        if success:
            return
        if policy.consecutive_failures and self._consecutive >= policy.consecutive_failures:
            self._open(TransitionReason.CONSECUTIVE_FAILURES)
        elif calls >= policy.minimum_calls and failures >= policy.failure_rate * calls:
            self._open(TransitionReason.FAILURE_RATE)

    def _open(self, reason: TransitionReason) -> None:
        self._opened_at = self._latest
        self._move(BreakerState.OPEN, reason)

    def _move(self, target: BreakerState, reason: TransitionReason) -> None:
        source = self._state
        if (source, target) not in ALLOWED_TRANSITIONS:  # pragma: no cover - a bug here
            raise AssertionError(f"illegal breaker transition {source} -> {target}")
        self._state = target
        self._generation += 1
        self._consecutive = 0
        self._probes_out = 0
        self._probe_successes = 0
        if target is BreakerState.CLOSED:
            if self._count is not None:
                self._count.reset()
            if self._time is not None:
                self._time.reset()
        transition = Transition(source, target, self._latest, reason)
        self.transition_counts[(source, target)] += 1
        self.recent.append(transition)
        if self._on_transition is not None:
            self._on_transition(transition)


class BreakerRegistry:
    """The breakers of one agent, one per (service, region), made on first use.

    ``policy_for(service)`` gives each service's breaker policy. When it
    returns a different policy than a breaker was built with (a config
    reload), that breaker is replaced by a fresh CLOSED one. ``on_transition``
    receives the service and region with each transition, for metrics.
    """

    def __init__(
        self,
        policy_for: Callable[[str], BreakerPolicy],
        *,
        on_transition: Callable[[str, str, Transition], None] | None = None,
    ) -> None:
        self._policy_for = policy_for
        self._on_transition = on_transition
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, service: str, region: str) -> CircuitBreaker:
        policy = self._policy_for(service)
        breaker = self._breakers.get((service, region))
        # ``is`` first: a policy set hands out the same object while it is unchanged.
        if breaker is None or (breaker.policy is not policy and breaker.policy != policy):
            callback = None
            if self._on_transition is not None:
                report = self._on_transition

                def callback(t: Transition) -> None:
                    report(service, region, t)

            breaker = CircuitBreaker(policy, on_transition=callback)
            self._breakers[(service, region)] = breaker
        return breaker

    def items(self) -> list[tuple[tuple[str, str], CircuitBreaker]]:
        """Every breaker made so far, keyed by (service, region); for the metrics exporter."""
        return list(self._breakers.items())
