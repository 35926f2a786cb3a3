"""vregistry_client against a live server described by $VREGISTRY_STACK.

The stack is written by tests/system/test_clients.py in the repository root.

When $VREGISTRY_ANSWERS_DIR is set, the answers go to python.json there for the
cross-language comparison. Without $VREGISTRY_STACK only the offline tests run.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2
import google.rpc.status_pb2 as status_pb2
import grpc
import pytest
from google.protobuf import any_pb2

from vregistry_client import (
    DEFAULT_TIMEOUT,
    ERROR_DOMAIN,
    ErrorReason,
    VRegistryClient,
    VRegistryError,
)
from vregistry_client.v1 import upstream_service_pb2 as pb

ANSWERS: dict[str, Any] = {}
live = pytest.mark.skipif(
    not os.environ.get("VREGISTRY_STACK"),
    reason="VREGISTRY_STACK is not set: run through tests/system/test_clients.py (make test)",
)


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(os.environ["VREGISTRY_STACK"]).read_text())
    return data


def outcomes(attempts: list[pb.UpstreamAttempt]) -> list[list[str]]:
    return [[a.upstream_id, pb.AttemptOutcome.Name(a.outcome)] for a in attempts]


@live
async def test_url_for(stack: dict[str, Any]) -> None:
    case = stack["url_for"]
    async with VRegistryClient(stack["target"], insecure=True, timeout=20) as client:
        url = await client.url_for(case["upstream_id"], case["path"])
    assert url == case["expected_url"]
    ANSWERS["url_for"] = url


@live
async def test_get_auth_headers_bearer_then_cached(stack: dict[str, Any]) -> None:
    case = stack["auth"]
    async with VRegistryClient(stack["target"], insecure=True, timeout=20) as client:
        first = await client.get_auth_headers(case["upstream_id"], case["path"])
        second = await client.get_auth_headers(case["upstream_id"], case["path"])
    prefix, _, token = first.headers["Authorization"].partition(" ")
    assert first.scheme == "bearer" and prefix == "Bearer" and token
    assert first.HasField("expires_at")
    assert first.expires_at.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
    assert second.cache_hit and second.headers["Authorization"] == first.headers["Authorization"]
    ANSWERS["auth"] = {
        "scheme": first.scheme,
        "authorization_prefix": prefix,
        "cache_hit_second_call": second.cache_hit,
    }


@live
async def test_resolve_upstream_hit(stack: dict[str, Any]) -> None:
    case = stack["resolve_hit"]
    async with VRegistryClient(stack["target"], insecure=True, timeout=20) as client:
        reply = await client.resolve_upstream(case["registry_id"], case["path"])
    assert reply.upstream.id == case["expected_upstream_id"]
    assert reply.upstream.position == case["expected_position"]
    assert reply.digest == case["expected_digest"]
    # The first answer names the path; one from the server's resolution cache (another
    # language's suite may have asked first) names the manifest by its digest.
    repository = case["path"].split("/manifests/")[0]
    by_digest = f"/v2/{repository}/manifests/{case['expected_digest']}"
    assert reply.url.endswith(("/v2/" + case["path"], by_digest))
    assert reply.headers["Authorization"].startswith("Bearer ")
    ANSWERS["resolve_hit"] = {
        "upstream_id": reply.upstream.id,
        "position": reply.upstream.position,
        "digest": reply.digest,
        "media_type": reply.media_type,
        "size": reply.size,
        "outcomes": outcomes(list(reply.attempts)),
    }


@live
async def test_resolve_upstream_miss_carries_attempts(stack: dict[str, Any]) -> None:
    case = stack["resolve_miss"]
    async with VRegistryClient(stack["target"], insecure=True, timeout=20) as client:
        with pytest.raises(VRegistryError) as info:
            await client.resolve_upstream(case["registry_id"], case["path"])
    error = info.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason_code == ErrorReason.NOT_FOUND_ON_UPSTREAMS
    assert error.reason == ErrorReason.Name(ErrorReason.NOT_FOUND_ON_UPSTREAMS)
    assert error.domain == "vregistry.dev"
    assert [a.position for a in error.attempts] == [1, 2]
    ANSWERS["resolve_miss"] = {
        "code": error.code_name,
        "reason": error.reason,
        "outcomes": outcomes(error.attempts),
    }


@live
async def test_invalid_path(stack: dict[str, Any]) -> None:
    case = stack["invalid"]
    async with VRegistryClient(stack["target"], insecure=True, timeout=20) as client:
        with pytest.raises(VRegistryError) as info:
            await client.url_for(case["upstream_id"], case["path"])
    error = info.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason_code == ErrorReason.INVALID_PATH
    assert str(error).startswith("INVALID_ARGUMENT (INVALID_PATH): ")
    ANSWERS["invalid"] = {"code": error.code_name, "reason": error.reason}


@live
async def test_default_and_per_call_timeout(stack: dict[str, Any]) -> None:
    case = stack["resolve_hit"]
    async with VRegistryClient(stack["target"], insecure=True, timeout=1e-9) as client:
        with pytest.raises(VRegistryError) as info:
            # refresh: the server checks the upstreams rather than answering from its cache
            # within the millisecond that gRPC's deadline timer may round 1 ns up to.
            await client.resolve_upstream(case["registry_id"], case["path"], refresh=True)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # Expired in the client (no details) or refused by the server on arrival.
        assert info.value.reason_code in {
            ErrorReason.ERROR_REASON_UNSPECIFIED,
            ErrorReason.DEADLINE_EXCEEDED,
        }
        # A per-call timeout wins over the client's default.
        url = await client.url_for(stack["url_for"]["upstream_id"], "", timeout=20)
        assert url.endswith("/v2/")


@live
def test_write_answers() -> None:
    """Last in this file: write python.json once every live test recorded its answer."""
    assert set(ANSWERS) == {"url_for", "auth", "resolve_hit", "resolve_miss", "invalid"}
    directory = os.environ.get("VREGISTRY_ANSWERS_DIR")
    if directory:
        path = Path(directory) / "python.json"
        path.write_text(json.dumps(ANSWERS, indent=2, sort_keys=True) + "\n")


def test_error_decodes_status_details_offline() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="NOT_FOUND_ON_UPSTREAMS", domain="vregistry.dev", metadata={"registry_id": "r"}
    )
    failure = pb.ResolveUpstreamFailure(
        attempts=[
            pb.UpstreamAttempt(upstream_id="a", outcome=pb.ATTEMPT_OUTCOME_NOT_FOUND, position=1),
            pb.UpstreamAttempt(
                upstream_id="b",
                outcome=pb.ATTEMPT_OUTCOME_RATE_LIMITED,
                position=2,
                retry_after_seconds=7,
            ),
        ]
    )
    packed = []
    for message in (info, failure):
        detail = any_pb2.Any()
        detail.Pack(message)
        packed.append(detail)
    status = status_pb2.Status(code=5, message="not on any upstream", details=packed)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    error = VRegistryError.from_rpc_error(
        grpc.aio.AioRpcError(
            grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), trailers, "not on any upstream"
        )
    )
    assert error.code_name == "NOT_FOUND"
    assert error.reason == "NOT_FOUND_ON_UPSTREAMS" and error.metadata == {"registry_id": "r"}
    assert error.reason_code == ErrorReason.NOT_FOUND_ON_UPSTREAMS
    assert [a.upstream_id for a in error.attempts] == ["a", "b"]
    assert error.attempts[1].retry_after_seconds == 7
    assert str(error) == "NOT_FOUND (NOT_FOUND_ON_UPSTREAMS): not on any upstream"


def test_error_without_details() -> None:
    error = VRegistryError.from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", None)
    assert (error.code_name, error.reason, error.attempts) == ("UNAVAILABLE", "", [])
    assert error.reason_code == ErrorReason.ERROR_REASON_UNSPECIFIED
    assert str(error) == "UNAVAILABLE: connection refused"


def test_reason_code_is_the_generated_enum() -> None:
    def error(reason: str, domain: str = ERROR_DOMAIN) -> VRegistryError:
        return VRegistryError(grpc.StatusCode.UNKNOWN, "x", reason=reason, domain=domain)

    assert len(ErrorReason.keys()) >= 25  # UNSPECIFIED and the 24 reasons of error_reason.proto
    for name, number in ErrorReason.items():
        assert error(name).reason_code == number
    # Reasons the hand-written list lacked.
    assert error("UPSTREAM_REALM_REFUSED").reason_code == ErrorReason.UPSTREAM_REALM_REFUSED
    assert error("DEADLINE_EXCEEDED").reason_code == ErrorReason.DEADLINE_EXCEEDED
    assert error("UPSTREAM_RATE_LIMITED").reason_code == ErrorReason.UPSTREAM_RATE_LIMITED
    # A reason from a newer server, or another domain's: unspecified, the string kept.
    newer = error("SOMETHING_NEWER")
    assert newer.reason_code == ErrorReason.ERROR_REASON_UNSPECIFIED
    assert newer.reason == "SOMETHING_NEWER"
    assert error("NOT_FOUND", "proxy.example").reason_code == ErrorReason.ERROR_REASON_UNSPECIFIED
    assert error("", "").reason_code == ErrorReason.ERROR_REASON_UNSPECIFIED


async def test_default_deadline_is_30_seconds_and_per_call_overridable() -> None:
    """A stand-in server records the deadline each call arrives with."""
    assert DEFAULT_TIMEOUT == 30.0
    remaining: list[float | None] = []

    async def url_for(
        request: pb.UrlForRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UrlForResponse:
        remaining.append(context.time_remaining())
        return pb.UrlForResponse(url=f"http://upstream.test/v2/{request.path}")

    handler = grpc.method_handlers_generic_handler(
        "vregistry.v1.UpstreamService",
        {
            "UrlFor": grpc.unary_unary_rpc_method_handler(
                url_for,
                request_deserializer=pb.UrlForRequest.FromString,
                response_serializer=pb.UrlForResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with VRegistryClient(f"127.0.0.1:{port}", insecure=True) as client:
            assert client.timeout == DEFAULT_TIMEOUT
            await client.url_for("u")
            await client.url_for("u", timeout=2)
            await client.url_for("u", timeout=None)
        async with VRegistryClient(f"127.0.0.1:{port}", insecure=True, timeout=5) as client:
            await client.url_for("u")
    finally:
        await server.stop(None)
    # The server sees the deadline through the grpc-timeout header, rounded up a little.
    default, per_call, no_deadline, client_wide = remaining
    assert default is not None and 25 < default <= 31
    assert per_call is not None and 0 < per_call <= 3
    assert no_deadline is None
    assert client_wide is not None and 3 < client_wide <= 6
