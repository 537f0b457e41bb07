"""``meridian residency check``'s judgement and its readers of monitoring answers.

The judgement is pure: inventories known to be bad must name each misplaced
byte (server, region, stream, resource, allowed regions), inventories known to
be good (including the whole topology the agents create) must report nothing,
and a malformed or hostile ``/varz`` or ``/jsz`` answer must be refused with
an error naming the field, never a crash."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.cli.main import cli
from meridian.core.errors import InvalidArgumentError, UnavailableError
from meridian.core.keyspace import Keyspace, Locality
from meridian.core.residency import TopicResidency
from meridian.events import model as events
from meridian.residency import check
from meridian.residency import model as rm
from meridian.residency.model import (
    Inventory,
    MonitorAnswerError,
    Rules,
    Server,
    StoredStream,
    decode_json,
    judge,
    parse_jsz,
    parse_varz,
    topic_filters,
    topics_to_count,
    violations,
)
from meridian.state import replicated_store
from meridian.state.model import regional
from tests.unit.config_harness import load_text

REGIONS = ("us-east", "eu-west", "ap-south")

RULES = Rules.of(
    [
        Keyspace("profiles", Locality.REGIONAL, residency=("us-east", "eu-west")),
        Keyspace("carts", Locality.REPLICATED, residency=("eu-west",)),
        Keyspace("my_notes", Locality.REPLICATED, residency=("us-east",)),
        Keyspace("tags", Locality.REPLICATED),
        Keyspace("accounts", Locality.GLOBAL),
    ],
    [TopicResidency("eu-orders", ("eu-west",))],
)


def stored(
    stream: str,
    region: str,
    *,
    bytes_: int = 100,
    messages: int = 2,
    metadata: Mapping[str, str] | None = None,
    topics: Mapping[str, int] | None = None,
    server: str | None = None,
) -> StoredStream:
    return StoredStream(
        server=server if server is not None else region,
        region=region,
        account="MERIDIAN",
        stream=stream,
        bytes=bytes_,
        messages=messages,
        metadata=dict(metadata or {}),
        topic_messages=dict(topics or {}),
    )


def inventory(*streams: StoredStream) -> Inventory:
    servers = {s.server: Server(s.server, s.region, s.region, "http://x:1") for s in streams}
    return Inventory(tuple(servers.values()), streams)


# -- the names agree with the modules that create the streams ----------------


def test_stream_and_subject_names_are_the_ones_the_agents_use() -> None:
    assert replicated_store.own_stream("carts", "eu-west").startswith(rm.REPLICATED_OWN_PREFIX)
    assert replicated_store.aggregate_stream("carts", "eu-west").startswith(
        rm.REPLICATED_AGGREGATE_PREFIX
    )
    assert f"KV_{Keyspace('accounts').bucket}".startswith(rm.GLOBAL_BUCKET_PREFIX)
    for name in (
        events.own_stream("eu-west"),
        events.aggregate_stream("eu-west"),
        events.dlq_stream("eu-west"),
    ):
        assert rm.is_event_stream(name), name
    assert events.SUBJECT_PREFIX == rm.EVENT_SUBJECT_PREFIX
    assert events.DLQ_SUBJECT_PREFIX == rm.DLQ_SUBJECT_PREFIX
    assert events.subject("us-east", "eu-orders.k1").startswith(f"{rm.EVENT_SUBJECT_PREFIX}.")


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: '*' is one token, '>' one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@pytest.mark.parametrize(
    ("subject", "counted"),
    [
        ("mev.us-east.eu-orders", True),
        ("mev.us-east.eu-orders.o-1", True),
        ("mevr.eu-west.eu-orders.o-1.lines", True),
        ("mevdlq.us-east.billing.eu-orders", True),
        ("mevdlq.us-east.billing.eu-orders.o-1", True),
        ("mev.us-east.eu-orders2", False),
        ("mev.us-east.orders.eu-orders", False),
        ("mevdlq.us-east.eu-orders.orders", False),
    ],
)
def test_topic_filters_match_every_subject_of_the_topic_once(subject: str, counted: bool) -> None:
    hits = [f for f in topic_filters("eu-orders") if _matches(f, subject)]
    assert len(hits) == (1 if counted else 0), hits


# -- inventories known to be bad ----------------------------------------------


def test_a_regional_mirror_outside_the_residency_is_named() -> None:
    name = regional.mirror("profiles", "eu", "ap-south")
    found = violations(inventory(stored(name, "ap-south", bytes_=38, messages=1)), RULES)
    assert len(found) == 1
    v = found[0]
    assert (v.server, v.region, v.stream, v.bytes, v.messages) == (
        "ap-south",
        "ap-south",
        name,
        38,
        1,
    )
    assert (v.resource, v.allowed, v.rule) == (
        "keyspace profiles partition eu",
        ("us-east", "eu-west"),
        "configuration",
    )
    text = str(v)
    for part in ("ap-south", "MGRM_profiles_Peu_Rap-south", "profiles", "us-east, eu-west"):
        assert part in text


def test_a_regional_bucket_homed_outside_the_residency_is_named() -> None:
    bucket = stored(regional.stream("profiles", "apac"), "ap-south")
    found = violations(inventory(bucket), RULES)
    assert [v.resource for v in found] == ["keyspace profiles partition apac"]


def test_replicated_streams_outside_the_residency_are_named() -> None:
    found = violations(
        inventory(
            stored(replicated_store.own_stream("carts", "ap-south"), "ap-south"),
            stored(replicated_store.aggregate_stream("carts", "us-east"), "us-east"),
            # A keyspace name with '_' still parses: region names have none.
            stored(replicated_store.own_stream("my_notes", "eu-west"), "eu-west"),
        ),
        RULES,
    )
    assert [(v.stream, v.resource, v.allowed) for v in found] == [
        ("MR_carts_ap-south", "replicated keyspace carts", ("eu-west",)),
        ("MRA_carts_us-east", "replicated keyspace carts", ("eu-west",)),
        ("MR_my_notes_eu-west", "replicated keyspace my_notes", ("us-east",)),
    ]


def test_an_event_aggregate_holding_a_resident_topic_in_a_wrong_region_is_named() -> None:
    eva = stored(events.aggregate_stream("us-east"), "us-east", bytes_=900, topics={"eu-orders": 3})
    found = violations(inventory(eva), RULES)
    assert len(found) == 1
    v = found[0]
    assert (v.stream, v.server, v.resource, v.messages, v.bytes, v.allowed) == (
        "EVA_us-east",
        "us-east",
        "topic eu-orders",
        3,
        900,
        ("eu-west",),
    )


def test_resident_events_in_any_event_stream_of_a_wrong_region_are_named() -> None:
    streams = [
        stored(name, "ap-south", topics={"eu-orders": 1})
        for name in ("EV_ap-south", "EVA_ap-south", "EVDLQ_ap-south", "EVR_ap-south")
    ]
    assert [v.stream for v in violations(inventory(*streams), RULES)] == [
        "EV_ap-south",
        "EVA_ap-south",
        "EVDLQ_ap-south",
        "EVR_ap-south",
    ]


def test_a_stream_of_an_unknown_keyspace_is_judged_by_its_metadata() -> None:
    meta = {
        regional.META_KEYSPACE: "gone",
        regional.META_PARTITION: "eu",
        regional.META_RESIDENCY: "eu-west",
    }
    found = violations(
        inventory(
            stored(regional.mirror("gone", "eu", "us-east"), "us-east", metadata=meta),
            # Named like nothing Meridian makes: the metadata alone says whose it is.
            stored("ARCHIVE_7", "ap-south", metadata=meta),
        ),
        RULES,
    )
    assert [(v.stream, v.rule, v.allowed) for v in found] == [
        ("MGRM_gone_Peu_Rus-east", "stream metadata", ("eu-west",)),
        ("ARCHIVE_7", "stream metadata", ("eu-west",)),
    ]
    assert all("gone" in v.resource and "not in the configuration" in v.resource for v in found)


def test_the_configuration_wins_over_stale_metadata() -> None:
    meta = {regional.META_KEYSPACE: "profiles", regional.META_RESIDENCY: "ap-south"}
    found = violations(
        inventory(stored(regional.mirror("profiles", "eu", "ap-south"), "ap-south", metadata=meta)),
        RULES,
    )
    assert [(v.rule, v.allowed) for v in found] == [("configuration", ("us-east", "eu-west"))]


def test_resident_data_on_a_server_with_no_region_tag_is_a_violation() -> None:
    found = violations(inventory(stored(regional.stream("profiles", "eu"), "", server="n1")), RULES)
    assert [(v.server, v.region) for v in found] == [("n1", "")]
    assert "no region:<name> tag" in str(found[0])


def test_a_global_bucket_of_a_keyspace_now_resident_is_named() -> None:
    rules = Rules(keyspaces={"accounts": ("us-east",)}, topics={})
    found = violations(inventory(stored("KV_mg_accounts", "eu-west")), rules)
    assert [v.resource for v in found] == ["global keyspace accounts"]


# -- inventories known to be good -----------------------------------------------


def _agents_topology() -> list[StoredStream]:
    """Every stream the agents create for RULES' keyspaces and topics, each
    on a server of the region that should hold it, all holding data."""
    out: list[StoredStream] = []
    for home in ("us-east", "eu-west"):
        out.append(stored(regional.stream("profiles", home[:2]), home))
        for r in regional.mirror_regions(home, REGIONS, ("us-east", "eu-west")):
            out.append(stored(regional.mirror("profiles", home[:2], r), r))
    for ks, allowed in (("carts", ("eu-west",)), ("tags", REGIONS), ("my_notes", ("us-east",))):
        for r in allowed:
            out.append(stored(replicated_store.own_stream(ks, r), r))
            out.append(stored(replicated_store.aggregate_stream(ks, r), r))
    for r in REGIONS:
        topics = {"eu-orders": 0} if r != "eu-west" else {}
        for name in (events.own_stream(r), events.aggregate_stream(r), events.dlq_stream(r)):
            out.append(stored(name, r, topics=topics))
        out.append(stored(f"KV_mg__inbox_{r}", r))
        out.append(stored(f"global-{r}-only", r, server=f"global-{r}"))
    out.append(stored("KV_mg_accounts", "ap-south", server="global-ap-south"))
    # eu-west may hold the resident topic's events: they are not even counted.
    out.append(stored("EVA_eu-west", "eu-west", topics={}))
    return out


def test_the_topology_the_agents_create_is_clean() -> None:
    result = judge(inventory(*_agents_topology()), RULES)
    assert result.violations == ()
    assert result.unchecked == ()
    assert result.warnings == ()
    assert result.ok


def test_a_misplaced_but_empty_stream_is_a_warning_not_a_violation() -> None:
    empty = stored(regional.mirror("profiles", "eu", "ap-south"), "ap-south", bytes_=0, messages=0)
    result = judge(inventory(empty), RULES)
    assert result.violations == ()
    assert result.ok
    assert len(result.warnings) == 1
    assert "MGRM_profiles_Peu_Rap-south" in result.warnings[0]
    assert "holds nothing yet" in result.warnings[0]


def test_a_stream_no_rule_covers_is_a_warning() -> None:
    result = judge(inventory(stored("MR_forgotten_ap-south", "ap-south")), RULES)
    assert result.violations == ()
    assert len(result.warnings) == 1
    assert "forgotten" in result.warnings[0]
    assert "not judged" in result.warnings[0]


def test_event_streams_need_counts_only_where_the_topic_may_not_be() -> None:
    assert topics_to_count(stored("EVA_ap-south", "ap-south"), RULES) == ("eu-orders",)
    assert topics_to_count(stored("EVA_eu-west", "eu-west"), RULES) == ()
    assert topics_to_count(stored("MR_carts_ap-south", "ap-south"), RULES) == ()


def test_an_event_stream_whose_counts_are_missing_is_not_called_clean() -> None:
    result = judge(inventory(stored("EV_ap-south", "ap-south")), RULES)
    assert result.violations == ()
    assert not result.ok
    assert result.unchecked == (
        "EV_ap-south on ap-south: messages of topic eu-orders were not counted",
    )


def test_rules_come_from_a_loaded_configuration(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
[[region]]
name = "us-east"
[[region]]
name = "eu-west"
[[keyspace]]
name = "profiles"
locality = "regional"
residency = ["eu-west"]
[[keyspace]]
name = "carts"
locality = "replicated"
[[topic]]
name = "eu-orders"
residency = ["eu-west"]
""",
    )
    rules = Rules.of(cfg.keyspaces, cfg.topics)
    assert rules.keyspaces["profiles"] == ("eu-west",)
    assert rules.keyspaces["carts"] == ()
    assert rules.topics == {"eu-orders": ("eu-west",)}


# -- monitoring answers -----------------------------------------------------------

VARZ: dict[str, Any] = {
    "server_name": "ap-south",
    "tags": ["region:ap-south", "tier:gold"],
    "cluster": {"name": "ap-south"},
}


def _jsz() -> dict[str, Any]:
    """A /jsz answer shaped like nats-server 2.x's (trimmed)."""
    return {
        "server_id": "NCX",
        "accounts": 1,
        "streams": 2,
        "account_details": [
            {
                "name": "MERIDIAN",
                "id": "MERIDIAN",
                "stream_detail": [
                    {
                        "name": "MGRM_profiles_Peu_Rap-south",
                        "cluster": {"name": "ap-south", "leader": "ap-south"},
                        "config": {
                            "name": "MGRM_profiles_Peu_Rap-south",
                            "metadata": {
                                "meridian.keyspace": "profiles",
                                "meridian.residency": "us-east,eu-west",
                                "_nats.req.level": "0",
                            },
                        },
                        "state": {"messages": 1, "bytes": 38, "first_seq": 1},
                    },
                    {"name": "EVA_ap-south", "config": {}, "state": {"messages": 0, "bytes": 0}},
                ],
            }
        ],
        "total": 1,
    }


SERVER = Server("ap-south", "ap-south", "ap-south", "http://127.0.0.1:8222")


def test_a_varz_answer_gives_name_region_and_cluster() -> None:
    assert parse_varz(VARZ, "http://h:1") == Server(
        "ap-south", "ap-south", "ap-south", "http://h:1"
    )
    untagged = parse_varz({"server_name": "n1", "tags": None}, "http://h:1")
    assert untagged.region == ""


def test_a_jsz_answer_gives_every_replica_with_its_size_and_metadata() -> None:
    out = parse_jsz(_jsz(), SERVER)
    assert [(s.stream, s.bytes, s.messages, s.account, s.server) for s in out] == [
        ("MGRM_profiles_Peu_Rap-south", 38, 1, "MERIDIAN", "ap-south"),
        ("EVA_ap-south", 0, 0, "MERIDIAN", "ap-south"),
    ]
    assert out[0].metadata[regional.META_RESIDENCY] == "us-east,eu-west"
    assert parse_jsz({"disabled": True}, SERVER) == []
    assert parse_jsz({"accounts": 0, "account_details": None}, SERVER) == []


def _error(fn: Any, *args: Any) -> MonitorAnswerError:
    with pytest.raises(MonitorAnswerError) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize(
    ("mutate", "path", "rule"),
    [
        (lambda d: d.update(server_name=None), "server_name", "printable"),
        (lambda d: d.update(server_name="\x1b[2Jgone"), "server_name", "printable"),
        (lambda d: d.update(tags="region:x"), "tags", "array"),
        (lambda d: d.update(tags=[7]), "tags[0]", "printable"),
        (lambda d: d.update(tags=["region:Not A Region!"]), "tags[0]", "region"),
        (lambda d: d.update(tags=["region:us-east", "region:eu-west"]), "tags", "one region"),
        (lambda d: d.update(cluster=[]), "cluster", "object"),
    ],
)
def test_a_malformed_varz_answer_names_the_field(mutate: Any, path: str, rule: str) -> None:
    data = json.loads(json.dumps(VARZ))
    mutate(data)
    err = _error(parse_varz, data, "http://h:1")
    assert (err.where, err.path) == ("http://h:1/varz", path)
    assert rule in err.rule
    assert isinstance(err, UnavailableError)
    assert "http://h:1/varz" in err.message and path in err.message


def _detail(d: dict[str, Any]) -> dict[str, Any]:
    detail: dict[str, Any] = d["account_details"][0]["stream_detail"][0]
    return detail


S0 = "account_details[0].stream_detail[0]"


@pytest.mark.parametrize(
    ("mutate", "path", "rule"),
    [
        (lambda d: d.update(account_details={"a": 1}), "account_details", "array"),
        (lambda d: d.update(accounts=3), "account_details", "1 of the 3 accounts"),
        (lambda d: d.update(accounts=-1), "accounts", "non-negative"),
        (lambda d: d["account_details"].__setitem__(0, "MERIDIAN"), "account_details[0]", "object"),
        (lambda d: d["account_details"][0].pop("name"), "account_details[0].name", "printable"),
        (lambda d: _detail(d).update(name="a b"), f"{S0}.name", "printable"),
        (lambda d: _detail(d).update(name="EV_\x07"), f"{S0}.name", "printable"),
        (lambda d: _detail(d).update(name=""), f"{S0}.name", "printable"),
        (lambda d: _detail(d).update(name="EV_us-east.x"), f"{S0}.name", "'.'"),
        (lambda d: _detail(d).update(name="EVA_>"), f"{S0}.name", "'>'"),
        (lambda d: _detail(d).update(name="../EV_x"), f"{S0}.name", "'/'"),
        (lambda d: _detail(d).pop("state"), f"{S0}.state", "object"),
        (lambda d: _detail(d)["state"].update(bytes=-5), f"{S0}.state.bytes", "non-negative"),
        (lambda d: _detail(d)["state"].update(bytes="38"), f"{S0}.state.bytes", "non-negative"),
        (lambda d: _detail(d)["state"].update(bytes=True), f"{S0}.state.bytes", "non-negative"),
        (lambda d: _detail(d)["state"].update(bytes=1.5), f"{S0}.state.bytes", "non-negative"),
        (lambda d: _detail(d)["state"].pop("messages"), f"{S0}.state.messages", "non-negative"),
        (lambda d: _detail(d).update(config="x"), f"{S0}.config", "object"),
        (lambda d: _detail(d)["config"].update(metadata=[]), f"{S0}.config.metadata", "object"),
        (
            lambda d: _detail(d)["config"]["metadata"].update({"meridian.residency": 1}),
            f"{S0}.config.metadata['meridian.residency']",
            "string",
        ),
    ],
)
def test_a_malformed_jsz_answer_names_the_field(mutate: Any, path: str, rule: str) -> None:
    data = _jsz()
    mutate(data)
    err = _error(parse_jsz, data, SERVER)
    assert (err.where, err.path) == ("http://127.0.0.1:8222/jsz", path)
    assert rule in err.rule


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (b"", "must be JSON"),
        (b"<html>502 Bad Gateway</html>", "must be JSON"),
        (b'{"server_name": "x"', "must be JSON"),
        (b"\xff\xfe{}", "must be JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "must be JSON"),
    ],
)
def test_an_answer_that_is_not_json_is_refused(body: bytes, rule: str) -> None:
    err = _error(decode_json, body, "http://h:1/jsz")
    assert err.path == "(answer)"
    assert rule in err.rule
    assert len(err.message) < 300


@pytest.mark.parametrize("answer", [None, [], "ok", 7, True])
def test_an_answer_that_is_not_an_object_is_refused(answer: object) -> None:
    assert _error(parse_jsz, answer, SERVER).path == "(answer)"
    assert _error(parse_varz, answer, "http://h:1").path == "(answer)"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    where=st.sampled_from(["top", "account", "stream", "state", "config", "metadata"]),
    key=st.sampled_from(
        [
            "name",
            "account_details",
            "stream_detail",
            "state",
            "config",
            "metadata",
            "bytes",
            "messages",
            "accounts",
            "meridian.residency",
            "disabled",
        ]
    ),
    value=_JSON,
)
def test_any_hostile_jsz_answer_is_parsed_or_refused_never_a_crash(
    where: str, key: str, value: object
) -> None:
    data = _jsz()
    detail = _detail(data)
    target = {
        "top": data,
        "account": data["account_details"][0],
        "stream": detail,
        "state": detail["state"],
        "config": detail["config"],
        "metadata": detail["config"]["metadata"],
    }[where]
    target[key] = value
    try:
        out = parse_jsz(data, SERVER)
    except MonitorAnswerError as exc:
        assert exc.path and exc.rule
        return
    for s in out:
        assert isinstance(s.bytes, int) and s.bytes >= 0
        assert all(isinstance(v, str) for v in s.metadata.values())


# -- the command's inputs -----------------------------------------------------------


def test_monitor_urls_are_checked_and_name_the_option() -> None:
    assert check.monitor_url("http://127.0.0.1:8222/") == "http://127.0.0.1:8222"
    assert check.monitor_url("https://nats-1.example:8222") == "https://nats-1.example:8222"
    for bad in ("127.0.0.1:8222", "ftp://h:1", "http://h", "http://h:1/varz", "http://h:x"):
        with pytest.raises(InvalidArgumentError) as info:
            check.monitor_url(bad)
        assert info.value.field == "--monitor"


def test_the_sandbox_servers_are_asked_by_default(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[sandbox]\nbase_port = 33000\n")
    urls = check.monitor_urls(cfg)
    # Each region's own server and its member of the global cluster.
    assert len(urls) == 6
    assert "http://127.0.0.1:33003" in urls and "http://127.0.0.1:33013" in urls


def test_a_deployment_is_asked_at_its_configured_monitor_urls(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
[[region]]
name = "us-east"
nats_urls = ["nats://10.0.0.1:4222"]
monitor_url = "http://10.0.0.1:8222"
[[region]]
name = "eu-west"
nats_urls = ["nats://10.1.0.1:4222"]
""",
    )
    assert check.monitor_urls(cfg) == ["http://10.0.0.1:8222"]


def test_a_bad_monitor_url_exits_2_naming_the_option() -> None:
    result = CliRunner().invoke(cli, ["residency", "check", "--monitor", "127.0.0.1:8222"])
    assert result.exit_code == 2
    assert "--monitor: must be a server's monitoring endpoint" in result.output


def test_resident_idempotency_records_outside_their_home_are_named() -> None:
    name = "KV_mg__idempotency_r_eu-west"
    assert violations(inventory(stored(name, "eu-west")), RULES) == []
    (v,) = violations(inventory(stored(name, "us-east")), RULES)
    assert (v.stream, v.region, v.allowed) == (name, "us-east", ("eu-west",))
    assert v.resource == "resident idempotency records"
    # The global bucket of every other scope is everywhere by design.
    assert violations(inventory(stored("KV_mg__idempotency", "ap-south")), RULES) == []
