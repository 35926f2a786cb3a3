"""Optional OpenTelemetry tracing: off by default, one server span per RPC when enabled."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.service import make_config, start_service, upstream_entry
from vregistry_server.runtime.tracing import enable_tracing


async def test_rpcs_become_spans_when_tracing_is_enabled() -> None:
    exporter = InMemorySpanExporter()
    instrumentor = enable_tracing("console", span_exporter=exporter)
    try:
        service = await start_service(make_config([upstream_entry("u", "http://127.0.0.1:9")]))
        try:
            await service.url_for("u", "library/alpine/manifests/latest")
            with pytest.raises(grpc.aio.AioRpcError):
                await service.url_for("u", "BAD/path")
        finally:
            await service.close()
    finally:
        instrumentor.uninstrument()
    names = [span.name for span in exporter.get_finished_spans()]
    assert names.count("/vregistry.v1.UpstreamService/UrlFor") == 2
    codes = sorted(
        span.attributes.get("rpc.grpc.status_code") for span in exporter.get_finished_spans()
    )
    assert codes == [grpc.StatusCode.OK.value[0], grpc.StatusCode.INVALID_ARGUMENT.value[0]]
