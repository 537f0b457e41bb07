"""OpenTelemetry tracing: a provider per process, and W3C trace-context helpers.

The exporter is chosen by configuration: ``none`` (spans are still created, so
trace ids flow into logs and responses, but nothing is exported), ``console``
or ``otlp`` (gRPC, to ``telemetry.otlp_endpoint``).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meridian.config import TelemetryConfig

_PROPAGATOR = TraceContextTextMapPropagator()


def build_tracer_provider(
    telemetry: TelemetryConfig,
    *,
    service: str,
    region: str,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """A tracer provider for one process; ``exporter`` overrides the configured one (tests)."""
    resource = Resource.create({"service.name": service, "cloud.region": region})
    if exporter is None and telemetry.exporter == "none":
        # Nothing is exported, so record nothing: spans stay non-recording but still
        # carry (and propagate) trace and span ids, for logs and traceparent. This
        # keeps the per-call cost of tracing near zero on the hot path.
        return TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    provider = TracerProvider(resource=resource)
    if exporter is None:
        if telemetry.exporter == "console":
            exporter = ConsoleSpanExporter()
        elif telemetry.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=telemetry.otlp_endpoint, insecure=True)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The parent context from a W3C ``traceparent``/``tracestate`` carrier, if any."""
    lowered = {k.lower(): v for k, v in carrier.items()}
    return _PROPAGATOR.extract(lowered)


def current_traceparent() -> str:
    """The ``traceparent`` of the current span, or "" when there is none."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def install_global_propagator() -> None:
    propagate.set_global_textmap(_PROPAGATOR)


__all__ = [
    "build_tracer_provider",
    "current_traceparent",
    "extract_context",
    "install_global_propagator",
    "trace",
]
