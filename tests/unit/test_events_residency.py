"""Resident topics' events, the pure part: subjects, which resident streams an
aggregate sources (with which transforms), and which calls a region refuses.

The layout of every test: regions us-east, eu-west and ap-south; topic
``eu-orders`` may live in eu-west only, ``emea`` in eu-west and ap-south."""

from __future__ import annotations

import pytest
from nats.js import api

from meridian.backbone.connection import BackboneConnection
from meridian.backbone.fanin import source_keys
from meridian.core.errors import ErrorCode, ResidencyViolationError
from meridian.core.residency import TopicResidency
from meridian.events import model as ev
from meridian.events.streams import EventStreams

REGIONS = ("us-east", "eu-west", "ap-south")
TOPICS = (
    TopicResidency("eu-orders", ("eu-west",)),
    TopicResidency("emea", ("eu-west", "ap-south")),
)


def streams(region: str) -> EventStreams:
    """A region's event streams, never connected: only their configurations are read."""
    conn = BackboneConnection(["nats://127.0.0.1:1"], name=f"test-{region}")
    return EventStreams(
        conn,
        region=region,
        regions=REGIONS,
        replicas=1,
        timeout_s=1.0,
        inbox_ttl_s=60.0,
        topics=TOPICS,
    )


def sourced(config: api.StreamConfig) -> list[tuple[str, list[tuple[str, str]]]]:
    return [
        (s.name, [(t.src, t.dest) for t in s.subject_transforms or ()])
        for s in config.sources or ()
    ]


def test_resident_names() -> None:
    assert ev.resident_stream("eu-west") == "EVR_eu-west"
    assert ev.resident_subject("eu-west", "eu-orders.placed") == "mevr.eu-west.eu-orders.placed"
    # Apart from the own stream's subjects, so neither stream captures the other's.
    assert not ev.resident_subject("eu-west", "x").startswith(f"{ev.SUBJECT_PREFIX}.")


def test_only_regions_some_topic_allows_have_a_resident_stream() -> None:
    assert [r for r in REGIONS if ev.holds_resident_stream(TOPICS, r)] == ["eu-west", "ap-south"]
    assert streams("us-east").resident_config() is None
    config = streams("eu-west").resident_config()
    assert config is not None
    assert (config.name, config.subjects) == ("EVR_eu-west", ["mevr.eu-west.>"])
    assert config.placement is not None and config.placement.cluster == "eu-west"
    assert config.duplicate_window  # the event id dedups a republish, as in EV_<region>


def test_which_resident_streams_each_aggregate_sources() -> None:
    def pairs(region: str) -> list[tuple[str, str]]:
        return [(s.origin, s.topic) for s in ev.resident_sources(TOPICS, region, REGIONS)]

    assert pairs("us-east") == []
    assert pairs("eu-west") == [("eu-west", "emea"), ("eu-west", "eu-orders"), ("ap-south", "emea")]
    assert pairs("ap-south") == [("eu-west", "emea"), ("ap-south", "emea")]


def test_the_aggregate_sources_own_streams_and_resident_topics_with_transforms() -> None:
    assert sourced(streams("us-east").aggregate_config()) == [
        ("EV_us-east", []),
        ("EV_eu-west", []),
        ("EV_ap-south", []),
    ]
    assert sourced(streams("ap-south").aggregate_config()) == [
        ("EV_us-east", []),
        ("EV_eu-west", []),
        (
            "EVR_eu-west",
            [
                ("mevr.eu-west.emea", "mev.eu-west.emea"),
                ("mevr.eu-west.emea.>", "mev.eu-west.emea.>"),
            ],
        ),
        ("EV_ap-south", []),
        (
            "EVR_ap-south",
            [
                ("mevr.ap-south.emea", "mev.ap-south.emea"),
                ("mevr.ap-south.emea.>", "mev.ap-south.emea.>"),
            ],
        ),
    ]
    west = sourced(streams("eu-west").aggregate_config())
    assert ("EVR_eu-west", [
        ("mevr.eu-west.eu-orders", "mev.eu-west.eu-orders"),
        ("mevr.eu-west.eu-orders.>", "mev.eu-west.eu-orders.>"),
    ]) in west  # fmt: skip
    assert [name for name, _ in west] == [
        "EV_us-east",
        "EV_eu-west",
        "EVR_eu-west",
        "EVR_eu-west",
        "EV_ap-south",
        "EVR_ap-south",
    ]


def test_the_source_repair_rebuilds_with_the_resident_sources_and_their_transforms() -> None:
    west = streams("eu-west")
    # The repair drops one region's sources, then adds all back, from config_for.
    without_ap = sourced(west.repair.config_for(["us-east", "eu-west"]))
    assert [name for name, _ in without_ap] == [
        "EV_us-east",
        "EV_eu-west",
        "EVR_eu-west",
        "EVR_eu-west",
    ]
    assert all(transforms for name, transforms in without_ap if name.startswith("EVR_"))
    assert sourced(west.repair.config_for(REGIONS)) == sourced(west.aggregate_config())


def test_source_keys_ignore_order_but_not_transforms() -> None:
    a = api.StreamSource(name="EV_x")
    b = api.StreamSource(
        name="EVR_x", subject_transforms=[api.SubjectTransform(src="mevr.x.t", dest="mev.x.t")]
    )
    b2 = api.StreamSource(
        name="EVR_x", subject_transforms=[api.SubjectTransform(src="mevr.x.u", dest="mev.x.u")]
    )
    assert source_keys([a, b]) == source_keys([b, a])
    assert source_keys([a, b]) != source_keys([a, b2])
    assert source_keys([a]) != source_keys([a, b])
    assert source_keys(None) == source_keys([])


def test_publishing_goes_to_the_resident_subject_only_where_allowed() -> None:
    assert ev.publish_subject(TOPICS, "eu-west", "eu-orders.placed") == (
        "mevr.eu-west.eu-orders.placed"
    )
    assert ev.publish_subject(TOPICS, "ap-south", "emea") == "mevr.ap-south.emea"
    assert ev.publish_subject(TOPICS, "us-east", "orders.placed") == "mev.us-east.orders.placed"
    # Matched on the first token only.
    assert ev.publish_subject(TOPICS, "us-east", "eu-ordersx.y") == "mev.us-east.eu-ordersx.y"
    assert ev.publish_subject(TOPICS, "us-east", "x.eu-orders") == "mev.us-east.x.eu-orders"
    with pytest.raises(ResidencyViolationError) as err:
        ev.publish_subject(TOPICS, "us-east", "eu-orders.placed", "events[2].topic")
    assert err.value.code is ErrorCode.RESIDENCY_VIOLATION
    assert err.value.message.startswith("events[2].topic 'eu-orders.placed'")
    assert "[[topic]] 'eu-orders'" in err.value.message
    assert "eu-west" in err.value.message and "us-east" in err.value.message


def test_meridians_own_topics_are_never_resident() -> None:
    topics = (*TOPICS, TopicResidency("_invalidate", ("eu-west",)), TopicResidency("_state", ()))
    for topic in ("_invalidate.carts", "_state.carts"):
        assert ev.declared(topics, topic) is None
        assert ev.publish_subject(topics, "us-east", topic) == f"mev.us-east.{topic}"
        ev.check_served(topics, "us-east", topic)
    assert ev.resident_sources(topics, "us-east", REGIONS) == []
    assert not ev.holds_resident_stream(topics, "us-east")


@pytest.mark.parametrize(
    ("region", "topic_filter"),
    [
        ("ap-south", "eu-orders"),
        ("ap-south", "eu-orders.>"),
        ("us-east", "eu-orders.*.x"),
        ("us-east", "emea.>"),
    ],
)
def test_a_filter_naming_a_resident_topic_is_refused_outside_it(
    region: str, topic_filter: str
) -> None:
    with pytest.raises(ResidencyViolationError) as err:
        ev.check_served(TOPICS, region, topic_filter)
    assert err.value.message.startswith(f"topic_filter {topic_filter!r}")


@pytest.mark.parametrize(
    ("region", "topic_filter"),
    [
        ("eu-west", "eu-orders.>"),
        ("ap-south", "emea"),
        # Wildcards: this region's aggregate never holds what it may not serve.
        ("us-east", ">"),
        ("us-east", "*.placed"),
        ("ap-south", "*"),
        ("us-east", "orders.>"),
    ],
)
def test_other_filters_are_served(region: str, topic_filter: str) -> None:
    ev.check_served(TOPICS, region, topic_filter)
