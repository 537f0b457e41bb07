"""The gateway's pure core: region health, round-trip averages, the region order, hints."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meridian.core.errors import InvalidArgumentError
from meridian.core.paths import DEFAULT_ALLOW, allow_violations, refusal
from meridian.gateway.model import (
    HINT_MAX_CHARS,
    NOT_CHECKED,
    HealthBoard,
    Transition,
    choose_regions,
    ewma,
    parse_hint,
)

HEADER = "Meridian-Region"
DEFAULT_WAN = {
    ("us-east", "eu-west"): 35.0,
    ("us-east", "ap-south"): 100.0,
    ("eu-west", "ap-south"): 65.0,
}


def wan(src: str, dst: str) -> float:
    return DEFAULT_WAN.get((src, dst)) or DEFAULT_WAN.get((dst, src)) or 0.0


ALL = ["us-east", "eu-west", "ap-south"]


# -- hints -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "hint"),
    [([], None), ([""], None), (["   "], None), (["eu-west"], "eu-west"),
     (["  EU-West "], "eu-west"), (["mars-1"], "mars-1"), (["a" * HINT_MAX_CHARS], "a" * 64)],
)  # fmt: skip
def test_hints_that_are_accepted(values: list[str], hint: str | None) -> None:
    assert parse_hint(values, HEADER) == hint


@pytest.mark.parametrize(
    ("values", "rule"),
    [(["a" * (HINT_MAX_CHARS + 1)], "at most 64"), (["eu west"], "region name"),
     (["eu_west"], "region name"), (["-eu"], "region name"), (["eu-wést"], "region name"),
     (["eu-west,us-east"], "region name"), (["eu-west", "us-east"], "at most once")],
)  # fmt: skip
def test_bad_hints_name_the_header_and_the_rule(values: list[str], rule: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_hint(values, HEADER)
    assert info.value.field == HEADER
    assert rule in info.value.message


@given(st.text(min_size=HINT_MAX_CHARS + 1, max_size=500))
def test_any_hint_past_the_limit_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_hint([raw], HEADER)
    assert info.value.field == HEADER


@given(st.text(max_size=HINT_MAX_CHARS))
def test_a_hint_is_none_a_region_name_or_rejected(raw: str) -> None:
    try:
        hint = parse_hint([raw], HEADER)
    except InvalidArgumentError as exc:
        assert exc.field == HEADER
        return
    if hint is not None:
        assert hint == raw.strip().lower()
        assert hint[0].isalnum() and all(c.isalnum() or c == "-" for c in hint)
        assert hint.isascii()


# -- round trip -------------------------------------------------------------------


def test_first_sample_is_the_average() -> None:
    assert ewma(None, 12.5) == 12.5
    assert ewma(10.0, 20.0, 0.5) == 15.0


@given(
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0.01, 1.0),
)
def test_the_average_moves_towards_the_sample_and_not_past_it(
    previous: float, sample: float, alpha: float
) -> None:
    avg = ewma(previous, sample, alpha)
    assert min(previous, sample) - 1e-6 <= avg <= max(previous, sample) + 1e-6


# -- order --------------------------------------------------------------------------


def test_hinted_region_first_then_nearest_to_it() -> None:
    rtt = {r: 1.0 for r in ALL}
    assert choose_regions("eu-west", ALL, latency_ms=wan, rtt_ms=rtt) == [
        "eu-west",
        "us-east",
        "ap-south",
    ]
    assert choose_regions("ap-south", ALL, latency_ms=wan, rtt_ms=rtt) == [
        "ap-south",
        "eu-west",
        "us-east",
    ]


def test_a_down_hinted_region_fails_over_to_its_nearest() -> None:
    rtt = {r: 1.0 for r in ALL}
    up = ["us-east", "ap-south"]
    assert choose_regions("eu-west", up, latency_ms=wan, rtt_ms=rtt) == ["us-east", "ap-south"]


def test_without_a_known_hint_by_measured_round_trip() -> None:
    rtt: dict[str, float | None] = {"us-east": 3.0, "eu-west": 1.0, "ap-south": None}
    for hint in (None, "mars-1"):
        assert choose_regions(hint, ALL, latency_ms=wan, rtt_ms=rtt) == [
            "eu-west",
            "us-east",
            "ap-south",
        ]


def test_nothing_up_nothing_chosen() -> None:
    assert choose_regions("eu-west", [], latency_ms=wan, rtt_ms={r: 1.0 for r in ALL}) == []


#: Configured regions, those up, one-way latencies, measured round trips, the hint.
Scenario = tuple[
    list[str], list[str], dict[tuple[str, str], float], dict[str, float | None], str | None
]

REGION_NAMES = st.lists(
    st.from_regex(r"[a-z][a-z0-9-]{0,6}[a-z0-9]", fullmatch=True),
    min_size=1,
    max_size=6,
    unique=True,
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    regions = draw(REGION_NAMES)
    up = [r for r in regions if draw(st.booleans())]
    latency = {
        (a, b): draw(st.floats(0, 500, allow_nan=False)) for a in regions for b in regions if a != b
    }
    rtt = {r: draw(st.none() | st.floats(0, 500, allow_nan=False)) for r in regions}
    hint = draw(st.none() | st.sampled_from(regions) | st.just("nowhere"))
    return regions, up, latency, rtt, hint


@given(scenarios())
def test_order_properties(
    scenario: Scenario,
) -> None:
    _regions, up, latency, rtt, hint = scenario

    def lat(a: str, b: str) -> float:
        return latency.get((a, b), 0.0)

    order = choose_regions(hint, up, latency_ms=lat, rtt_ms=rtt)
    # Exactly the regions that are up, each once.
    assert sorted(order) == sorted(up)
    if hint in up:
        assert order[0] == hint
    if hint is not None and hint in rtt:
        rest = [r for r in order if r != hint]
        round_trips = [lat(hint, r) + lat(r, hint) for r in rest]
        assert round_trips == sorted(round_trips)
    else:
        measured = [math.inf if (v := rtt[r]) is None else v for r in order]
        assert measured == sorted(measured)


@given(REGION_NAMES.flatmap(lambda names: st.tuples(st.just(names), st.permutations(names))))
def test_without_a_hint_the_order_ignores_input_order(
    drawn: tuple[list[str], list[str]],
) -> None:
    names, by_rtt = drawn
    # Distinct round trips: the measured round trip alone decides.
    rtt: dict[str, float | None] = {r: float(i) for i, r in enumerate(by_rtt)}
    for up in (names, list(reversed(names))):
        assert choose_regions(None, up, latency_ms=wan, rtt_ms=rtt) == by_rtt


# -- health -------------------------------------------------------------------------


def test_a_region_starts_down_until_checked() -> None:
    board = HealthBoard(ALL, unhealthy_after=2, now=0.0)
    assert board.up() == []
    assert board.get("us-east").last_error == NOT_CHECKED
    assert board.choose("us-east", wan) == []


def test_one_success_up_and_unhealthy_after_failures_down() -> None:
    board = HealthBoard(ALL, unhealthy_after=2, now=0.0)
    assert board.record_success("eu-west", 4.0, 1.0) == Transition(
        "eu-west", True, 1.0, "health check succeeded"
    )
    assert board.record_success("eu-west", 8.0, 1.5) is None
    assert board.get("eu-west").rtt_ms == pytest.approx(4.0 + 0.3 * 4.0)
    assert board.record_failure("eu-west", "timed out", 2.0) is None
    assert board.get("eu-west").up
    t = board.record_failure("eu-west", "HTTP 503", 2.5)
    assert t is not None and not t.up and "2 failed checks in a row: HTTP 503" in t.reason
    h = board.get("eu-west")
    assert (h.up, h.consecutive_failures, h.last_error, h.since) == (False, 2, "HTTP 503", 2.5)
    assert board.record_success("eu-west", 4.0, 3.0) is not None
    assert board.get("eu-west").consecutive_failures == 0


def test_a_success_in_between_resets_the_count() -> None:
    board = HealthBoard(ALL, unhealthy_after=2, now=0.0)
    board.record_success("us-east", 1.0, 1.0)
    board.record_failure("us-east", "timed out", 2.0)
    board.record_success("us-east", 1.0, 3.0)
    board.record_failure("us-east", "timed out", 4.0)
    assert board.get("us-east").up


def test_unreachable_is_down_at_once() -> None:
    board = HealthBoard(ALL, unhealthy_after=3, now=0.0)
    board.record_success("eu-west", 1.0, 1.0)
    t = board.record_unreachable("eu-west", "connection refused", 2.0)
    assert t == Transition("eu-west", False, 2.0, "unreachable: connection refused")
    assert board.up() == []


def test_a_result_older_than_the_latest_transition_is_ignored() -> None:
    board = HealthBoard(ALL, unhealthy_after=2, now=0.0)
    board.record_success("eu-west", 1.0, 1.0)
    board.record_unreachable("eu-west", "connection refused", 2.0)
    # A health check sent at 1.9, just before the region died, answers late.
    assert board.record_success("eu-west", 1.0, 2.1, started=1.9) is None
    assert not board.get("eu-west").up
    assert board.record_success("eu-west", 1.0, 2.6, started=2.5) is not None


def test_bad_board_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unhealthy_after"):
        HealthBoard(ALL, unhealthy_after=0, now=0.0)
    with pytest.raises(ValueError, match="rtt_alpha"):
        HealthBoard(ALL, unhealthy_after=1, now=0.0, rtt_alpha=0.0)


class HealthMachine(RuleBasedStateMachine):
    """Any sequence of results: the board agrees with a plain model of the rules."""

    THRESHOLD = 3

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.board = HealthBoard(["r"], unhealthy_after=self.THRESHOLD, now=self.now)
        self.model_up = False
        self.model_failures = 0
        self.transitions: list[Transition] = []

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    def _note(self, t: Transition | None, expect_up: bool, changed: bool) -> None:
        assert (t is not None) == changed
        if t is not None:
            assert t.up == expect_up
            self.transitions.append(t)

    @rule(rtt=st.floats(0, 1000, allow_nan=False))
    def success(self, rtt: float) -> None:
        t = self.board.record_success("r", rtt, self._tick())
        self._note(t, True, not self.model_up)
        self.model_up, self.model_failures = True, 0

    @rule()
    def failure(self) -> None:
        t = self.board.record_failure("r", "timed out", self._tick())
        self.model_failures += 1
        goes_down = self.model_up and self.model_failures >= self.THRESHOLD
        self._note(t, False, goes_down)
        self.model_up = self.model_up and not goes_down

    @rule()
    def unreachable(self) -> None:
        t = self.board.record_unreachable("r", "connection refused", self._tick())
        self.model_failures += 1
        self._note(t, False, self.model_up)
        self.model_up = False

    @precondition(lambda self: self.now > 0)
    @rule()
    def stale_success(self) -> None:
        # Started before the latest transition: changes nothing.
        before = self.board.get("r")
        self.board.record_success("r", 1.0, self._tick(), started=before.since - 0.5)
        assert self.board.get("r") == before

    @invariant()
    def agrees_with_the_model(self) -> None:
        h = self.board.get("r")
        assert h.up == self.model_up
        assert h.consecutive_failures == self.model_failures
        assert self.board.up() == (["r"] if self.model_up else [])

    @invariant()
    def transitions_alternate(self) -> None:
        ups = [t.up for t in self.transitions]
        assert all(a != b for a, b in itertools.pairwise(ups))
        if ups:
            assert ups[0] is True  # a region starts down


TestHealthMachine = HealthMachine.TestCase


def test_with_no_region_up_every_region_that_ever_answered_is_offered() -> None:
    # A JetStream meta-leader election makes every agent's health check fail at
    # once; rather than refuse everything, the gateway tries the regions anyway.
    board = HealthBoard(ALL, unhealthy_after=1, now=0.0)
    board.record_success("us-east", 4.0, 1.0)
    board.record_success("eu-west", 40.0, 1.0)
    board.record_failure("us-east", "503", 2.0)
    board.record_failure("eu-west", "503", 2.0)
    assert board.up() == []
    assert board.choose("eu-west", wan) == ["eu-west", "us-east"]  # ap-south never answered
    board.record_success("us-east", 4.0, 3.0)
    assert board.choose("eu-west", wan) == ["us-east"]  # one is up again: only it


# -- the allow-list (meridian.core.paths) ----------------------------------------------


@pytest.mark.parametrize(
    "patterns",
    [
        "/v1/invoke/*",
        ["v1/health"],
        ["/v1/Invoke/*"],
        ["/v1/invoke/*/x"],
        ["/v1/../state/*"],
        ["/v1/state?x=1"],
        ["/v1/%73tate/*"],
        ["/v1/health/"],
        [3],
        ["/" + "a" * 300],
        ["/v1/health"] * 65,
    ],
)
def test_a_bad_allow_list_is_refused_naming_the_entry(patterns: object) -> None:
    violations = allow_violations(patterns, "gateway.allow")
    assert violations
    assert all(v.field.startswith("gateway.allow") for v in violations)


def test_good_allow_lists_pass() -> None:
    assert allow_violations(list(DEFAULT_ALLOW), "gateway.allow") == []
    assert allow_violations(["/*", "/v1/state/*", "/metrics", "/v1/a_b-c"], "x") == []


@pytest.mark.parametrize(
    ("raw_path", "allowed"),
    [
        ("/v1/invoke/orders/orders", True),
        ("/v1/invoke/", True),
        ("/v1/invoke", False),
        ("/v1/health", True),
        ("/v1/health/x", False),
        ("/v1/healthz", False),
        ("/v1/state/put", False),
        ("/v1/invoke/x/../../state/put", False),
        ("/v1/invoke/x/%2E%2e/state", False),
        ("/v1/invoke/x%2fy", True),
        ("/v1/invoke/x/..%2f..%2fstate", False),
        ("/v1/invoke/x/..%5C..%5Cstate", False),
        ("/v1/invoke/x//y", False),
        ("v1/health", False),
    ],
)
def test_refusal_follows_the_default_list(raw_path: str, allowed: bool) -> None:
    assert (refusal(raw_path, DEFAULT_ALLOW) is None) is allowed


def test_everything_passes_slash_star_but_dot_segments() -> None:
    assert refusal("/anything/at/all", ("/*",)) is None
    assert refusal("/a/../b", ("/*",)) is not None
