"""Optional OpenTelemetry tracing through the standard grpc instrumentation (off by default).

Install the extra (``pip install 'vregistry-server[otel]'``) and start with
``--otel console`` (spans on stderr) or ``--otel otlp`` (the OTLP exporter,
configured by the usual OTEL_EXPORTER_OTLP_* variables; needs
opentelemetry-exporter-otlp). Must run before the gRPC server is created:
the instrumentation wraps ``grpc.aio.server``.
"""

from __future__ import annotations

from typing import Any


class TracingUnavailable(RuntimeError):
    pass


def enable_tracing(exporter: str, *, span_exporter: Any = None) -> Any:
    """Install a tracer provider and instrument grpc.aio servers; returns the instrumentor."""
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError as exc:
        raise TracingUnavailable(
            "tracing needs the otel extra: pip install 'vregistry-server[otel]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": "vregistry-server"}))
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise TracingUnavailable(
                "--otel otlp needs opentelemetry-exporter-otlp installed"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise TracingUnavailable(f"unknown OpenTelemetry exporter {exporter!r}")
    trace.set_tracer_provider(provider)
    instrumentor = GrpcAioInstrumentorServer()
    instrumentor.instrument(tracer_provider=provider)
    return instrumentor
