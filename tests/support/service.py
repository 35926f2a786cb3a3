"""Start the vregistry gRPC server in-process on a free port, and read its error details."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.config import build_config
from vregistry_server.model import Config
from vregistry_server.oci.token_cache import TokenCache
from vregistry_server.resolver import Resolver
from vregistry_server.runtime.main import RunningServer, start_server
from vregistry_server.runtime.metrics import PROMETHEUS


def upstream_entry(
    upstream_id: str,
    url: str,
    *,
    credentials: tuple[str, str] | None = None,
    env: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A config entry for a local (plain-http) upstream; credentials go through password_env."""
    entry: dict[str, Any] = {
        "id": upstream_id,
        "name": f"Upstream {upstream_id}",
        "url": url,
        "allow_http": True,
    }
    if credentials is not None:
        assert env is not None, "credentials travel by env reference"
        variable = f"VREG_TEST_PW_{upstream_id.upper().replace('-', '_')}"
        env[variable] = credentials[1]
        entry.update(username=credentials[0], password_env=variable)
    entry.update(extra)
    return entry


def make_config(
    upstreams: Sequence[dict[str, Any]],
    registries: Mapping[str, Sequence[str]] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **settings: Any,
) -> Config:
    data = {
        "upstreams": list(upstreams),
        "registries": [
            {"id": rid, "name": f"Registry {rid}", "upstreams": list(members)}
            for rid, members in (registries or {}).items()
        ],
        "settings": settings,
    }
    return build_config(data, source="test-config", env=env or {})


@dataclass
class Service:
    running: RunningServer
    channel: grpc.aio.Channel
    stub: Any = field(repr=False)

    @property
    def resolver(self) -> Resolver:
        return self.running.resolver

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def url_for(self, upstream_id: str, path: str) -> pb.UrlForResponse:
        return await self.stub.UrlFor(
            pb.UrlForRequest(upstream_id=upstream_id, path=path), timeout=10
        )

    async def auth(
        self, upstream_id: str, path: str = "", actions: Sequence[str] = (), timeout: float = 15
    ) -> pb.GetAuthHeadersResponse:
        request = pb.GetAuthHeadersRequest(
            upstream_id=upstream_id, path=path, actions=list(actions)
        )
        return await self.stub.GetAuthHeaders(request, timeout=timeout)

    async def resolve(
        self, registry_id: str, path: str, timeout: float = 15, *, refresh: bool = False
    ) -> pb.ResolveUpstreamResponse:
        request = pb.ResolveUpstreamRequest(registry_id=registry_id, path=path, refresh=refresh)
        return await self.stub.ResolveUpstream(request, timeout=timeout)

    async def close(self) -> None:
        await self.channel.close()
        await self.running.stop(0)


async def start_service(
    config: Config, cache: TokenCache | None = None, *, resolver: Resolver | None = None
) -> Service:
    resolver = resolver or Resolver(config, cache, observer=PROMETHEUS)
    running = await start_server(config, "127.0.0.1:0", resolver=resolver)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return Service(running, channel, pb_grpc.UpstreamServiceStub(channel))


@dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    attempts: list[pb.UpstreamAttempt] = field(default_factory=list)


def error_details(error: grpc.aio.AioRpcError) -> ErrorDetails:
    """Decode the google.rpc.Status the server attached, as a Go or Java caller would."""
    details = ErrorDetails(code=error.code(), message=error.details() or "")
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        assert status.code == error.code().value[0]
        assert status.message == details.message
        for packed in status.details:
            if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                packed.Unpack(info)
                assert info.domain == "vregistry.dev"
                details.reason = info.reason
                details.metadata = dict(info.metadata)
            elif packed.Is(pb.ResolveUpstreamFailure.DESCRIPTOR):
                failure = pb.ResolveUpstreamFailure()
                packed.Unpack(failure)
                details.attempts = list(failure.attempts)
    return details


async def http(
    method: str, url: str, headers: Mapping[str, str], *, follow_redirects: bool = False
) -> httpx.Response:
    """Fetch what a resolution points at, as the calling service would."""
    async with httpx.AsyncClient(follow_redirects=follow_redirects) as client:
        return await client.request(method, url, headers=dict(headers))
