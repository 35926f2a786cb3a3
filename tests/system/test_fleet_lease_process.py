"""One token per key across a fleet of real ``vregistry-server`` processes on one Redis.

Three server processes share a standalone Redis, a Sentinel setup or a Cluster; cold
GetAuthHeaders callers spread over them cost the token server (its request count is the
proof) one request per key, and a lease holder SIGKILLed mid-fetch is replaced by another
replica within the lease time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from tests.support.processes import RedisServer
from tests.support.registry import RegistryServer
from tests.support.server_process import ServerProcess, launch
from tests.support.token_server import TokenServer
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.oci.auth import LEASE_SECONDS

REPLICAS = 3
TOKEN_PASSWORD = "s3cret-token-pw"
DEADLINE = 30.0  # seconds, per call: hundreds of token requests at once take a while


@pytest.fixture(params=["standalone", "sentinel", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every topology, empty before the test."""
    if request.param == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        client.flushdb()
        client.close()
        yield server.url
        return
    topology = request.getfixturevalue(f"redis_{request.param}")
    topology.flush()
    yield topology.url


def _document(token_registry: RegistryServer, redis_url: str) -> dict[str, Any]:
    return {
        "upstreams": [
            {
                "id": "token",
                "name": "Token",
                "url": token_registry.url,
                "allow_http": True,
                "username": "bob",
                "password_env": "TOKEN_PW",
            }
        ],
        "registries": [{"id": "r", "name": "R", "upstreams": ["token"]}],
        # A 2-core machine running three servers, a token server and 600 callers stalls now
        # and then for longer than the default 0.5 s Redis timeout, which (as designed)
        # sends that replica to the token server on its own; the lease is what is tested.
        "settings": {
            "redis_url": redis_url,
            "request_timeout_seconds": DEADLINE,
            "redis_timeout_seconds": 3.0,
        },
    }


@pytest.fixture
def fleet(
    tmp_path: Path, token_registry: RegistryServer, redis_url: str
) -> Iterator[list[ServerProcess]]:
    document = _document(token_registry, redis_url)
    servers: list[ServerProcess] = []
    try:
        for index in range(REPLICAS):
            servers.append(
                launch(
                    tmp_path,
                    document,
                    env={"TOKEN_PW": TOKEN_PASSWORD},
                    name=f"replica-{index}",
                )
            )
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
async def stubs(fleet: list[ServerProcess]) -> AsyncIterator[list[Any]]:
    channels = [grpc.aio.insecure_channel(server.target) for server in fleet]
    try:
        stubs = [pb_grpc.UpstreamServiceStub(channel) for channel in channels]
        # Each replica discovers the upstream (a /v2/ ping, no token) before the burst.
        await asyncio.gather(*(_auth(stub, "") for stub in stubs))
        yield stubs
    finally:
        for channel in channels:
            await channel.close()


async def _auth(stub: Any, path: str, timeout: float = DEADLINE) -> pb.GetAuthHeadersResponse:
    request = pb.GetAuthHeadersRequest(upstream_id="token", path=path)
    reply: pb.GetAuthHeadersResponse = await stub.GetAuthHeaders(request, timeout=timeout)
    return reply


async def _burst(stubs: Sequence[Any], paths: Sequence[str], per_path: int) -> set[str]:
    """``per_path`` concurrent callers for every path, spread round-robin over the replicas."""
    calls = [
        _auth(stubs[(index + n) % len(stubs)], path)
        for index, path in enumerate(paths)
        for n in range(per_path)
    ]
    replies = await asyncio.gather(*calls)
    return {reply.headers["Authorization"] for reply in replies}


async def test_600_cold_callers_over_three_processes_cost_one_token_request(
    stubs: list[Any], token_server: TokenServer
) -> None:
    token_server.reset()
    # The fetch takes a while, so that every replica's claim meets the lease, not the token.
    token_server.configure(delay_seconds=0.2)
    headers = await _burst(stubs, ["private/fleet/manifests/v1"], per_path=600)
    assert token_server.count() == 1, [(r.method, r.scopes) for r in token_server.records]
    assert len(headers) == 1


async def test_300_distinct_keys_cost_300_token_requests(
    stubs: list[Any], token_server: TokenServer
) -> None:
    token_server.reset()
    paths = [f"private/fleet-{n}/manifests/v1" for n in range(300)]
    # Two callers per key, on two different replicas.
    headers = await _burst(stubs, paths, per_path=2)
    assert len(headers) == 300
    assert token_server.count() == 300, sorted(s for r in token_server.records for s in r.scopes)


async def test_holder_killed_mid_fetch_is_replaced_within_the_lease_time(
    fleet: list[ServerProcess], stubs: list[Any], token_server: TokenServer
) -> None:
    token_server.reset()
    token_server.configure(delay_seconds=1.0)
    path = "private/fleet-killed/manifests/v1"
    holder = asyncio.ensure_future(_auth(stubs[0], path))
    deadline = time.monotonic() + 10
    while token_server.count() == 0:  # the holder's token request has arrived
        assert time.monotonic() < deadline and not holder.done()
        await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(_auth(stubs[1], path))
    await asyncio.sleep(0.3)  # the waiter meets the holder's lease and polls
    fleet[0].process.kill()
    killed_at = time.monotonic()
    reply = await waiter
    replaced_after = time.monotonic() - killed_at
    assert reply.headers["Authorization"].startswith("Bearer ")
    with pytest.raises(grpc.aio.AioRpcError):
        await holder
    assert token_server.count() == 2  # the dead holder's request, then the waiter's
    # The lease lapses at most LEASE_SECONDS after the holder's last renewal; then one
    # token request (1 s here) and some slack for a busy machine.
    assert replaced_after <= LEASE_SECONDS + 1.0 + 1.5
