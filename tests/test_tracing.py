"""Optional OpenTelemetry tracing: off by default, one server span per RPC when enabled."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.server_process import launch
from tests.support.service import make_config, start_service, upstream_entry
from vregistry.v1 import upstream_service_pb2 as pb
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


def test_server_starts_with_console_tracing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    document = {
        "upstreams": [{"id": "u", "name": "U", "url": "http://127.0.0.1:9", "allow_http": True}]
    }
    server = launch(tmp_path, document, args=["--otel", "console"])
    try:
        with grpc.insecure_channel(server.target) as channel:
            from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc

            reply = pb_grpc.UpstreamServiceStub(channel).UrlFor(
                pb.UrlForRequest(upstream_id="u", path=""), timeout=5
            )
        assert reply.url == "http://127.0.0.1:9/v2/"
    finally:
        assert server.stop() == 0
    logs = server.logs()
    assert '"msg": "tracing enabled"' in logs
    assert "/vregistry.v1.UpstreamService/UrlFor" in logs, "the console exporter printed the span"
