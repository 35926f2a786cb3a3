"""Tracing in the real ``vregistry-server`` process: ``--otel console`` prints the spans
(the in-process spans are in tests/integration/test_tracing.py)."""

from __future__ import annotations

import grpc

from tests.support.server_process import launch
from vregistry.v1 import upstream_service_pb2 as pb


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
