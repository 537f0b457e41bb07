"""The HTTP transport's fast protojson paths for Get give what json_format gives."""

from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian._pb.meridian.v1 import state_pb2
from meridian.transport.http.server import _fast_get_request, _json, _json_text

LEVEL_NAMES = list(state_pb2.Consistency.Level.keys())


def slow_parse(raw: bytes) -> state_pb2.GetRequest | None:
    message = state_pb2.GetRequest()
    try:
        json_format.Parse(raw or b"{}", message)
    except Exception:
        return None
    return message


def check_request(raw: bytes) -> None:
    slow = slow_parse(raw)
    fast = _fast_get_request(raw)
    if fast is None:
        return  # json_format decides, as before
    assert slow is not None, raw
    assert fast.SerializeToString() == slow.SerializeToString(), raw
    assert fast.HasField("consistency") == slow.HasField("consistency"), raw


def test_request_examples() -> None:
    bodies = [
        b'{"keyspace":"bench","key":"read-key","consistency":{"level":"LEVEL_EVENTUAL"}}',
        b'{"keyspace": "a", "key": "b"}',
        b'{"keyspace": "a", "key": "b", "consistency": {}}',
        b'{"consistency": {"level": "LEVEL_UNSPECIFIED"}}',
        b'{"consistency": {"level": 3}}',
        b'{"consistency": {"level": "NOPE"}}',
        b'{"consistency": {"level": "LEVEL_BOUNDED", "maxStaleness": "1s"}}',
        b'{"consistency": null}',
        b'{"key": null}',
        b'{"key": 5}',
        b'{"keyspace": "a", "keyspace": "b"}',
        b'{"consistency": {"level": "LEVEL_STRONG", "level": "LEVEL_EVENTUAL"}}',
        b'{"key": "\\ud800"}',
        b'{"key": "\\ud83d\\ude00 \xc3\xa9"}',
        b'{"key": "x", "other": 1}',
        b"[]",
        b"{}",
        b"not json",
        b"\xff\xfe{}",
        b'\xef\xbb\xbf{"key": "a"}',
    ]
    for raw in bodies:
        check_request(raw)
    assert _fast_get_request(bodies[0]) is not None


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["keyspace", "key", "consistency", "Key", "x"]),
        st.one_of(
            json_scalars,
            st.dictionaries(
                st.sampled_from(["level", "maxStaleness"]),
                st.one_of(json_scalars, st.sampled_from(LEVEL_NAMES)),
            ),
        ),
    )
)
def test_request_properties(body: dict[str, object]) -> None:
    check_request(json.dumps(body).encode())


entries = st.builds(
    state_pb2.Entry,
    key=st.text(max_size=12),
    value=st.binary(max_size=40),
    revision=st.integers(0, 2**64 - 1),
    hlc=st.integers(0, 2**64 - 1),
    region=st.text(max_size=8),
    counter=st.integers(-(2**63), 2**63 - 1),
    elements=st.lists(st.text(max_size=4), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    entry=st.one_of(st.none(), entries),
    served=st.sampled_from([0, 1, 2, 3]),
    staleness_ns=st.one_of(st.none(), st.integers(-(10**15), 10**15)),
)
def test_response_text(
    entry: state_pb2.Entry | None, served: int, staleness_ns: int | None
) -> None:
    resp = state_pb2.GetResponse(served=served)  # type: ignore[arg-type]
    if entry is not None:
        resp.entry.CopyFrom(entry)
    if staleness_ns is not None:
        d = Duration()
        d.FromNanoseconds(staleness_ns)
        resp.staleness_bound.CopyFrom(d)
    expected = json.dumps(_json(resp))
    assert _json_text(resp) == expected
    assert _json_text(resp) == expected  # again, from the entry cache
