"""A configuration change starts an upstream over; cache deletes and metrics with a failing Redis.

* apply_config (file reload or the admin API) resets everything kept per changed upstream:
  its circuit breaker and the realm policy's address classes too, not only auth.
* Invalidating an upstream's tokens is one batched delete, and honours the degraded
  back-off: a hung Redis costs it one socket timeout, not one per key.
* Token cache metrics: every layer counts its own lookups (a near hit is not also a Redis
  hit), and a Redis failure is counted as result="error".
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from tests.support.admin import empty_config, start_admin_service
from tests.support.processes import RedisServer, free_port
from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.service import Service, error_details, make_config, upstream_entry
from tests.support.token_server import TokenServer
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.model import Config, Settings
from vregistry_server.oci.auth import Authenticator
from vregistry_server.oci.circuit import State
from vregistry_server.oci.token_cache import CachedToken, RedisTokenCache, cache_key
from vregistry_server.runtime import metrics

StartService = Callable[..., Awaitable[Service]]
MANIFEST = "library/alpine/manifests/latest"
# Probe once per resolution and open the circuit after two failures, for a long time:
# without a reset on a configuration change the circuit stays open for the whole test.
BREAKER = {"probe_retries": 0, "circuit_failure_threshold": 2, "circuit_reset_seconds": 300}


def _refusing_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused


async def _attempt_messages(call: Awaitable[pb.ResolveUpstreamResponse]) -> list[str]:
    """The attempts' messages, whether ResolveUpstream answered or failed."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        return [a.message for a in error_details(exc).attempts]
    return [a.message for a in reply.attempts]


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- 1. reload resets


def _one_upstream(url: str) -> Config:
    return make_config([upstream_entry("u", url)], {"r": ["u"]}, **BREAKER)


async def test_apply_config_closes_the_open_circuit_of_a_changed_upstream(
    service_factory: StartService, open_registry: RegistryServer
) -> None:
    service = await service_factory(_one_upstream(_refusing_url()))
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await service.resolve("r", MANIFEST)
    breaker = service.resolver.prober.breaker
    assert breaker.state("u") is State.OPEN
    assert any(
        "circuit is open" in m for m in await _attempt_messages(service.resolve("r", MANIFEST))
    )

    changed = await service.resolver.apply_config(_one_upstream(open_registry.url))

    assert changed == {"u"}
    assert breaker.state("u") is State.CLOSED
    # The new url is probed at once, not refused for the old one's failures.
    try:
        reply = await service.resolve("r", MANIFEST)
    except grpc.aio.AioRpcError as exc:
        pytest.fail(f"the changed upstream was not probed: {error_details(exc).attempts}")
    assert reply.upstream.id == "u"
    assert reply.attempts[0].outcome == pb.ATTEMPT_OUTCOME_FOUND


async def test_admin_url_change_closes_the_open_circuit(open_registry: RegistryServer) -> None:
    svc = await start_admin_service(empty_config(**BREAKER))
    try:
        created = await svc.create_upstream("u", _refusing_url())
        await svc.create_registry("r")
        await svc.add("r", "u", position=1)
        request = pb.ResolveUpstreamRequest(registry_id="r", path=MANIFEST)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await svc.resolve_stub.ResolveUpstream(request, timeout=15)
        messages = await _attempt_messages(svc.resolve_stub.ResolveUpstream(request, timeout=15))
        assert any("circuit is open" in m for m in messages), messages

        await svc.update_upstream(created.name, ["url"], url=open_registry.url)

        try:
            reply = await svc.resolve_stub.ResolveUpstream(request, timeout=15)
        except grpc.aio.AioRpcError as exc:
            pytest.fail(f"the changed upstream was not probed: {error_details(exc).attempts}")
        assert reply.upstream.id == "u"
    finally:
        await svc.close()


async def test_apply_config_forgets_realm_address_classes_flow_and_tokens(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    proxy_factory: ProxyFactory,
) -> None:
    env: dict[str, str] = {}
    entry = upstream_entry(
        "tok", token_registry.url, credentials=token_registry.credentials, env=env
    )
    service = await service_factory(make_config([entry], {"r": ["tok"]}, env=env))
    first = await service.auth("tok", "private/app")
    assert first.scheme == "bearer"
    authenticator = service.resolver.authenticator
    exchanger = authenticator._exchanger
    guard = exchanger._guard
    # What the process now keeps for "tok": address classes, the working flow, a token key.
    assert "tok" in guard._upstream_classes
    assert "tok" in exchanger._working_flow
    assert authenticator._token_keys.get("tok")

    # The same token server behind another url (a proxy): the upstream's address may differ.
    moved = proxy_factory(token_registry)
    env2: dict[str, str] = {}
    entry2 = upstream_entry("tok", moved.url, credentials=token_registry.credentials, env=env2)
    await service.resolver.apply_config(make_config([entry2], {"r": ["tok"]}, env=env2))

    assert "tok" not in guard._upstream_classes, "the realm policy kept the old url's addresses"
    assert "tok" not in exchanger._working_flow
    assert "tok" not in authenticator._token_keys
    again = await service.auth("tok", "private/app")
    assert again.scheme == "bearer" and not again.cache_hit
    assert "tok" in guard._upstream_classes  # classified again, for the new url


async def test_realm_allow_hosts_change_counts_as_an_auth_change(
    service_factory: StartService,
) -> None:
    service = await service_factory(_one_upstream(_refusing_url()))
    before = service.resolver.config
    entry = upstream_entry("u", before.upstreams["u"].url, realm_allow_hosts=["auth.example"])
    changed = await service.resolver.apply_config(make_config([entry], {"r": ["u"]}, **BREAKER))
    assert changed == {"u"}


# --------------------------------------------------------------------------- 2. batched delete


def _token() -> CachedToken:
    return CachedToken(value="t0ken-value", expires_at=time.time() + 300)


async def _track_keys(
    authenticator: Authenticator, cache: RedisTokenCache, upstream_id: str, count: int
) -> list[str]:
    """Store ``count`` tokens for the upstream, remembered as a token fetch would."""
    keys = [
        cache_key(upstream_id, "http://realm", "svc", (f"repository:r{i}:pull",), "fp")
        for i in range(count)
    ]
    for key in keys:
        await cache.set(key, _token(), 120)
        authenticator._remember_key(upstream_id, key)
    return keys


async def _del_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_del", {}).get("calls", 0))


async def test_invalidate_deletes_all_keys_in_one_batch(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    cache = RedisTokenCache(redis_server.url, near_cache_seconds=5)
    async with httpx.AsyncClient() as client:
        authenticator = Authenticator(client, cache, Settings())
        keys = await _track_keys(authenticator, cache, "u", 600)
        other = await _track_keys(authenticator, cache, "v", 3)
        assert await redis_client.exists(*keys) == 600
        before = await _del_calls(redis_client)

        await authenticator.invalidate("u")

        assert await redis_client.exists(*keys) == 0
        assert await redis_client.exists(*other) == 3, "another upstream's tokens stay"
        # 600 keys in DELs of up to 256 keys, sent in one pipeline: 3 commands, not 600.
        assert await _del_calls(redis_client) - before <= 3
        assert all([await cache.get(key) is None for key in keys])
        assert not cache.degraded
    await cache.aclose()


async def test_invalidate_with_a_hung_redis_costs_one_socket_timeout_not_one_per_key(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    socket_timeout = 0.5
    cache = RedisTokenCache(redis_server.url, socket_timeout=socket_timeout, near_cache_seconds=30)
    async with httpx.AsyncClient() as client:
        authenticator = Authenticator(client, cache, Settings())
        keys = await _track_keys(authenticator, cache, "u", 200)
        more = await _track_keys(authenticator, cache, "v", 200)
        pid = redis_server.process.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # a hung Redis: connections open, nothing answers
        try:
            started = time.monotonic()
            try:
                await asyncio.wait_for(authenticator.invalidate("u"), timeout=10)
            except TimeoutError:
                pytest.fail("invalidating 200 keys with Redis hanging took more than 10 s")
            elapsed = time.monotonic() - started
            assert elapsed < socket_timeout * 3, f"took {elapsed:.2f}s"
            assert cache.degraded
            # Within the back-off Redis is not tried at all.
            started = time.monotonic()
            await asyncio.wait_for(authenticator.invalidate("v"), timeout=10)
            assert time.monotonic() - started < 0.2
            # The memory layers are cleared all the same (near cache and fallback).
            near = cache._near
            assert near is not None
            for key in [*keys, *more]:
                assert near.peek(key) is None
                assert await cache.get(key) is None  # degraded: answered from process memory
        finally:
            os.kill(pid, signal.SIGCONT)
    await cache.aclose()


# --------------------------------------------------------------------------- 3. cache metrics


def _recording_observer() -> tuple[object, list[tuple[str, str]]]:
    from vregistry_server.oci.observer import Observer  # imported here: new API

    lookups: list[tuple[str, str]] = []

    class Recording(Observer):
        def token_cache(self, layer: str, result: str) -> None:
            lookups.append((layer, result))

    return Recording(), lookups


async def test_each_token_cache_layer_counts_its_own_lookups(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    observer, lookups = _recording_observer()
    cache = RedisTokenCache(redis_server.url, near_cache_seconds=30, observer=observer)  # type: ignore[arg-type]
    writer = RedisTokenCache(redis_server.url)
    try:
        await writer.set("vregistry:token:v1:elsewhere", _token(), 60)
        # Near miss, then Redis hit (the token was written by another replica).
        assert await cache.get("vregistry:token:v1:elsewhere") is not None
        assert lookups == [("near", "miss"), ("redis", "hit")]
        lookups.clear()
        # Now in the near cache: a near hit and nothing else.
        assert await cache.get("vregistry:token:v1:elsewhere") is not None
        assert lookups == [("near", "hit")]
        lookups.clear()
        # Near miss, Redis miss.
        assert await cache.get("vregistry:token:v1:absent") is None
        assert lookups == [("near", "miss"), ("redis", "miss")]
        lookups.clear()
        # Redis down: the Redis lookup is an error (and the memory fallback counts its own).
        redis_server.stop()
        assert await cache.get("vregistry:token:v1:absent") is None
        counted = Counter(lookups)
        assert counted[("redis", "error")] == 1
        assert counted[("near", "miss")] == 1
        assert counted[("redis", "hit")] == counted[("redis", "miss")] == 0
        assert set(counted) <= {("near", "miss"), ("redis", "error"), ("memory", "miss")}
    finally:
        await writer.aclose()
        await cache.aclose()


_LAYERS = [
    ("near", "hit"),
    ("near", "miss"),
    ("redis", "hit"),
    ("redis", "miss"),
    ("redis", "error"),
]


def _cache_samples() -> dict[tuple[str, str], float]:
    return {
        (layer, result): metrics.REGISTRY.get_sample_value(
            "vregistry_token_cache_requests_total", {"layer": layer, "result": result}
        )
        or 0.0
        for layer, result in _LAYERS
    }


def _delta(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    after = _cache_samples()
    return {labels: after[labels] - before[labels] for labels in _LAYERS}


async def _token_service(
    service_factory: StartService, token_registry: RegistryServer, redis_server: RedisServer
) -> Service:
    """An in-process server (Prometheus observer) with Redis and the near cache on."""
    env: dict[str, str] = {}
    entry = upstream_entry(
        "tok", token_registry.url, credentials=token_registry.credentials, env=env
    )
    config = make_config(
        [entry], {"r": ["tok"]}, env=env, redis_url=redis_server.url, token_near_cache_seconds=30
    )
    return await service_factory(config)


async def test_prometheus_counts_a_near_hit_only_as_near(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
) -> None:
    service = await _token_service(service_factory, token_registry, redis_server)
    first = await service.auth("tok", "private/app")
    assert not first.cache_hit

    before = _cache_samples()
    second = await service.auth("tok", "private/app")
    assert second.cache_hit
    delta = _delta(before)
    assert delta[("near", "hit")] == 1
    assert delta[("redis", "hit")] == 0, "a near-cache hit was also counted as a Redis hit"
    assert delta[("redis", "miss")] == delta[("near", "miss")] == 0


async def test_prometheus_counts_a_failed_redis_lookup_as_error(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
) -> None:
    service = await _token_service(service_factory, token_registry, redis_server)
    await service.auth("tok", "private/app")  # Redis answered once: a pooled connection

    redis_server.stop()
    before = _cache_samples()
    reply = await service.auth("tok", "public/alpine")  # not in the near cache: asks Redis
    assert reply.scheme == "bearer"  # served all the same, through process memory
    delta = _delta(before)
    assert delta[("redis", "error")] == 1, f"a Redis failure was not counted as an error: {delta}"
    assert delta[("redis", "hit")] == delta[("redis", "miss")] == 0
