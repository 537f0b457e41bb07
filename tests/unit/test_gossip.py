"""Pure tests of the gossip filter: INFO address fields go, every other byte stays."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.sandbox.gossip import ADDRESS_FIELDS, MAX_LINE, GossipFilter

# A route INFO as nats-server sends it, with every address field it may carry.
ROUTE_INFO: dict[str, Any] = {
    "server_id": "NDJWE4SOUJOJT2TY5Y2YQEOAHGAK5VIGXTGKWJSFHVCII4ITI3LBHBUV",
    "server_name": "global-us-east",
    "version": "2.12.1",
    "cluster": "global",
    "host": "127.0.0.1",
    "port": 1,
    "gateway_urls": ["127.0.0.1:14906", "127.0.0.1:14012"],
    "gateway_url": "127.0.0.1:14012",
    "connect_urls": ["127.0.0.1:14010"],
    "ws_connect_urls": ["127.0.0.1:14080"],
    "leafnode_urls": ["127.0.0.1:7422"],
    "headers": True,
    "jetstream": True,
    "nonce": "abc",
    "tags": ["region:us-east"],
}
KEPT = {k: v for k, v in ROUTE_INFO.items() if k not in ADDRESS_FIELDS}

# What a payload may look like when a client publishes NATS protocol text.
EVIL = b'INFO {"gateway_urls":["127.0.0.1:14906"]}\r\n'


def info_line(fields: dict[str, Any], op: bytes = b"INFO") -> bytes:
    return op + b" " + json.dumps(fields).encode() + b"\r\n"


def parse_info(line: bytes) -> dict[str, Any]:
    assert line.startswith(b"INFO ") and line.endswith(b"\r\n"), line
    parsed: dict[str, Any] = json.loads(line[5:-2])
    return parsed


def feed_all(chunks: list[bytes]) -> tuple[bytes, int]:
    f = GossipFilter()
    out = b"".join(f.feed(c) for c in chunks)
    return out, f.stripped


# -- INFO --------------------------------------------------------------------------


def test_info_loses_its_address_fields_and_keeps_the_rest() -> None:
    f = GossipFilter()
    out = f.feed(info_line(ROUTE_INFO))
    got = parse_info(out)
    assert got == KEPT
    assert list(got) == list(KEPT)  # order kept, too
    assert not any(field.encode() in out for field in ADDRESS_FIELDS)
    assert f.stripped == 1


@pytest.mark.parametrize("field", ADDRESS_FIELDS)
def test_each_address_field_alone_is_removed(field: str) -> None:
    f = GossipFilter()
    out = f.feed(info_line({"server_id": "S", field: ["127.0.0.1:1"], "port": 5}))
    assert parse_info(out) == {"server_id": "S", "port": 5}
    assert f.stripped == 1


def test_stripped_counts_each_rewritten_info() -> None:
    f = GossipFilter()
    f.feed(info_line(ROUTE_INFO) + b"PING\r\n" + info_line({"server_id": "S"}))
    assert f.stripped == 1
    f.feed(info_line({"gateway_url": "x"}) + info_line({"connect_urls": []}))
    assert f.stripped == 3


def test_lowercase_info_op_is_filtered_too() -> None:
    # The NATS parser reads ops case-insensitively, so the filter must too.
    f = GossipFilter()
    out = f.feed(info_line(ROUTE_INFO, op=b"info"))
    assert parse_info(out) == KEPT
    assert f.stripped == 1


@pytest.mark.parametrize(
    "line",
    [
        b'INFO {"server_id":"S","port":14011,"cluster":"global"}\r\n',
        # Odd spacing proves the line is forwarded, not re-serialised.
        b'INFO   {  "server_id" : "S",\t"nonce":"x"  }  \r\n',
        b'INFO {"server_id":"\\u00e9t\\u00e9"}\r\n',
        b"INFO {}\r\n",
        b"INFO\r\n",
        b"INFO not json at all\r\n",
        b'INFO ["gateway_urls"]\r\n',
        b'INFO "gateway_urls"\r\n',
        b'INFO {"gateway_urls": [\r\n',  # truncated JSON
    ],
)
def test_info_without_address_fields_passes_byte_identical(line: bytes) -> None:
    f = GossipFilter()
    assert f.feed(line) == line
    assert f.stripped == 0


def test_incomplete_info_line_is_held_back_until_its_crlf() -> None:
    f = GossipFilter()
    line = info_line(ROUTE_INFO)
    assert f.feed(line[:30]) == b""
    assert f.feed(line[30:-1]) == b""  # "\r" without "\n" is not the end yet
    assert parse_info(f.feed(line[-1:])) == KEPT


# -- other protocol lines ----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"PING\r\n",
        b"PONG\r\n",
        b"ping\r\n",
        b"RS+ $G orders.>\r\n",
        b"RS+ MERIDIAN $JS.API.> workers 1\r\n",
        b"RS- $G orders.>\r\n",
        b"LS+ $G foo\r\n",
        b"LS- $G foo\r\n",
        b"A+ MERIDIAN\r\n",
        b"A- MERIDIAN\r\n",
        b"+OK\r\n",
        b"-ERR 'Unknown Protocol Operation'\r\n",
        b"\r\n",
        # CONNECT is not INFO: its fields are the dialler's own, and are left alone.
        b'CONNECT {"verbose":false,"gateway":"global","gateway_urls":["x"]}\r\n',
    ],
)
def test_non_info_lines_pass_unchanged(line: bytes) -> None:
    f = GossipFilter()
    assert f.feed(line) == line
    assert f.stripped == 0


# -- payloads ------------------------------------------------------------------------------

HEADERS = b"NATS/1.0\r\nNats-Msg-Id: 1\r\n\r\n"


def frame(op_args: str, payload: bytes, headers: bytes | None = None) -> bytes:
    """A message op line with its sizes filled in, then the payload and its CRLF."""
    if headers is None:
        head = f"{op_args} {len(payload)}"
        return head.encode() + b"\r\n" + payload + b"\r\n"
    body = headers + payload
    head = f"{op_args} {len(headers)} {len(body)}"
    return head.encode() + b"\r\n" + body + b"\r\n"


PAYLOAD_FRAMES = {
    "MSG": frame("MSG orders.new 7", EVIL),
    "MSG reply": frame("MSG orders.new 7 _INBOX.x", EVIL),
    "RMSG": frame("RMSG $G orders.new", EVIL),
    "RMSG reply": frame("RMSG $G orders.new _INBOX.x", EVIL),
    "RMSG queue": frame("RMSG $G orders.new + _INBOX.x q1 q2", EVIL),
    "RMSG queue no reply": frame("RMSG $G orders.new | q1 q2", EVIL),
    "LMSG": frame("LMSG orders.new _INBOX.x", EVIL),
    "PUB": frame("PUB orders.new", EVIL),
    "HMSG": frame("HMSG MERIDIAN orders.new _INBOX.x", EVIL, HEADERS),
    "HMSG no reply": frame("HMSG MERIDIAN orders.new", EVIL, HEADERS),
    "HMSG INFO in headers": frame("HMSG $G s", b"x", b"NATS/1.0\r\nX: 1\r\n" + EVIL + b"\r\n"),
    "HPUB": frame("HPUB orders.new", EVIL, HEADERS),
    "payload of CRLFs": frame("RMSG $G s", b"\r\n\r\n" + EVIL * 3 + b"\r\n"),
    "payload ending in INFO without CRLF": frame("RMSG $G s", b'PING\r\nINFO {"gateway_url":1}'),
    "empty payload": frame("RMSG $G s", b""),
    "lowercase op": frame("rmsg $G s", EVIL),
}


@pytest.mark.parametrize("name", list(PAYLOAD_FRAMES))
def test_payload_that_looks_like_info_passes_untouched(name: str) -> None:
    msg = PAYLOAD_FRAMES[name]
    after = info_line(ROUTE_INFO) + b"PING\r\n"
    f = GossipFilter()
    out = f.feed(msg + after)
    # The frame is forwarded as is, and the filter resumes exactly after it.
    assert out.startswith(msg)
    rest = out[len(msg) :]
    assert rest.endswith(b"PING\r\n")
    assert parse_info(rest[: -len(b"PING\r\n")]) == KEPT
    assert f.stripped == 1


def test_payload_split_across_feeds_is_still_counted() -> None:
    msg = PAYLOAD_FRAMES["RMSG queue"]
    f = GossipFilter()
    cut = msg.index(b"INFO") + 3  # in the middle of the fake INFO in the payload
    out = f.feed(msg[:cut])
    out += f.feed(msg[cut:])
    assert out == msg
    assert f.stripped == 0


def test_message_op_without_a_size_carries_no_payload() -> None:
    f = GossipFilter()
    data = b"RMSG $G s notasize\r\n" + info_line(ROUTE_INFO)
    out = f.feed(data)
    assert out.startswith(b"RMSG $G s notasize\r\n")
    assert f.stripped == 1


# -- chunking -------------------------------------------------------------------------------


def realistic_stream() -> bytes:
    parts = [
        info_line(ROUTE_INFO),
        b"PING\r\n",
        b"PONG\r\n",
        b"RS+ $G orders.>\r\n",
        b"RS+ MERIDIAN $JS.API.> workers 1\r\n",
        *PAYLOAD_FRAMES.values(),
        info_line({"server_id": "S", "gateway": "us-east"}),
        b"RS- $G orders.>\r\n",
        info_line({"gateway": "global", "gateway_urls": ["127.0.0.1:14907"]}),
        b"+OK\r\n",
    ]
    return b"".join(parts)


STREAM = realistic_stream()
WHOLE, WHOLE_STRIPPED = feed_all([STREAM])


def test_whole_realistic_stream() -> None:
    assert WHOLE_STRIPPED == 2
    for msg in PAYLOAD_FRAMES.values():
        assert msg in WHOLE
    assert b"14906" in STREAM
    # The only remaining address text is inside payloads.
    assert WHOLE.count(b"gateway_url") == STREAM.count(EVIL) + 1  # + the unterminated one


def test_byte_at_a_time_matches_whole() -> None:
    out, stripped = feed_all([bytes([b]) for b in STREAM])
    assert out == WHOLE
    assert stripped == WHOLE_STRIPPED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_chunking_gives_the_same_output(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    out, stripped = feed_all(chunks)
    assert out == WHOLE
    assert stripped == WHOLE_STRIPPED


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                info_line(ROUTE_INFO),
                info_line({"server_id": "S"}),
                b"PING\r\n",
                b"RS+ $G a\r\n",
                *PAYLOAD_FRAMES.values(),
            ]
        ),
        max_size=20,
    ),
    st.data(),
)
def test_any_message_sequence_with_any_chunking(parts: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(parts)
    whole, stripped = feed_all([stream])
    assert stripped == sum(p == info_line(ROUTE_INFO) for p in parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    points = [0, *sorted(cuts), len(stream)]
    out, n = feed_all([stream[a:b] for a, b in itertools.pairwise(points)])
    assert (out, n) == (whole, stripped)


# -- not NATS -------------------------------------------------------------------------------


def test_junk_without_crlf_switches_to_passthrough_and_loses_no_bytes() -> None:
    junk = bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") * (MAX_LINE // 254 + 40)
    assert len(junk) > MAX_LINE
    tail = info_line(ROUTE_INFO) + b"PING\r\n"
    data = junk + tail
    chunks = [data[i : i + 65_536] for i in range(0, len(data), 65_536)]
    f = GossipFilter()
    outs = [f.feed(c) for c in chunks]
    assert b"".join(outs) == data
    assert f.stripped == 0  # once passing through, INFO is no longer touched
    assert f.feed(b"more\r\n") == b"more\r\n"


def test_line_is_held_back_up_to_max_line_then_released() -> None:
    f = GossipFilter()
    assert f.feed(b"x" * MAX_LINE) == b""
    assert f.feed(b"y") == b"x" * MAX_LINE + b"y"
    assert f.feed(info_line(ROUTE_INFO)) == info_line(ROUTE_INFO)


def test_long_line_with_crlf_in_one_feed_switches_to_passthrough() -> None:
    f = GossipFilter()
    long_line = b"x" * (MAX_LINE + 10) + b"\r\n"
    out = f.feed(long_line + info_line(ROUTE_INFO))
    assert out == long_line + info_line(ROUTE_INFO)
    assert f.stripped == 0


def test_long_line_gives_the_same_output_however_it_is_chunked() -> None:
    data = b"x" * (2 * MAX_LINE) + b"\r\n" + info_line(ROUTE_INFO)
    whole = feed_all([data])
    assert whole == (data, 0)  # an over-long line means "not NATS": pass everything through
    chunked = feed_all([data[i : i + 65_536] for i in range(0, len(data), 65_536)])
    assert chunked == whole
