"""The hybrid logical clock, its wire encoding and the skew self-check (DESIGN §3)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.errors import ClockSkewError, InvalidArgumentError
from meridian.core.hlc import (
    MAX_LOGICAL,
    MAX_WALL_MS,
    HlcTimestamp,
    HybridLogicalClock,
    SkewMonitor,
    SystemClock,
)
from meridian.testing.clock import ManualClock

timestamps = st.builds(HlcTimestamp, st.integers(0, MAX_WALL_MS), st.integers(0, MAX_LOGICAL))


class _BrokenClock:
    """A real Clock whose readings are out of range (a misconfigured host)."""

    def __init__(self, reading: int) -> None:
        self.reading = reading

    def now_ms(self) -> int:
        return self.reading


# --- timestamps -------------------------------------------------------------


@given(timestamps)
def test_int_and_hex_encodings_round_trip(ts: HlcTimestamp) -> None:
    assert HlcTimestamp.from_int(ts.to_int()) == ts
    encoded = ts.encode()
    assert len(encoded) == 16
    assert encoded == encoded.lower()
    assert HlcTimestamp.decode(encoded) == ts


@given(timestamps, timestamps)
def test_encoding_preserves_order(a: HlcTimestamp, b: HlcTimestamp) -> None:
    assert (a < b) == (a.encode() < b.encode()) == (a.to_int() < b.to_int())
    assert (a == b) == (a.encode() == b.encode())


def test_layout_is_48_bit_wall_then_16_bit_logical() -> None:
    ts = HlcTimestamp(wall_ms=0x0123456789AB, logical=0xCDEF)
    assert ts.to_int() == 0x0123456789ABCDEF
    assert ts.encode() == "0123456789abcdef"
    assert HlcTimestamp(1, 0) > HlcTimestamp(0, MAX_LOGICAL)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0123456789abcde",  # 15 digits
        "0123456789abcdef0",  # 17 digits
        "0123456789ABCDEF",  # not canonical: upper case
        "0123456789abcdeg",
        "0x23456789abcdef",
        " 123456789abcdef",
        "0123456789abcdef\n",
        "-123456789abcdef",
        "".join(chr(0xFF10 + d % 10) for d in range(16)),  # full-width digits: int() takes them
    ],
)
def test_decode_rejects_non_canonical_text(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="16 lowercase hex digits") as err:
        HlcTimestamp.decode(text)
    assert err.value.field == "hlc"


@pytest.mark.parametrize("value", [b"0123456789abcdef", 123, None])
def test_decode_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidArgumentError):
        HlcTimestamp.decode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("wall", "logical", "field"),
    [
        (-1, 0, "wall_ms"),
        (MAX_WALL_MS + 1, 0, "wall_ms"),
        (0, -1, "logical"),
        (0, MAX_LOGICAL + 1, "logical"),
        (1.5, 0, "wall_ms"),
        (True, 0, "wall_ms"),
    ],
)
def test_out_of_range_parts_are_rejected(wall: int, logical: int, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        HlcTimestamp(wall, logical)
    assert err.value.field == field


@pytest.mark.parametrize("value", [-1, 1 << 64, True])
def test_from_int_rejects_values_outside_64_bits(value: int) -> None:
    with pytest.raises(InvalidArgumentError, match="unsigned 64-bit"):
        HlcTimestamp.from_int(value)


# --- now() ------------------------------------------------------------------


def test_now_follows_the_physical_clock_when_it_advances() -> None:
    clock = ManualClock(1_000)
    hlc = HybridLogicalClock(clock)
    assert hlc.now() == HlcTimestamp(1_000, 0)
    clock.advance(5)
    assert hlc.now() == HlcTimestamp(1_005, 0)


def test_now_stays_monotonic_when_the_clock_steps_backwards() -> None:
    clock = ManualClock(10_000)
    hlc = HybridLogicalClock(clock)
    first = hlc.now()
    clock.set(9_000)  # NTP step back by a second
    assert hlc.now() == HlcTimestamp(10_000, 1)
    assert hlc.now() == HlcTimestamp(10_000, 2)
    clock.set(10_001)  # physical time catches up: logical resets
    assert hlc.now() == HlcTimestamp(10_001, 0)
    assert first < hlc.last


@given(st.lists(st.integers(0, 5_000), min_size=1, max_size=200))
def test_now_is_strictly_increasing_and_never_behind_physical_time(
    readings: list[int],
) -> None:
    clock = ManualClock()
    hlc = HybridLogicalClock(clock)
    previous = HlcTimestamp(0, 0)
    for reading in readings:
        clock.set(reading)
        ts = hlc.now()
        assert ts > previous
        assert ts.wall_ms >= reading
        previous = ts


def test_logical_overflow_borrows_the_next_millisecond() -> None:
    clock = ManualClock(1_000)
    hlc = HybridLogicalClock(clock)
    issued = [hlc.now() for _ in range(MAX_LOGICAL + 2)]  # the clock never moves
    assert issued[-2] == HlcTimestamp(1_000, MAX_LOGICAL)
    assert issued[-1] == HlcTimestamp(1_001, 0)
    assert all(a < b for a, b in itertools.pairwise(issued))


def test_exhausting_the_48_bit_range_is_an_error_not_a_wraparound() -> None:
    clock = ManualClock(MAX_WALL_MS)
    hlc = HybridLogicalClock(clock)
    assert hlc.update(HlcTimestamp(MAX_WALL_MS, MAX_LOGICAL - 2)) == HlcTimestamp(
        MAX_WALL_MS, MAX_LOGICAL - 1
    )
    assert hlc.now() == HlcTimestamp(MAX_WALL_MS, MAX_LOGICAL)
    with pytest.raises(ClockSkewError, match="48-bit"):
        hlc.now()
    assert hlc.last == HlcTimestamp(MAX_WALL_MS, MAX_LOGICAL)


@pytest.mark.parametrize("reading", [-1, MAX_WALL_MS + 1])
def test_a_physical_reading_outside_48_bits_is_refused(reading: int) -> None:
    hlc = HybridLogicalClock(_BrokenClock(reading))
    with pytest.raises(ClockSkewError, match="physical clock reading"):
        hlc.now()
    assert hlc.last == HlcTimestamp(0, 0)


def test_system_clock_reads_unix_milliseconds() -> None:
    hlc = HybridLogicalClock(SystemClock())
    ts = hlc.now()
    assert ts.wall_ms > 1_577_836_800_000  # after 2020-01-01
    assert hlc.now() > ts


@pytest.mark.parametrize("bad", [0, -5, True, 2.5])
def test_max_offset_must_be_a_positive_integer(bad: int) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        HybridLogicalClock(ManualClock(), max_offset_ms=bad)
    assert err.value.field == "max_offset_ms"
    with pytest.raises(InvalidArgumentError):
        SkewMonitor(max_offset_ms=bad)


# --- update() -----------------------------------------------------------------


def test_update_with_a_remote_ahead_within_max_offset_is_accepted() -> None:
    clock = ManualClock(1_000)
    hlc = HybridLogicalClock(clock, max_offset_ms=250)
    hlc.now()
    assert hlc.update(HlcTimestamp(1_250, 7)) == HlcTimestamp(1_250, 8)
    assert hlc.rejected_count == 0
    # Later local events stay after the remote one even though physical time lags.
    assert hlc.now() == HlcTimestamp(1_250, 9)


def test_update_with_a_remote_beyond_max_offset_is_rejected_and_counted() -> None:
    clock = ManualClock(1_000)
    hlc = HybridLogicalClock(clock, max_offset_ms=250)
    before = hlc.now()
    with pytest.raises(ClockSkewError) as err:
        hlc.update(HlcTimestamp(1_251, 0))
    assert "251 ms ahead" in err.value.message
    assert "limit (max_offset) is 250 ms" in err.value.message
    assert err.value.code == "CLOCK_SKEW"
    assert hlc.rejected_count == 1
    assert hlc.last == before  # the runaway peer did not drag this clock forward
    with pytest.raises(ClockSkewError):
        hlc.update(HlcTimestamp(999_999, 0))
    assert hlc.rejected_count == 2
    assert hlc.now() == HlcTimestamp(1_000, 1)


def test_update_uses_the_latest_physical_time() -> None:
    clock = ManualClock(1_000)
    hlc = HybridLogicalClock(clock)
    hlc.now()
    clock.set(2_000)
    # Local physical time is ahead of both: the remote's logical part is dropped.
    assert hlc.update(HlcTimestamp(1_500, 40)) == HlcTimestamp(2_000, 0)


def test_update_with_equal_wall_takes_the_larger_logical_plus_one() -> None:
    clock = ManualClock(1_000)
    hlc = HybridLogicalClock(clock)
    hlc.update(HlcTimestamp(1_100, 3))
    assert hlc.update(HlcTimestamp(1_100, 9)) == HlcTimestamp(1_100, 10)
    assert hlc.update(HlcTimestamp(1_100, 2)) == HlcTimestamp(1_100, 11)
    assert hlc.update(HlcTimestamp(900, 50)) == HlcTimestamp(1_100, 12)


def test_update_overflow_borrows_the_next_millisecond() -> None:
    hlc = HybridLogicalClock(ManualClock(1_000))
    assert hlc.update(HlcTimestamp(1_000, MAX_LOGICAL)) == HlcTimestamp(1_001, 0)


@given(st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 2_600), st.integers(0, 3))))
def test_update_result_follows_everything_seen(events: list[tuple[int, int, int]]) -> None:
    clock = ManualClock()
    hlc = HybridLogicalClock(clock, max_offset_ms=250)
    last = HlcTimestamp(0, 0)
    rejected = 0
    for physical, remote_wall, remote_logical in events:
        clock.set(physical)
        remote = HlcTimestamp(remote_wall, remote_logical)
        if remote_wall - physical > 250:
            with pytest.raises(ClockSkewError):
                hlc.update(remote)
            rejected += 1
            assert hlc.last == last
            continue
        ts = hlc.update(remote)
        assert ts > last
        assert ts > remote
        assert ts.wall_ms >= physical
        last = ts
    assert hlc.rejected_count == rejected


def test_update_rejects_non_timestamps() -> None:
    hlc = HybridLogicalClock(ManualClock())
    with pytest.raises(InvalidArgumentError):
        hlc.update(12345)  # type: ignore[arg-type]


# --- ManualClock ----------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(50)
    assert clock.now_ms() == clock.now_ms() == 50
    assert clock.advance(10) == 60
    clock.set(5)
    assert clock.now_ms() == 5
    with pytest.raises(InvalidArgumentError):
        clock.advance(-1)
    with pytest.raises(InvalidArgumentError):
        clock.set(-1)
    with pytest.raises(InvalidArgumentError):
        clock.advance(MAX_WALL_MS)
    assert clock.now_ms() == 5


# --- SkewMonitor ------------------------------------------------------------------


def test_no_peers_means_no_skew_verdict() -> None:
    assert SkewMonitor(250).check() is None


def test_one_far_peer_of_three_is_that_peers_problem() -> None:
    monitor = SkewMonitor(250)
    monitor.observe("eu-west", 5)
    monitor.observe("ap-south", -12)
    monitor.observe("us-west", 900)
    assert monitor.check() is None


def test_far_from_the_majority_stops_clock_writes_and_says_why() -> None:
    monitor = SkewMonitor(250)
    monitor.observe("eu-west", 310)
    monitor.observe("ap-south", -290.5)
    monitor.observe("us-west", 3)
    reason = monitor.check()
    assert reason is not None
    assert "2 of 3 peers" in reason
    assert "200 ms" in reason and "250 ms" in reason
    assert "ap-south -290.5 ms" in reason and "eu-west +310 ms" in reason
    assert "us-west" not in reason
    assert reason == monitor.check()  # deterministic


def test_threshold_is_strictly_more_than_eight_tenths_of_max_offset() -> None:
    monitor = SkewMonitor(250)
    monitor.observe("a", 200)
    assert monitor.check() is None
    monitor.observe("a", -200.001)
    assert monitor.check() is not None


def test_a_tie_is_not_a_majority() -> None:
    monitor = SkewMonitor(100)
    monitor.observe("a", 500)
    monitor.observe("b", 0)
    assert monitor.check() is None
    monitor.forget("b")
    assert monitor.check() is not None  # now the only peer disagrees


def test_observe_replaces_and_forget_drops() -> None:
    monitor = SkewMonitor(250)
    monitor.observe("a", 1_000)
    monitor.observe("a", 1)
    assert monitor.offsets == {"a": 1}
    assert monitor.check() is None
    monitor.forget("a")
    monitor.forget("never-seen")
    assert monitor.offsets == {}


@pytest.mark.parametrize(
    ("peer", "offset", "field"),
    [
        ("", 1, "peer"),
        ("a", float("nan"), "offset_ms"),
        ("a", float("inf"), "offset_ms"),
        ("a", True, "offset_ms"),
        ("a", "5", "offset_ms"),
    ],
)
def test_observe_rejects_bad_input(peer: str, offset: float, field: str) -> None:
    monitor = SkewMonitor(250)
    with pytest.raises(InvalidArgumentError) as err:
        monitor.observe(peer, offset)
    assert err.value.field == field
    assert monitor.offsets == {}


def test_skew_majority_counts_configured_peers_not_just_those_heard_from() -> None:
    monitor = SkewMonitor(250, peers=2)
    monitor.observe("ap-south", 1_000)  # the only peer heard from so far is far off
    assert monitor.check() is None  # 1 of 2 configured is not a majority
    monitor.observe("eu-west", 990)
    reason = monitor.check()
    assert reason is not None
    assert "2 of 2 peers" in reason
