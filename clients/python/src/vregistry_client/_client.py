"""VRegistryClient: the three UpstreamService questions as awaitable methods, and the
ConfigService (``client.config``) over the same channel."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from vregistry_client._calls import (
    DEFAULT,
    DEFAULT_TIMEOUT,
    SERVICE_CONFIG,
    Calls,
    Timeout,
    Token,
    channel_options,
)
from vregistry_client._config import ConfigClient
from vregistry_client.v1 import upstream_service_pb2 as pb
from vregistry_client.v1 import upstream_service_pb2_grpc as pb_grpc


class VRegistryClient:
    """An asyncio client over one gRPC channel; use it as ``async with``.

    TLS by default, like the Go, TypeScript and Java clients: ``credentials`` defaults to
    ``grpc.ssl_channel_credentials()`` (system roots); pass :func:`tls_credentials` (or your
    own) for a private CA or mTLS. ``insecure=True`` asks for a plaintext channel (loopback,
    or a mesh sidecar doing mTLS).
    ``timeout``: the default deadline of every call, in seconds (default
    :data:`DEFAULT_TIMEOUT`, 30; ``None``: no deadline); each method also takes ``timeout=``
    for that call. ``token``: the caller token sent as ``authorization: Bearer`` on every call;
    each method also takes ``token=`` for that call.
    ``service_config``: the gRPC service config (default :data:`SERVICE_CONFIG`: retries of
    UNAVAILABLE, round_robin over the addresses of a ``dns:///host:port`` target; ``None``:
    gRPC's defaults). ``options``: more gRPC channel arguments.
    Failed calls raise :class:`VRegistryError`.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        insecure: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        service_config: str | None = SERVICE_CONFIG,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        if insecure and credentials is not None:
            raise ValueError("give credentials or insecure=True, not both")
        args = channel_options(service_config, options)
        if insecure:
            self._channel = grpc.aio.insecure_channel(target, options=args)
        else:
            credentials = credentials or grpc.ssl_channel_credentials()
            self._channel = grpc.aio.secure_channel(target, credentials, options=args)
        self._calls = Calls(timeout, token)
        self._stub = pb_grpc.UpstreamServiceStub(self._channel)
        self.config = ConfigClient(self._channel, self._calls)

    def __repr__(self) -> str:
        return f"VRegistryClient({self.target!r}, {self._calls!r})"

    @property
    def timeout(self) -> float | None:
        return self._calls.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._calls.timeout = value

    @property
    def stub(self) -> pb_grpc.UpstreamServiceAsyncStub:
        """The generated stub, for calls with options this wrapper does not expose."""
        return self._stub

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def url_for(
        self,
        upstream_id: str,
        path: str = "",
        *,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> str:
        """``{upstream url}/v2/{path}``, after the server checked the path's grammar."""
        request = pb.UrlForRequest(upstream_id=upstream_id, path=path)
        reply = await self._calls.unary(self.stub.UrlFor, request, timeout, token)
        return reply.url

    async def get_auth_headers(
        self,
        upstream_id: str,
        path: str = "",
        actions: Sequence[str] = (),
        *,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> pb.GetAuthHeadersResponse:
        """The headers that authorize ``actions`` (default: pull) on the path's repository."""
        request = pb.GetAuthHeadersRequest(upstream_id=upstream_id, path=path, actions=actions)
        return await self._calls.unary(self.stub.GetAuthHeaders, request, timeout, token)

    async def resolve_upstream(
        self,
        registry_id: str,
        path: str,
        *,
        refresh: bool = False,
        timeout: Timeout = DEFAULT,
        token: Token = DEFAULT,
    ) -> pb.ResolveUpstreamResponse:
        """The first upstream, by position, that has the path; raises VRegistryError with
        ``attempts`` when none does. ``refresh=True`` checks the upstreams even when the server
        holds a cached answer; the reply's ``cache_hit``, ``stale`` and ``checked_at`` say
        where the answer came from."""
        request = pb.ResolveUpstreamRequest(registry_id=registry_id, path=path, refresh=refresh)
        return await self._calls.unary(self.stub.ResolveUpstream, request, timeout, token)
