"""The one boundary every RPC of both services goes through: logs, metrics, error mapping.

A servicer method hands its work to ``handle``; whatever the work raises
becomes a google.rpc.Status here and nowhere else. The status code is the
error's own (errors.py: ``Code`` names are grpc.StatusCode names), the
ErrorInfo reason its ``reason``, and the detail messages follow from its class:
the attempts of a failed ResolveUpstream, the delay of a rate limit. Anything
that is not a VRegistryError is a bug: INTERNAL with a generic message, the
traceback in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import NoReturn, Protocol, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.errors import ResolveFailed, UpstreamRateLimited, VRegistryError
from vregistry_server.model import Attempt, Outcome
from vregistry_server.rpc import status

log = logging.getLogger(__name__)
T = TypeVar("T")

# Only these metadata keys are logged: they are ids, never paths or user names.
_LOGGED_METADATA = frozenset({"upstream_id", "registry_id"})
_OUTCOMES = {
    Outcome.FOUND: pb.ATTEMPT_OUTCOME_FOUND,
    Outcome.NOT_FOUND: pb.ATTEMPT_OUTCOME_NOT_FOUND,
    Outcome.AUTH_FAILED: pb.ATTEMPT_OUTCOME_AUTH_FAILED,
    Outcome.UNAVAILABLE: pb.ATTEMPT_OUTCOME_UNAVAILABLE,
    Outcome.NOT_CHECKED: pb.ATTEMPT_OUTCOME_NOT_CHECKED,
    Outcome.RATE_LIMITED: pb.ATTEMPT_OUTCOME_RATE_LIMITED,
}


class RpcObserver(Protocol):
    """Told about every finished RPC and every credential handed out (the runtime counts
    them in Prometheus)."""

    def rpc(self, method: str, code: str, seconds: float) -> None: ...

    def credentials_disclosed(self, upstream_id: str, scheme: str) -> None: ...


class NullRpcObserver:
    def rpc(self, method: str, code: str, seconds: float) -> None:
        pass

    def credentials_disclosed(self, upstream_id: str, scheme: str) -> None:
        pass


async def handle(
    context: grpc.aio.ServicerContext, method: str, work: Awaitable[T], observer: RpcObserver
) -> T:
    started = time.perf_counter()
    code = "OK"
    try:
        return await work
    except VRegistryError as exc:
        code = exc.code.name
        _log_refusal(method, exc, started)
        await abort_with(context, exc)
    except asyncio.CancelledError:
        code = "CANCELLED"  # the caller went away or its deadline passed
        raise
    except Exception:
        code = "INTERNAL"
        log.exception("unexpected error", extra={"method": method})
        await status.abort_internal(context)
    finally:
        observer.rpc(method, code, time.perf_counter() - started)
    raise AssertionError("abort_with_status returned")


async def abort_with(context: grpc.aio.ServicerContext, exc: VRegistryError) -> NoReturn:
    await status.abort(
        context,
        grpc.StatusCode[exc.code.name],
        exc.message,
        exc.reason,
        metadata=exc.metadata,
        details=error_details(exc),
    )


def error_details(exc: VRegistryError) -> list[Message]:
    """The detail messages that go with the ErrorInfo, chosen by the error's class."""
    details: list[Message] = []
    if isinstance(exc, ResolveFailed):
        details.append(pb.ResolveUpstreamFailure(attempts=attempts_to_pb(exc.attempts)))
    if isinstance(exc, UpstreamRateLimited) and exc.retry_after_seconds > 0:
        details.append(
            error_details_pb2.RetryInfo(retry_delay=Duration(seconds=exc.retry_after_seconds))
        )
    return details


def attempts_to_pb(attempts: Sequence[Attempt]) -> list[pb.UpstreamAttempt]:
    return [
        pb.UpstreamAttempt(
            upstream_id=a.upstream_id,
            outcome=_OUTCOMES[a.outcome],
            http_status=a.http_status,
            latency_ms=a.latency_ms,
            position=a.position,
            message=a.message,
            retry_after_seconds=a.retry_after_seconds,
            reason=a.reason,
        )
        for a in attempts
    ]


def timestamp(unix_seconds: float) -> Timestamp:
    # What Timestamp.FromNanoseconds sets, in one constructor call (it is on every hot call).
    seconds, nanos = divmod(int(unix_seconds * 1e9), 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


def _log_refusal(method: str, exc: VRegistryError, started: float) -> None:
    log.info(
        "request failed",
        extra={
            "method": method,
            "reason": exc.reason,
            "error": exc.message,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            **{k: v for k, v in exc.metadata.items() if k in _LOGGED_METADATA},
        },
    )
