"""JSON logs that carry the region and the current trace id.

Every record gets ``region``, ``trace_id`` and ``span_id`` fields; the ids come
from the OpenTelemetry span active when the record is made, so a log line can
be joined with its trace.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter


class _ContextFilter(logging.Filter):
    def __init__(self, region: str) -> None:
        super().__init__()
        self.region = region

    def filter(self, record: logging.LogRecord) -> bool:
        record.region = self.region
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        else:
            record.trace_id = ""
            record.span_id = ""
        return True


def configure_logging(region: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Send this process's logs, as JSON lines, to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_ContextFilter(region))
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(region)s %(trace_id)s %(span_id)s",
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
    )
    # ISO 8601 in UTC, so logs from different regions line up.
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless we debug.
    third_party = root.level if root.level <= logging.DEBUG else max(logging.WARNING, root.level)
    for noisy in ("aiohttp.access", "nats", "grpc"):
        logging.getLogger(noisy).setLevel(third_party)
