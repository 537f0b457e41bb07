"""Pure tests of the WAN emulator's latency matrix, partition table and delivery schedule."""

from __future__ import annotations

import random

import pytest

from meridian.core.errors import InvalidArgumentError
from meridian.sandbox.wan import (
    DeliverySchedule,
    LatencyMatrix,
    PartitionTable,
    ProxySpec,
    WanArgumentError,
    WanEmulator,
)

REGIONS = ("us-east", "eu-west", "ap-south")


def make_matrix() -> LatencyMatrix:
    return LatencyMatrix(
        REGIONS,
        {("us-east", "eu-west"): 40, ("eu-west", "us-east"): 45, ("us-east", "ap-south"): 110},
        jitter_ms=2.0,
    )


# -- LatencyMatrix ---------------------------------------------------------------


def test_given_directions_are_kept_and_missing_reverse_copies_the_given_one() -> None:
    m = make_matrix()
    assert m.latency("us-east", "eu-west") == 40
    assert m.latency("eu-west", "us-east") == 45
    assert m.latency("ap-south", "us-east") == 110
    assert m.latency("eu-west", "ap-south") == 0  # never given: no added delay
    assert m.jitter("ap-south", "eu-west") == 2.0


def test_jitter_mapping_defaults_reverse_and_other_pairs_to_zero() -> None:
    m = LatencyMatrix(REGIONS, {}, {("us-east", "eu-west"): 3})
    assert m.jitter("eu-west", "us-east") == 3
    assert m.jitter("us-east", "ap-south") == 0


def test_set_symmetric_and_one_way() -> None:
    m = make_matrix()
    m.set("us-east", "eu-west", 10, 1)
    assert (m.latency("us-east", "eu-west"), m.latency("eu-west", "us-east")) == (10, 10)
    assert m.jitter("eu-west", "us-east") == 1
    m.set("eu-west", "us-east", 70, one_way=True)
    assert (m.latency("us-east", "eu-west"), m.latency("eu-west", "us-east")) == (10, 70)
    assert m.jitter("eu-west", "us-east") == 1  # jitter None keeps it


def test_as_dict_lists_every_ordered_pair_with_blocked_flag() -> None:
    m = make_matrix()
    table = PartitionTable(REGIONS)
    table.partition("ap-south", direction="inbound")
    d = m.as_dict(table)
    assert d["regions"] == list(REGIONS)
    links = {(link["src"], link["dst"]): link for link in d["links"]}  # type: ignore[attr-defined]
    assert len(links) == 6
    assert links[("us-east", "eu-west")] == {
        "src": "us-east",
        "dst": "eu-west",
        "latency_ms": 40.0,
        "jitter_ms": 2.0,
        "blocked": False,
    }
    assert links[("eu-west", "ap-south")]["blocked"] is True
    assert links[("ap-south", "eu-west")]["blocked"] is False


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"a": "mars", "b": "eu-west", "latency_ms": 1}, "a", "unknown region 'mars'"),
        ({"a": "us-east", "b": "us-east", "latency_ms": 1}, "b", "must differ"),
        ({"a": "us-east", "b": "eu-west", "latency_ms": -1}, "latency_ms", ">= 0"),
        ({"a": "us-east", "b": "eu-west", "latency_ms": 60_001}, "latency_ms", "<= 60000"),
        ({"a": "us-east", "b": "eu-west", "latency_ms": float("nan")}, "latency_ms", ">= 0"),
        ({"a": "us-east", "b": "eu-west", "latency_ms": "5"}, "latency_ms", "must be a number"),
        ({"a": "us-east", "b": "eu-west", "latency_ms": True}, "latency_ms", "must be a number"),
        (
            {"a": "us-east", "b": "eu-west", "latency_ms": 5, "jitter_ms": 10_001},
            "jitter_ms",
            "<= 10000",
        ),
        (
            {"a": "us-east", "b": "eu-west", "latency_ms": 5, "jitter_ms": -0.5},
            "jitter_ms",
            ">= 0",
        ),
        (
            {"a": "us-east", "b": "eu-west", "latency_ms": 5, "one_way": "yes"},
            "one_way",
            "boolean",
        ),
    ],
)
def test_set_rejects_bad_arguments_naming_field_and_changes_nothing(
    kwargs: dict[str, object], field: str, rule: str
) -> None:
    m = make_matrix()
    before = m.as_dict()
    with pytest.raises(WanArgumentError) as info:
        m.set(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert rule in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, InvalidArgumentError)
    assert m.as_dict() == before


@pytest.mark.parametrize(
    ("regions", "latency", "jitter", "field"),
    [
        (REGIONS, {("us-east", "mars"): 5}, 0.0, "latency_ms"),
        (REGIONS, {("us-east", "us-east"): 5}, 0.0, "latency_ms"),
        (REGIONS, {("us-east", "eu-west"): -5}, 0.0, "latency_ms[us-east->eu-west]"),
        (REGIONS, {"us-east": 5}, 0.0, "latency_ms"),
        (REGIONS, {}, -1.0, "jitter_ms"),
        (REGIONS, {}, {("eu-west", "ap-south"): 20_000}, "jitter_ms[eu-west->ap-south]"),
        (("us-east", "us-east"), {}, 0.0, "regions[1]"),
        ((), {}, 0.0, "regions"),
        ("us-east", {}, 0.0, "regions"),
    ],
)
def test_constructor_rejects_bad_arguments(
    regions: tuple[str, ...], latency: dict[object, float], jitter: object, field: str
) -> None:
    with pytest.raises(WanArgumentError) as info:
        LatencyMatrix(regions, latency, jitter)  # type: ignore[arg-type]
    assert info.value.field == field


def test_unknown_region_error_names_the_region() -> None:
    with pytest.raises(ValueError, match="unknown region 'mars'"):
        LatencyMatrix(REGIONS, {("mars", "us-east"): 5})
    with pytest.raises(ValueError, match="unknown region 'mars'"):
        make_matrix().latency("mars", "us-east")


# -- PartitionTable --------------------------------------------------------------


def blocked_pairs(t: PartitionTable) -> set[tuple[str, str]]:
    return {(a, b) for a in REGIONS for b in REGIONS if a != b and t.blocked(a, b)}


def test_partition_both_from_everyone() -> None:
    t = PartitionTable(REGIONS)
    t.partition("ap-south")
    assert blocked_pairs(t) == {
        ("ap-south", "us-east"),
        ("ap-south", "eu-west"),
        ("us-east", "ap-south"),
        ("eu-west", "ap-south"),
    }


def test_partition_outbound_and_inbound_with_peers() -> None:
    t = PartitionTable(REGIONS)
    t.partition("us-east", peers=["eu-west"], direction="outbound")
    assert blocked_pairs(t) == {("us-east", "eu-west")}
    t.partition("ap-south", peers=["eu-west"], direction="inbound")
    assert blocked_pairs(t) == {("us-east", "eu-west"), ("eu-west", "ap-south")}


def test_heal_one_region_leaves_others_and_heal_all_clears() -> None:
    t = PartitionTable(REGIONS)
    t.partition("us-east", peers=["eu-west"], direction="outbound")
    t.partition("ap-south", peers=["eu-west"])
    t.heal("ap-south")
    assert blocked_pairs(t) == {("us-east", "eu-west")}
    t.partition("ap-south")
    t.heal()
    assert blocked_pairs(t) == set()
    assert t.as_list() == []


@pytest.mark.parametrize(
    ("region", "peers", "direction", "field"),
    [
        ("mars", None, "both", "region"),
        ("us-east", ["mars"], "both", "peers[0]"),
        ("us-east", ["eu-west", "us-east"], "both", "peers[1]"),
        ("us-east", [], "both", "peers"),
        ("us-east", "eu-west", "both", "peers"),
        ("us-east", None, "sideways", "direction"),
        (7, None, "both", "region"),
    ],
)
def test_partition_rejects_bad_arguments_and_changes_nothing(
    region: object, peers: object, direction: object, field: str
) -> None:
    t = PartitionTable(REGIONS)
    t.partition("eu-west", peers=["ap-south"], direction="outbound")
    with pytest.raises(WanArgumentError) as info:
        t.partition(region, peers=peers, direction=direction)  # type: ignore[arg-type]
    assert info.value.field == field
    assert blocked_pairs(t) == {("eu-west", "ap-south")}


def test_heal_unknown_region_is_rejected() -> None:
    t = PartitionTable(REGIONS)
    t.partition("us-east")
    with pytest.raises(WanArgumentError, match="region: unknown region 'mars'"):
        t.heal("mars")
    assert len(blocked_pairs(t)) == 4


# -- DeliverySchedule ------------------------------------------------------------


def test_schedule_without_jitter_is_arrival_plus_latency() -> None:
    s = DeliverySchedule(random.Random(1))
    assert s.next(10.0, 35, 0) == pytest.approx(10.035)
    assert s.next(10.5, 35, 0) == pytest.approx(10.535)


def test_schedule_is_monotonic_under_heavy_jitter_and_stays_within_bounds() -> None:
    rng = random.Random(7)
    s = DeliverySchedule(rng)
    arrivals = [i * 0.001 for i in range(2000)]  # a chunk per ms, jitter ±15 ms
    dues = [s.next(t, 20, 15) for t in arrivals]
    assert dues == sorted(dues)
    for t, due in zip(arrivals, dues, strict=True):
        assert due >= t + 0.005 - 1e-9
    # Monotonicity actually did work: unclamped, many chunks would overtake.
    raw = random.Random(7)
    unclamped = [t + (20 + raw.uniform(-15, 15)) / 1000 for t in arrivals]
    assert unclamped != sorted(unclamped)


def test_schedule_clamps_negative_delay_at_zero() -> None:
    s = DeliverySchedule(random.Random(3))
    assert all(s.next(float(i), 1, 50) >= i for i in range(200))


# -- WanEmulator construction (no sockets) ---------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (ProxySpec("p", "mars", "eu-west", 0, "127.0.0.1", 4222), "proxies[0].src"),
        (ProxySpec("p", "us-east", "us-east", 0, "127.0.0.1", 4222), "proxies[0].dst"),
        (ProxySpec("p", "us-east", "eu-west", 70000, "127.0.0.1", 4222), "proxies[0].listen_port"),
        (ProxySpec("p", "us-east", "eu-west", 0, "127.0.0.1", 0), "proxies[0].upstream_port"),
    ],
)
def test_emulator_rejects_bad_proxy_specs(spec: ProxySpec, field: str) -> None:
    with pytest.raises(WanArgumentError) as info:
        WanEmulator(make_matrix(), [spec])
    assert info.value.field == field


def test_emulator_rejects_duplicate_proxy_names() -> None:
    spec = ProxySpec("route", "us-east", "eu-west", 0, "127.0.0.1", 4222)
    with pytest.raises(WanArgumentError, match=r"proxies\[1\]\.name: duplicate"):
        WanEmulator(make_matrix(), [spec, spec])


def test_emulator_snapshot_before_start_and_bound_port_errors() -> None:
    spec = ProxySpec("route", "us-east", "eu-west", 0, "127.0.0.1", 4222)
    emu = WanEmulator(make_matrix(), [spec])
    snap = emu.snapshot()
    assert snap["partitions"] == []
    assert snap["proxies"] == [
        {
            "name": "route",
            "src": "us-east",
            "dst": "eu-west",
            "listen_host": "127.0.0.1",
            "listen_port": 0,
            "upstream": "127.0.0.1:4222",
            "active_connections": 0,
            "total_connections": 0,
            "bytes_up": 0,
            "bytes_down": 0,
            "dropped_up": 0,
            "dropped_down": 0,
        }
    ]
    with pytest.raises(RuntimeError, match="not listening"):
        emu.bound_port("route")
    with pytest.raises(KeyError, match="nope"):
        emu.bound_port("nope")
