"""The resolution cache through the real ``vregistry-server``: two processes on one Redis.

ResolveUpstreamResponse.cache_hit, stale and checked_at as a caller sees them over gRPC;
whether an upstream was asked is read from the counting proxy in front of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from tests.support.processes import RedisServer
from tests.support.proxy import Proxy, ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.server_process import ServerProcess, launch
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.resolve_cache import KEY_PREFIX

ALPINE = "library/alpine:latest"


@pytest.fixture
def fleet(
    tmp_path: Path,
    redis_server: RedisServer,
    open_registry: RegistryServer,
    proxy_factory: ProxyFactory,
) -> Iterator[tuple[list[ServerProcess], Proxy]]:
    client = redis.Redis.from_url(redis_server.url)
    for key in client.scan_iter(match=KEY_PREFIX + "*"):
        client.delete(key)
    client.close()
    proxy = proxy_factory(open_registry)
    document = {
        "settings": {"redis_url": redis_server.url, "probe_retries": 0},
        "upstreams": [{"id": "open", "name": "Open", "url": proxy.url, "allow_http": True}],
        "registries": [{"id": "r", "name": "R", "upstreams": ["open"]}],
    }
    servers = [launch(tmp_path, document, name=f"replica-{n}") for n in (1, 2)]
    try:
        yield servers, proxy
    finally:
        for server in servers:
            server.stop()


def _resolve(
    server: ServerProcess, path: str, *, refresh: bool = False
) -> pb.ResolveUpstreamResponse:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.UpstreamServiceStub(channel)
        request = pb.ResolveUpstreamRequest(registry_id="r", path=path, refresh=refresh)
        reply: pb.ResolveUpstreamResponse = stub.ResolveUpstream(request, timeout=15)
        return reply


def test_cache_hit_stale_and_checked_at_across_two_processes(
    fleet: tuple[list[ServerProcess], Proxy], open_registry: RegistryServer
) -> None:
    (replica_1, replica_2), proxy = fleet
    image = open_registry.images[ALPINE]

    first = _resolve(replica_1, image.manifest_path)
    assert not first.cache_hit and not first.stale
    assert first.HasField("checked_at") and first.checked_at.seconds > 0
    heads = proxy.count("HEAD")

    # The other process answers from Redis: the same answer, the same checked_at.
    shared = _resolve(replica_2, image.manifest_path)
    assert shared.cache_hit and not shared.stale
    assert shared.checked_at == first.checked_at
    assert shared.url.endswith(image.digest_path) and shared.digest == image.digest
    assert proxy.count("HEAD") == heads

    # refresh asks the upstream again and is no cache hit.
    refreshed = _resolve(replica_2, image.manifest_path, refresh=True)
    assert not refreshed.cache_hit and not refreshed.stale
    assert proxy.count("HEAD") == heads + 1
    assert refreshed.checked_at.ToNanoseconds() >= first.checked_at.ToNanoseconds()

    # The upstream goes away: a re-check finds it unavailable, the last answer is served stale.
    proxy.stop()
    stale = _resolve(replica_1, image.manifest_path, refresh=True)
    assert stale.stale and stale.cache_hit
    assert stale.digest == image.digest
    assert [a.outcome for a in stale.attempts] == [pb.ATTEMPT_OUTCOME_FOUND]
