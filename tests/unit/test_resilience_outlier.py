"""Outlier ejection per instance: consecutive errors, a maximum share, growing ejections."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from meridian.invocation.resilience.outlier import (
    CallOutcome,
    EventKind,
    OutlierDetector,
    OutlierEvent,
    classify_grpc,
    classify_http,
    ejection_duration,
)
from meridian.invocation.resilience.policy import OutlierPolicy

OK, SERVER, GATEWAY = CallOutcome.SUCCESS, CallOutcome.SERVER_ERROR, CallOutcome.GATEWAY_ERROR
INSTANCES = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, OK), (404, OK), (429, OK), (500, SERVER), (501, SERVER), (502, GATEWAY), (503, GATEWAY),
     (504, GATEWAY), (599, SERVER)],
)  # fmt: skip
def test_http_statuses(status: int, outcome: CallOutcome) -> None:
    assert classify_http(status) is outcome


@pytest.mark.parametrize(
    ("code", "outcome"),
    [("OK", OK), ("NOT_FOUND", OK), ("INVALID_ARGUMENT", OK), ("INTERNAL", SERVER),
     ("UNKNOWN", SERVER), ("UNAVAILABLE", GATEWAY), ("DEADLINE_EXCEEDED", GATEWAY)],
)  # fmt: skip
def test_grpc_codes(code: str, outcome: CallOutcome) -> None:
    assert classify_grpc(code) is outcome


def _detector(**kw: float) -> tuple[OutlierDetector, list[OutlierEvent]]:
    events: list[OutlierEvent] = []
    detector = OutlierDetector(OutlierPolicy(**kw), on_event=events.append)
    detector.set_instances(INSTANCES, 0)
    return detector, events


def test_ejected_after_consecutive_5xx_and_readmitted_when_time_is_up() -> None:
    detector, events = _detector(consecutive_5xx=3, base_ejection_s=30)
    detector.record("a", SERVER, 1)
    detector.record("a", SERVER, 2)
    assert not detector.is_ejected("a", 2)
    event = detector.record("a", SERVER, 3)
    assert event == OutlierEvent("a", EventKind.EJECTED, 3, "consecutive 5xx", 33, 1)
    assert detector.ejected(10) == {"a"}
    assert detector.is_ejected("a", 32.9)
    assert not detector.is_ejected("a", 33)
    assert events[-1].kind is EventKind.READMITTED and events[-1].at == 33


def test_a_success_or_client_error_resets_the_count() -> None:
    detector, _ = _detector(consecutive_5xx=3)
    for outcome in [SERVER, SERVER, OK, SERVER, SERVER]:
        detector.record("a", outcome, 1)
    assert not detector.is_ejected("a", 1)


def test_gateway_errors_have_their_own_threshold() -> None:
    detector, _ = _detector(consecutive_5xx=10, consecutive_gateway_failures=2)
    detector.record("a", GATEWAY, 1)
    event = detector.record("a", GATEWAY, 2)
    assert event is not None and event.reason == "consecutive gateway failures"
    # a 500 between gateway errors breaks the gateway run but not the 5xx run
    detector.record("b", GATEWAY, 3)
    detector.record("b", SERVER, 3)
    assert detector.record("b", GATEWAY, 3) is None


def test_ejection_time_grows_with_repeats_and_is_capped() -> None:
    detector, _ = _detector(consecutive_5xx=1, base_ejection_s=10, max_ejection_s=25)
    durations = []
    now = 0.0
    for _ in range(4):
        event = detector.record("a", SERVER, now)
        assert event is not None
        durations.append(event.until - event.at)
        now = event.until  # fails again the moment it is readmitted
    assert durations == [10, 20, 25, 25]


def test_the_count_decays_while_the_instance_behaves() -> None:
    detector, _ = _detector(consecutive_5xx=1, base_ejection_s=10, max_ejection_s=100)
    first = detector.record("a", SERVER, 0)
    second = detector.record("a", SERVER, 10)
    assert first is not None and second is not None and second.times_ejected == 2
    # readmitted at 30; 25 healthy seconds take two off the count
    third = detector.record("a", SERVER, 55)
    assert third is not None and third.times_ejected == 1
    assert third.until - third.at == 10


def test_never_ejects_more_than_the_maximum_share() -> None:
    detector, _ = _detector(consecutive_5xx=1, max_ejected_share=0.5)
    for name in INSTANCES:
        detector.record(name, SERVER, 1)
    assert len(detector.ejected(1)) == 2
    assert detector.skipped == 2


def test_a_lone_instance_is_never_ejected_below_a_share_of_one() -> None:
    detector = OutlierDetector(OutlierPolicy(consecutive_5xx=1, max_ejected_share=0.9))
    detector.set_instances(["only"], 0)
    assert detector.record("only", SERVER, 1) is None


def test_instances_leaving_readmit_the_earliest_to_expire() -> None:
    detector, _ = _detector(consecutive_5xx=1, max_ejected_share=0.5, base_ejection_s=30)
    detector.record("a", SERVER, 1)
    detector.record("b", SERVER, 2)
    detector.set_instances(["a", "b", "c"], 3)  # 3 instances: at most 1 ejected
    assert detector.ejected(3) == {"b"}
    assert detector.instances == {"a", "b", "c"}


def test_outcomes_for_unknown_or_ejected_instances_are_ignored() -> None:
    detector, _ = _detector(consecutive_5xx=2)
    assert detector.record("gone", SERVER, 1) is None
    detector.record("a", SERVER, 1)
    detector.record("a", SERVER, 1)
    assert detector.record("a", SERVER, 2) is None  # in flight when it was ejected
    assert detector.times_ejected("a") == 1


@given(st.integers(1, 50), st.integers(1, 50))
def test_ejection_duration_is_monotone_in_repeats_and_capped(n: int, m: int) -> None:
    policy = OutlierPolicy(base_ejection_s=7, max_ejection_s=100)
    lo, hi = sorted((n, m))
    assert ejection_duration(policy, lo) <= ejection_duration(policy, hi) <= 100
    assert ejection_duration(policy, 1) == 7


class OutlierMachine(RuleBasedStateMachine):
    @initialize(share=st.sampled_from([0.0, 0.25, 0.34, 0.5, 0.75, 1.0]), n=st.integers(1, 4))
    def setup(self, share: float, n: int) -> None:
        self.policy = OutlierPolicy(
            consecutive_5xx=2,
            consecutive_gateway_failures=1,
            base_ejection_s=5,
            max_ejection_s=17,
            max_ejected_share=share,
        )
        self.detector = OutlierDetector(self.policy, on_event=self._seen)
        self.now = 0.0
        self.detector.set_instances(INSTANCES[:n], self.now)
        self.last_duration: dict[str, float] = {}
        self.readmitted_at: dict[str, float] = {}

    def _seen(self, event: OutlierEvent) -> None:
        if event.kind is EventKind.READMITTED:
            self.readmitted_at[event.instance] = event.at
            return
        duration = event.until - event.at
        assert duration <= self.policy.max_ejection_s
        previous = self.last_duration.get(event.instance)
        readmitted = self.readmitted_at.get(event.instance)
        # Ejected again before a full base period of good behaviour: never shorter.
        if (
            previous is not None
            and readmitted is not None
            and event.at - readmitted < self.policy.base_ejection_s
        ):
            assert duration >= previous
        self.last_duration[event.instance] = duration

    @rule(dt=st.floats(0, 8, allow_nan=False))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(name=st.sampled_from(INSTANCES), outcome=st.sampled_from(list(CallOutcome)))
    def call(self, name: str, outcome: CallOutcome) -> None:
        self.detector.record(name, outcome, self.now)

    @rule(names=st.sets(st.sampled_from(INSTANCES), min_size=1))
    def membership(self, names: set[str]) -> None:
        self.detector.set_instances(names, self.now)
        for gone in set(self.last_duration) - names:  # a departed instance is forgotten
            self.last_duration.pop(gone)
            self.readmitted_at.pop(gone, None)

    @invariant()
    def ejected_share_never_exceeds_the_maximum(self) -> None:
        ejected = self.detector.ejected(self.now)
        total = len(self.detector.instances)
        assert ejected <= self.detector.instances
        assert len(ejected) <= self.policy.max_ejected_share * total + 1e-9


TestOutlierMachine = OutlierMachine.TestCase
TestOutlierMachine.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
