"""vregistry_client against a live server described by $VREGISTRY_STACK (tests/test_clients.py).

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

from vregistry_client import Reason, VRegistryClient, VRegistryError
from vregistry_client.v1 import upstream_service_pb2 as pb

ANSWERS: dict[str, Any] = {}
live = pytest.mark.skipif(
    not os.environ.get("VREGISTRY_STACK"),
    reason="VREGISTRY_STACK is not set: run through tests/test_clients.py (make test)",
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
    assert reply.url.endswith("/v2/" + case["path"])
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
    assert error.reason == Reason.NOT_FOUND_ON_UPSTREAMS
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
    assert error.reason == Reason.INVALID_PATH
    assert str(error).startswith("INVALID_ARGUMENT (INVALID_PATH): ")
    ANSWERS["invalid"] = {"code": error.code_name, "reason": error.reason}


@live
async def test_default_and_per_call_timeout(stack: dict[str, Any]) -> None:
    case = stack["resolve_hit"]
    async with VRegistryClient(stack["target"], insecure=True, timeout=1e-9) as client:
        with pytest.raises(VRegistryError) as info:
            await client.resolve_upstream(case["registry_id"], case["path"])
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # Expired in the client (no details) or refused by the server on arrival.
        assert info.value.reason in {"", "DEADLINE_EXCEEDED"}
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
    assert [a.upstream_id for a in error.attempts] == ["a", "b"]
    assert error.attempts[1].retry_after_seconds == 7
    assert str(error) == "NOT_FOUND (NOT_FOUND_ON_UPSTREAMS): not on any upstream"


def test_error_without_details() -> None:
    error = VRegistryError.from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", None)
    assert (error.code_name, error.reason, error.attempts) == ("UNAVAILABLE", "", [])
    assert str(error) == "UNAVAILABLE: connection refused"
