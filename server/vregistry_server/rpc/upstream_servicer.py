"""The gRPC face of the resolver: vregistry.v1.UpstreamService.

Protobuf in, plain Python calls, protobuf out; no registry logic lives here, and
every failure is mapped by rpc/boundary.py (a google.rpc.Status with an
ErrorInfo and, for a failed ResolveUpstream, every attempt).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.resolver import Resolver
from vregistry_server.rpc.boundary import (
    NullRpcObserver,
    RpcObserver,
    attempts_to_pb,
    handle,
    timestamp,
)

T = TypeVar("T")


class UpstreamServicer(pb_grpc.UpstreamServiceServicer):
    def __init__(self, resolver: Resolver, observer: RpcObserver | None = None) -> None:
        self._resolver = resolver
        self._observer = observer or NullRpcObserver()

    def _handle(
        self, context: grpc.aio.ServicerContext, method: str, work: Awaitable[T]
    ) -> Awaitable[T]:
        return handle(context, method, work, self._observer)

    async def UrlFor(
        self, request: pb.UrlForRequest, context: grpc.aio.ServicerContext
    ) -> pb.UrlForResponse:
        url = await self._handle(
            context, "UrlFor", _async(self._resolver.url_for, request.upstream_id, request.path)
        )
        return pb.UrlForResponse(url=url)

    async def GetAuthHeaders(
        self, request: pb.GetAuthHeadersRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAuthHeadersResponse:
        result = await self._handle(
            context,
            "GetAuthHeaders",
            self._resolver.get_auth_headers(
                request.upstream_id,
                request.path,
                list(request.actions),
                caller_remaining=context.time_remaining(),
            ),
        )
        response = pb.GetAuthHeadersResponse(
            headers=result.headers, cache_hit=result.cache_hit, scheme=result.scheme.value
        )
        if result.expires_at is not None:
            response.expires_at.CopyFrom(timestamp(result.expires_at))
        return response

    async def ResolveUpstream(
        self, request: pb.ResolveUpstreamRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveUpstreamResponse:
        resolution = await self._handle(
            context,
            "ResolveUpstream",
            self._resolver.resolve_upstream(
                request.registry_id, request.path, caller_remaining=context.time_remaining()
            ),
        )
        hit = resolution.hit
        upstream = hit.member.upstream
        return pb.ResolveUpstreamResponse(
            upstream=pb.Upstream(
                id=upstream.id,
                name=upstream.name,
                url=upstream.url,
                position=hit.member.position,
                cache_validity_hours=upstream.cache_validity_hours,
            ),
            url=hit.url,
            headers=hit.headers,
            digest=hit.digest,
            media_type=hit.media_type,
            size=hit.size,
            attempts=attempts_to_pb(resolution.attempts),
        )


async def _async(function: Callable[..., T], *args: object) -> T:
    return function(*args)
