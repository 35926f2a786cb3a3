"""VRegistryClient: the three UpstreamService questions as awaitable methods."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from types import TracebackType
from typing import Any, Final, Literal, Self

import grpc

from vregistry_client._errors import VRegistryError
from vregistry_client.v1 import upstream_service_pb2 as pb
from vregistry_client.v1 import upstream_service_pb2_grpc as pb_grpc

# The default deadline of every call, in seconds; the same in every vregistry client. It is
# longer than the server's own per-request budget (10 s by default), so a slow upstream comes
# back as UNAVAILABLE with the attempts rather than as DEADLINE_EXCEEDED.
DEFAULT_TIMEOUT = 30.0


class _Default(Enum):
    TIMEOUT = "the client's default timeout"


_DEFAULT: Final = _Default.TIMEOUT
_Timeout = float | None | Literal[_Default.TIMEOUT]


class VRegistryClient:
    """An asyncio client over one gRPC channel; use it as ``async with``.

    TLS by default, like the Go, TypeScript and Java clients: ``credentials`` defaults to
    ``grpc.ssl_channel_credentials()`` (system roots); pass your own for a private CA or
    mTLS. ``insecure=True`` asks for a plaintext channel (loopback, or a mesh sidecar
    doing mTLS).
    ``timeout``: the default deadline of every call, in seconds (default
    :data:`DEFAULT_TIMEOUT`, 30; ``None``: no deadline); each method also takes ``timeout=``
    for that call. ``options``: gRPC channel arguments.
    Failed calls raise :class:`VRegistryError`.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        insecure: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        if insecure and credentials is not None:
            raise ValueError("give credentials or insecure=True, not both")
        if insecure:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            credentials = credentials or grpc.ssl_channel_credentials()
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.UpstreamServiceStub(self._channel)

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

    def _timeout(self, timeout: _Timeout) -> float | None:
        return self.timeout if timeout is _DEFAULT else timeout

    async def url_for(
        self, upstream_id: str, path: str = "", *, timeout: _Timeout = _DEFAULT
    ) -> str:
        """``{upstream url}/v2/{path}``, after the server checked the path's grammar."""
        request = pb.UrlForRequest(upstream_id=upstream_id, path=path)
        try:
            reply = await self.stub.UrlFor(request, timeout=self._timeout(timeout))
        except grpc.aio.AioRpcError as error:
            raise VRegistryError.from_rpc_error(error) from None
        return reply.url

    async def get_auth_headers(
        self,
        upstream_id: str,
        path: str = "",
        actions: Sequence[str] = (),
        *,
        timeout: _Timeout = _DEFAULT,
    ) -> pb.GetAuthHeadersResponse:
        """The headers that authorize ``actions`` (default: pull) on the path's repository."""
        request = pb.GetAuthHeadersRequest(upstream_id=upstream_id, path=path, actions=actions)
        try:
            return await self.stub.GetAuthHeaders(request, timeout=self._timeout(timeout))
        except grpc.aio.AioRpcError as error:
            raise VRegistryError.from_rpc_error(error) from None

    async def resolve_upstream(
        self, registry_id: str, path: str, *, timeout: _Timeout = _DEFAULT
    ) -> pb.ResolveUpstreamResponse:
        """The first upstream, by position, that has the path; raises VRegistryError with
        ``attempts`` when none does."""
        request = pb.ResolveUpstreamRequest(registry_id=registry_id, path=path)
        try:
            return await self.stub.ResolveUpstream(request, timeout=self._timeout(timeout))
        except grpc.aio.AioRpcError as error:
            raise VRegistryError.from_rpc_error(error) from None
