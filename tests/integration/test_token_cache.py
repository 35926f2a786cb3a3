"""Token caches: Redis shared by two server instances, the in-memory default, and the keys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from tests.support.processes import RedisServer
from tests.support.registry import RegistryServer
from tests.support.service import Service, make_config, upstream_entry
from tests.support.token_server import TokenServer
from vregistry_server.oci.token_cache import (
    KEY_PREFIX,
    CachedToken,
    RedisTokenCache,
)

StartService = Callable[..., Awaitable[Service]]
PASSWORD = "s3cret-token-pw"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> aioredis.Redis:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client  # type: ignore[misc]
    await client.aclose()


def _config(registry: RegistryServer, **settings: object):  # type: ignore[no-untyped-def]
    env: dict[str, str] = {}
    entry = upstream_entry("token", registry.url, credentials=registry.credentials, env=env)
    return make_config([entry], {"r": ["token"]}, env=env, **settings)


async def test_two_instances_share_tokens_through_redis(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
) -> None:
    config = _config(token_registry, redis_url=redis_server.url)
    first = await service_factory(config)
    second = await service_factory(config)
    assert first.resolver.cache.name == second.resolver.cache.name == "redis"
    one = await first.auth("token", "private/app/manifests/v1")
    two = await second.auth("token", "private/app/manifests/v1")
    assert not one.cache_hit and two.cache_hit
    assert one.headers == two.headers
    assert token_server.count() == 1
    # Both replicas resolve with the shared token as well.
    assert (await second.resolve("r", "private/app/manifests/v1")).upstream.id == "token"
    assert token_server.count() == 1


async def test_redis_keys_hold_no_credential_and_expire(
    service_factory: StartService,
    token_registry: RegistryServer,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
) -> None:
    service = await service_factory(_config(token_registry, redis_url=redis_server.url))
    reply = await service.auth("token", "private/app/manifests/v1")
    keys = [k.decode() for k in await redis_client.keys("*")]
    assert len(keys) == 1
    (key,) = keys
    assert key.startswith(KEY_PREFIX)
    for secret in (PASSWORD, "bob", "private/app"):
        assert secret not in key
    ttl = await redis_client.pttl(key)
    assert 170_000 < ttl <= 180_000, "capped by the 180 s default"
    value = (await redis_client.get(key)).decode()
    assert PASSWORD not in value
    assert reply.headers["Authorization"].removeprefix("Bearer ") in value


async def test_in_memory_default_without_redis(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await service_factory(_config(token_registry))
    assert service.resolver.cache.name == "memory"
    await service.auth("token", "private/app/manifests/v1")
    assert (await service.auth("token", "private/app/manifests/v1")).cache_hit
    assert token_server.count() == 1


async def test_redis_outage_degrades_to_memory_and_recovers(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    redis_server: RedisServer,
) -> None:
    service = await service_factory(_config(token_registry, redis_url=redis_server.url))
    redis_server.stop()
    reply = await service.auth("token", "private/app/manifests/v1")
    assert reply.scheme == "bearer"
    cache = service.resolver.cache
    assert isinstance(cache, RedisTokenCache) and cache.degraded
    # Meanwhile tokens are held in process memory.
    assert (await service.auth("token", "private/app/manifests/v1")).cache_hit
    redis_server.start()
    for attempt in range(50):  # bounded: the client reconnects by itself
        await service.auth("token", f"private/other{attempt}/manifests/v1")
        if not cache.degraded:
            break
        await asyncio.sleep(0.1)
    assert not cache.degraded


async def test_redis_values_encrypted_and_bound_to_their_key(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    key_a, key_b = bytes(range(32)), bytes(range(1, 33))
    cache = RedisTokenCache(redis_server.url, encryption_key=key_a)
    other = RedisTokenCache(redis_server.url, encryption_key=key_b)
    plain = RedisTokenCache(redis_server.url)
    try:
        token = CachedToken("eyJhbGciOi.payload-secret.signature", 2_000_000_000.0)
        await cache.set("vregistry:token:v1:a", token, 60)
        raw = await redis_client.get("vregistry:token:v1:a")
        assert raw is not None and b"payload-secret" not in raw and raw.startswith(b"aesgcm1:")
        assert await cache.get("vregistry:token:v1:a") == token
        assert await other.get("vregistry:token:v1:a") is None, "a wrong key cannot decrypt"
        assert await plain.get("vregistry:token:v1:a") is None
        # A value copied under another key does not decrypt there (the key is bound in).
        await redis_client.set("vregistry:token:v1:b", raw)
        assert await cache.get("vregistry:token:v1:b") is None
    finally:
        for c in (cache, other, plain):
            await c.aclose()


async def test_redis_stopping_under_load_fails_no_rpc(
    service_factory: StartService,
    token_registry: RegistryServer,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
) -> None:
    # No near cache: every call goes to Redis, so the outage hits every call.
    config = _config(token_registry, redis_url=redis_server.url, token_near_cache_seconds=0)
    service = await service_factory(config)
    repositories = [f"private/app{i}" for i in range(5)]
    failures: list[BaseException] = []
    done = asyncio.Event()
    calls = 0

    async def caller(index: int) -> None:
        nonlocal calls
        while not done.is_set():
            repo = repositories[index % len(repositories)]
            try:
                if index % 2:
                    await service.auth("token", repo)
                else:
                    await service.resolve("r", "private/app/manifests/v1")
            except BaseException as exc:
                failures.append(exc)
            calls += 1

    callers = [asyncio.ensure_future(caller(i)) for i in range(16)]
    try:
        await asyncio.sleep(0.3)
        redis_server.stop()
        await asyncio.sleep(0.6)
        cache = service.resolver.cache
        assert isinstance(cache, RedisTokenCache) and cache.degraded
        redis_server.start()
        for _ in range(50):  # bounded wait for the client to reconnect by itself
            if not cache.degraded:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
    finally:
        done.set()
        await asyncio.gather(*callers)
    assert not failures, failures[:3]
    assert calls > 100
    assert not cache.degraded


async def test_hanging_redis_costs_one_timeout_not_one_per_call(
    service_factory: StartService,
    token_registry: RegistryServer,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
) -> None:
    import os
    import signal
    import time

    # A Redis that hangs (here: SIGSTOP) answers nothing, so each command waits for the
    # socket timeout; while degraded the cache goes to Redis at most once a second.
    config = _config(token_registry, redis_url=redis_server.url, token_near_cache_seconds=0)
    service = await service_factory(config)
    await service.auth("token", "private/app")
    pid = redis_server.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        for _ in range(40):
            reply = await service.auth("token", "private/app")
            assert reply.scheme == "bearer"
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"40 calls took {elapsed:.2f}s with Redis hanging"
        cache = service.resolver.cache
        assert isinstance(cache, RedisTokenCache) and cache.degraded
    finally:
        os.kill(pid, signal.SIGCONT)
    for _ in range(40):  # bounded: recovers within a retry interval or two
        await service.auth("token", "private/app")
        if not cache.degraded:
            break
        await asyncio.sleep(0.1)
    assert not cache.degraded
