"""The gRPC face of the resolver: protobuf in, plain Python calls, protobuf or a status out.

No registry logic lives here. Errors become a google.rpc.Status with an
ErrorInfo (domain "vregistry.dev", the reason callers match on) and, for a
failed ResolveUpstream, a ResolveUpstreamFailure with every attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.errors import Kind, ResolveFailed, ResolverError
from vregistry_server.model import Attempt, Outcome
from vregistry_server.resolver import Resolver
from vregistry_server.rpc import status
from vregistry_server.runtime import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

_CODES: dict[Kind, grpc.StatusCode] = {
    Kind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Kind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_OUTCOMES = {
    Outcome.FOUND: pb.ATTEMPT_OUTCOME_FOUND,
    Outcome.NOT_FOUND: pb.ATTEMPT_OUTCOME_NOT_FOUND,
    Outcome.AUTH_FAILED: pb.ATTEMPT_OUTCOME_AUTH_FAILED,
    Outcome.UNAVAILABLE: pb.ATTEMPT_OUTCOME_UNAVAILABLE,
    Outcome.NOT_CHECKED: pb.ATTEMPT_OUTCOME_NOT_CHECKED,
    Outcome.RATE_LIMITED: pb.ATTEMPT_OUTCOME_RATE_LIMITED,
}


class UpstreamServicer(pb_grpc.UpstreamServiceServicer):
    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def UrlFor(
        self, request: pb.UrlForRequest, context: grpc.aio.ServicerContext
    ) -> pb.UrlForResponse:
        url = await _call(
            context, "UrlFor", _async(self._resolver.url_for, request.upstream_id, request.path)
        )
        return pb.UrlForResponse(url=url)

    async def GetAuthHeaders(
        self, request: pb.GetAuthHeadersRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAuthHeadersResponse:
        result = await _call(
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
            response.expires_at.CopyFrom(_timestamp(result.expires_at))
        return response

    async def ResolveUpstream(
        self, request: pb.ResolveUpstreamRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveUpstreamResponse:
        resolution = await _call(
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
            attempts=_attempts(resolution.attempts),
        )


async def _async(function: Callable[..., T], *args: object) -> T:
    return function(*args)


async def _call(context: grpc.aio.ServicerContext, method: str, work: Awaitable[T]) -> T:
    started = time.perf_counter()
    code = "OK"
    try:
        return await work
    except ResolverError as exc:
        code = _CODES[exc.kind].name
        log.info(
            "request failed",
            extra={
                "method": method,
                "reason": exc.reason,
                "error": exc.message,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                **{k: v for k, v in exc.metadata.items() if k in {"upstream_id", "registry_id"}},
            },
        )
        await _abort(context, exc)
    except asyncio.CancelledError:
        code = "CANCELLED"  # the caller went away or its deadline passed
        raise
    except Exception:
        code = "INTERNAL"
        log.exception("unexpected error", extra={"method": method})
        await status.abort_internal(context)
    finally:
        requests, duration = metrics.rpc_children(method, code)
        requests.inc()
        duration.observe(time.perf_counter() - started)
    raise AssertionError("abort_with_status returned")


async def _abort(context: grpc.aio.ServicerContext, exc: ResolverError) -> NoReturn:
    details: list[Message] = []
    if isinstance(exc, ResolveFailed):
        details.append(pb.ResolveUpstreamFailure(attempts=_attempts(exc.attempts)))
    await status.abort(
        context, _CODES[exc.kind], exc.message, exc.reason, metadata=exc.metadata, details=details
    )


def _attempts(attempts: Sequence[Attempt]) -> list[pb.UpstreamAttempt]:
    return [
        pb.UpstreamAttempt(
            upstream_id=a.upstream_id,
            outcome=_OUTCOMES[a.outcome],
            http_status=a.http_status,
            latency_ms=a.latency_ms,
            position=a.position,
            message=a.message,
            retry_after_seconds=a.retry_after_seconds,
        )
        for a in attempts
    ]


def _timestamp(unix_seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(unix_seconds * 1e9))
    return stamp
