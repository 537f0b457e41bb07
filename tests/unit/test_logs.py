"""JSON logs that join with traces, and the W3C trace-context helpers."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from meridian.config import TelemetryConfig
from meridian.observability.logs import configure_logging
from meridian.observability.tracing import (
    build_tracer_provider,
    current_traceparent,
    extract_context,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
NOISY = ("aiohttp.access", "nats", "grpc")

Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """Call configure_logging into a StringIO; the root logger is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy_levels = {name: logging.getLogger(name).level for name in NOISY}
    added: list[logging.Handler] = []

    def go(region: str = "us-east", level: str = "info") -> io.StringIO:
        stream = io.StringIO()
        configure_logging(region, level, stream)
        added.extend(root.handlers)
        return stream

    yield go
    for handler in added:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, noisy_level in noisy_levels.items():
        logging.getLogger(name).setLevel(noisy_level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


# -- logs --------------------------------------------------------------------------


def test_a_log_line_is_one_json_object_with_the_documented_keys(configure: Configure) -> None:
    stream = configure("eu-west")
    logging.getLogger("meridian.test").info("hello %s", "world")
    (record,) = records(stream)
    assert {"ts", "level", "logger", "message", "region", "trace_id", "span_id"} <= set(record)
    assert record["level"] == "INFO"
    assert record["logger"] == "meridian.test"
    assert record["message"] == "hello world"
    assert record["region"] == "eu-west"
    assert record["ts"]


def test_each_record_is_its_own_line(configure: Configure) -> None:
    stream = configure()
    log = logging.getLogger("meridian.test")
    log.info("first")
    log.warning("second\nspans two lines")
    got = records(stream)
    assert [r["message"] for r in got] == ["first", "second\nspans two lines"]
    assert [r["level"] for r in got] == ["INFO", "WARNING"]


def test_records_below_the_level_are_dropped(configure: Configure) -> None:
    stream = configure(level="warning")
    log = logging.getLogger("meridian.test")
    log.info("quiet")
    log.error("loud")
    assert [r["message"] for r in records(stream)] == ["loud"]


def test_outside_a_span_trace_ids_are_empty(configure: Configure) -> None:
    stream = configure()
    logging.getLogger("meridian.test").info("no span")
    (record,) = records(stream)
    assert record["trace_id"] == ""
    assert record["span_id"] == ""


def test_inside_a_span_the_record_carries_its_ids(configure: Configure) -> None:
    stream = configure()
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("meridian.test").info("in span")
        ctx = span.get_span_context()
    logging.getLogger("meridian.test").info("after span")
    inside, after = records(stream)
    assert re.fullmatch(r"[0-9a-f]{32}", inside["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", inside["span_id"])
    assert int(inside["trace_id"], 16) == ctx.trace_id
    assert int(inside["span_id"], 16) == ctx.span_id
    assert (after["trace_id"], after["span_id"]) == ("", "")


def test_a_child_span_keeps_the_trace_and_changes_the_span(configure: Configure) -> None:
    stream = configure()
    tracer = TracerProvider().get_tracer("test")
    log = logging.getLogger("meridian.test")
    with tracer.start_as_current_span("parent"):
        log.info("parent")
        with tracer.start_as_current_span("child"):
            log.info("child")
    parent, child = records(stream)
    assert parent["trace_id"] == child["trace_id"]
    assert parent["span_id"] != child["span_id"]


def test_a_span_from_an_incoming_traceparent_logs_the_callers_trace(
    configure: Configure,
) -> None:
    stream = configure()
    tracer = TracerProvider().get_tracer("test")
    parent = extract_context({"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"})
    with tracer.start_as_current_span("server", context=parent):
        logging.getLogger("meridian.test").info("handled")
    (record,) = records(stream)
    assert record["trace_id"] == TRACE_ID
    assert record["span_id"] != SPAN_ID


def test_extra_fields_appear_in_the_json(configure: Configure) -> None:
    stream = configure()
    logging.getLogger("meridian.test").info(
        "stored", extra={"keyspace": "users", "revision": 7, "peers": ["eu-west"]}
    )
    (record,) = records(stream)
    assert record["keyspace"] == "users"
    assert record["revision"] == 7
    assert record["peers"] == ["eu-west"]


def test_exceptions_are_logged_inside_the_json_line(configure: Configure) -> None:
    stream = configure()
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        logging.getLogger("meridian.test").exception("failed")
    (record,) = records(stream)
    assert record["message"] == "failed"
    assert "RuntimeError: kaboom" in record["exc_info"]


def test_configuring_twice_replaces_the_handler(configure: Configure) -> None:
    first = configure("us-east")
    second = configure("ap-south")
    logging.getLogger("meridian.test").info("once")
    assert first.getvalue() == ""
    (record,) = records(second)
    assert record["region"] == "ap-south"


def test_third_party_chatter_is_kept_at_warning(configure: Configure) -> None:
    stream = configure(level="info")
    logging.getLogger("nats.aio.client").info("reconnecting")
    logging.getLogger("aiohttp.access").info("GET /v1/status 200")
    logging.getLogger("nats.aio.client").warning("slow consumer")
    assert [r["message"] for r in records(stream)] == ["slow consumer"]


def test_third_party_warnings_pass_at_any_level_up_to_warning(configure: Configure) -> None:
    stream = configure(level="debug")
    logging.getLogger("grpc._server").warning("grpc warning")
    logging.getLogger("meridian.test").debug("ours")
    assert [r["message"] for r in records(stream)] == ["grpc warning", "ours"]


def test_debug_level_lets_third_party_debug_through(configure: Configure) -> None:
    stream = configure(level="debug")
    logging.getLogger("nats.aio.client").debug("reconnect attempt 3")
    assert [r["message"] for r in records(stream)] == ["reconnect attempt 3"]


# -- trace context -----------------------------------------------------------------


def test_extract_context_gives_the_callers_trace_and_span() -> None:
    ctx = extract_context({"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"})
    parent = trace.get_current_span(ctx).get_span_context()
    assert parent.is_valid
    assert parent.is_remote
    assert parent.trace_id == int(TRACE_ID, 16)
    assert parent.span_id == int(SPAN_ID, 16)
    assert parent.trace_flags.sampled


def test_extract_context_ignores_header_case() -> None:
    ctx = extract_context({"Traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"})
    assert trace.get_current_span(ctx).get_span_context().trace_id == int(TRACE_ID, 16)


def test_a_child_of_an_extracted_context_joins_the_trace() -> None:
    tracer = TracerProvider().get_tracer("test")
    parent = extract_context({"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"})
    with tracer.start_as_current_span("server", context=parent) as span:
        assert isinstance(span, ReadableSpan)
        assert span.get_span_context().trace_id == int(TRACE_ID, 16)
        assert span.parent is not None
        assert span.parent.span_id == int(SPAN_ID, 16)
        traceparent = current_traceparent()
    assert traceparent.startswith(f"00-{TRACE_ID}-")
    assert traceparent != f"00-{TRACE_ID}-{SPAN_ID}-01"


def test_current_traceparent_is_empty_outside_a_span() -> None:
    assert current_traceparent() == ""


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01", id="short-trace-id"),
        pytest.param(f"00-{TRACE_ID}0-{SPAN_ID}-01", id="long-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID[:-1]}-01", id="short-span-id"),
        pytest.param(f"00-{'g' * 32}-{SPAN_ID}-01", id="non-hex-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{'z' * 16}-01", id="non-hex-span-id"),
        pytest.param(f"ff-{TRACE_ID}-{SPAN_ID}-01", id="version-ff"),
        pytest.param(f"00-{'0' * 32}-{SPAN_ID}-01", id="zero-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="zero-span-id"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-01-extra", id="version-00-with-extra"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-01-" + "a" * 10_240, id="oversized-10k"),
        pytest.param("a" * 10_240, id="10k-garbage"),
        pytest.param("", id="empty"),
        pytest.param("not a traceparent", id="garbage"),
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace(header: str) -> None:
    ctx = extract_context({"traceparent": header})
    assert not trace.get_current_span(ctx).get_span_context().is_valid
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("server", context=ctx) as span:
        assert isinstance(span, ReadableSpan)
        assert span.parent is None
        assert span.get_span_context().is_valid
        assert span.get_span_context().trace_id != int(TRACE_ID, 16)


def test_no_traceparent_starts_a_new_trace() -> None:
    assert not trace.get_current_span(extract_context({})).get_span_context().is_valid


# -- tracer provider ---------------------------------------------------------------


def test_none_exporter_still_creates_spans_with_ids() -> None:
    provider = build_tracer_provider(
        TelemetryConfig("none", "http://127.0.0.1:4317"), service="meridian-agent", region="us-east"
    )
    try:
        attributes = provider.resource.attributes
        assert attributes["service.name"] == "meridian-agent"
        assert attributes["cloud.region"] == "us-east"
        with provider.get_tracer("test").start_as_current_span("probe") as span:
            assert span.get_span_context().is_valid
            assert current_traceparent().startswith("00-")
    finally:
        provider.shutdown()


# ConsoleSpanExporter binds sys.stdout when its module is imported, so what it
# prints can only be seen honestly from a fresh interpreter.
_PRINT_ONE_SPAN = textwrap.dedent(
    """
    import sys
    from meridian.config import TelemetryConfig
    from meridian.observability.tracing import build_tracer_provider

    provider = build_tracer_provider(
        TelemetryConfig(sys.argv[1], "http://127.0.0.1:4317"),
        service="meridian-agent",
        region="eu-west",
    )
    provider.get_tracer("test").start_span("probe-span-7c1e").end()
    provider.shutdown()
    """
)


@pytest.mark.parametrize(("exporter", "prints"), [("console", True), ("none", False)])
def test_console_exporter_prints_spans_and_none_prints_nothing(exporter: str, prints: bool) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PRINT_ONE_SPAN, exporter],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert ("probe-span-7c1e" in proc.stdout) is prints
    if prints:
        assert "eu-west" in proc.stdout
    else:
        assert proc.stdout == ""
