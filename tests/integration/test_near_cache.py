"""The near cache in front of Redis, the hot path's Redis round trips, and cold-miss collapsing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from tests.support.processes import RedisServer
from tests.support.registry import RegistryServer
from tests.support.service import Service, make_config, upstream_entry
from tests.support.token_server import TokenServer
from vregistry_server.oci.token_cache import CachedToken, RedisTokenCache

StartService = Callable[..., Awaitable[Service]]
TOKEN = CachedToken("near-token-value", 2_000_000_000.0)


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


async def _commands(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def test_near_cache_answers_without_redis_within_its_lifetime(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    writer = RedisTokenCache(redis_server.url)
    reader = RedisTokenCache(redis_server.url, near_cache_seconds=0.3)
    try:
        await writer.set("vregistry:token:v1:k", TOKEN, 60)
        assert await reader.get("vregistry:token:v1:k") == TOKEN  # from Redis, now near
        before = await _commands(redis_client)
        for _ in range(20):
            assert await reader.get("vregistry:token:v1:k") == TOKEN
        assert await _commands(redis_client) == before  # INFO itself is not counted
        # Another replica deletes the token: seen again once the near entry lapses.
        await writer.delete("vregistry:token:v1:k")
        assert await reader.get("vregistry:token:v1:k") == TOKEN
        await asyncio.sleep(0.35)
        assert await reader.get("vregistry:token:v1:k") is None
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_near_entry_never_outlives_the_redis_entry(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    writer = RedisTokenCache(redis_server.url)
    cache = RedisTokenCache(redis_server.url, near_cache_seconds=5)
    try:
        await cache.set("vregistry:token:v1:own", TOKEN, 0.15)  # stored by this replica
        await writer.set("vregistry:token:v1:other", TOKEN, 0.15)  # read through Redis
        assert await cache.get("vregistry:token:v1:other") == TOKEN
        assert await cache.get("vregistry:token:v1:own") == TOKEN
        await asyncio.sleep(0.25)
        assert await cache.get("vregistry:token:v1:own") is None
        assert await cache.get("vregistry:token:v1:other") is None
    finally:
        await writer.aclose()
        await cache.aclose()


async def test_near_cache_is_bounded_and_delete_drops_it(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    cache = RedisTokenCache(redis_server.url, near_cache_seconds=5, near_cache_entries=2)
    try:
        for name in ("a", "b", "c"):
            await cache.set(f"vregistry:token:v1:{name}", TOKEN, 60)
        await redis_client.flushdb()
        # "a" was evicted from the near layer, so it is read from (now empty) Redis.
        assert await cache.get("vregistry:token:v1:a") is None
        assert await cache.get("vregistry:token:v1:c") == TOKEN
        await cache.delete("vregistry:token:v1:c")
        assert await cache.get("vregistry:token:v1:c") is None
    finally:
        await cache.aclose()


def _config(registry: RegistryServer, **settings: object):  # type: ignore[no-untyped-def]
    env: dict[str, str] = {}
    entry = upstream_entry("token", registry.url, credentials=registry.credentials, env=env)
    return make_config([entry], {"r": ["token"]}, env=env, **settings)


@pytest.mark.parametrize(("near_seconds", "most"), [(5.0, 0), (0.0, 1)])
async def test_hot_path_makes_at_most_one_redis_round_trip(
    service_factory: StartService,
    token_registry: RegistryServer,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    near_seconds: float,
    most: int,
) -> None:
    config = _config(
        token_registry, redis_url=redis_server.url, token_near_cache_seconds=near_seconds
    )
    service = await service_factory(config)
    await service.auth("token", "private/app/manifests/v1")
    before = await _commands(redis_client)
    for _ in range(10):
        assert (await service.auth("token", "private/app/manifests/v1")).cache_hit
    # 10 calls: at most one Redis command each, none with the near cache.
    assert await _commands(redis_client) - before <= 10 * most


async def test_concurrent_cold_callers_cost_one_token_request_with_redis(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
) -> None:
    # Without the near cache every caller's cache read is a Redis round trip; a read that
    # was in flight while the fetch finished must not start a second token request.
    config = _config(token_registry, redis_url=redis_server.url, token_near_cache_seconds=0)
    service = await service_factory(config)
    await service.url_for("token", "")
    for round_ in range(3):
        path = f"private/race-{round_}/manifests/v1"
        before = token_server.count()
        replies = await asyncio.gather(*(service.auth("token", path) for _ in range(300)))
        assert {r.scheme for r in replies} == {"bearer"}
        assert token_server.count() - before == 1, [
            (r.method, r.scopes, r.status, r.username) for r in token_server.records
        ]
