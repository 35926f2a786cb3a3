"""Token cache keys and the in-memory cache (pure; Redis and the service are in
tests/integration/test_token_cache.py)."""

from __future__ import annotations

import asyncio

from vregistry_server.oci.token_cache import (
    KEY_PREFIX,
    CachedToken,
    MemoryTokenCache,
    cache_key,
)


def test_cache_key_separates_what_must_not_share_a_token() -> None:
    base = cache_key("up", "https://auth/token", "svc", ("repository:a:pull",), "fp1")
    assert base.startswith(KEY_PREFIX)
    assert base == cache_key("up", "https://auth/token", "svc", ("repository:a:pull",), "fp1")
    assert cache_key("up", "https://a/t", "svc", ("s1", "s2"), "f") == cache_key(
        "up", "https://a/t", "svc", ("s2", "s1"), "f"
    )
    variants = [
        cache_key("other", "https://auth/token", "svc", ("repository:a:pull",), "fp1"),
        cache_key("up", "https://evil/token", "svc", ("repository:a:pull",), "fp1"),
        cache_key("up", "https://auth/token", "svc2", ("repository:a:pull",), "fp1"),
        cache_key("up", "https://auth/token", "svc", ("repository:b:pull",), "fp1"),
        cache_key("up", "https://auth/token", "svc", ("repository:a:pull",), "fp2"),
    ]
    assert len(set(variants) | {base}) == 6


async def test_memory_cache_expiry_and_bound() -> None:
    cache = MemoryTokenCache(max_entries=3)
    for i in range(5):
        await cache.set(f"k{i}", CachedToken(f"t{i}", 0), 60)
    assert len(cache) == 3
    assert await cache.get("k0") is None
    assert (await cache.get("k4")) == CachedToken("t4", 0)
    await cache.set("short", CachedToken("t", 0), 0.05)
    await asyncio.sleep(0.1)
    assert await cache.get("short") is None
    assert "t4" not in repr(await cache.get("k4"))
