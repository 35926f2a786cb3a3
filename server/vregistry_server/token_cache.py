"""Where bearer tokens are kept between calls: Redis for a fleet, memory for one process.

Keys are a hash of (upstream, realm, service, scopes, credential fingerprint):
two upstreams with different credentials never share a token, one repository's
blobs and manifests share one, and nothing in a key can be turned back into a
credential. A Redis outage never fails a call: the cache falls back to process
memory and says so in the log until Redis answers again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY_PREFIX = "vregistry:token:v1:"


@dataclass(frozen=True, slots=True)
class CachedToken:
    value: str = field(repr=False)
    expires_at: float  # unix time


def cache_key(
    upstream_id: str, realm: str, service: str, scopes: Sequence[str], credential_fingerprint: str
) -> str:
    material = "\x00".join(
        [upstream_id, realm, service, " ".join(sorted(scopes)), credential_fingerprint]
    )
    return KEY_PREFIX + hashlib.sha256(material.encode()).hexdigest()


class TokenCache(Protocol):
    name: str

    async def get(self, key: str) -> CachedToken | None: ...

    async def set(self, key: str, token: CachedToken, ttl_seconds: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def aclose(self) -> None: ...


class MemoryTokenCache:
    """A bounded in-process cache; the oldest entries go first when it is full."""

    name = "memory"

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, tuple[CachedToken, float]] = OrderedDict()
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedToken | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        token, valid_until = entry
        if time.monotonic() >= valid_until:
            del self._entries[key]
            return None
        return token

    async def set(self, key: str, token: CachedToken, ttl_seconds: float) -> None:
        if ttl_seconds <= 0:
            return
        self._entries[key] = (token, time.monotonic() + ttl_seconds)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def aclose(self) -> None:
        self._entries.clear()


class RedisTokenCache:
    """Tokens shared by every replica through Redis, with a memory fallback for outages."""

    name = "redis"

    def __init__(self, url: str, *, socket_timeout: float = 0.5) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        self._fallback = MemoryTokenCache()
        self.degraded = False

    @property
    def client(self) -> aioredis.Redis:
        return self._redis

    async def get(self, key: str) -> CachedToken | None:
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            self._mark_degraded(exc)
            return await self._fallback.get(key)
        self._mark_healthy()
        return _decode(raw) if raw is not None else None

    async def set(self, key: str, token: CachedToken, ttl_seconds: float) -> None:
        ttl_ms = int(ttl_seconds * 1000)
        if ttl_ms <= 0:
            return
        await self._fallback.set(key, token, ttl_seconds)
        try:
            await self._redis.set(key, _encode(token), px=ttl_ms)
        except (RedisError, OSError) as exc:
            self._mark_degraded(exc)
            return
        self._mark_healthy()

    async def delete(self, key: str) -> None:
        await self._fallback.delete(key)
        try:
            await self._redis.delete(key)
        except (RedisError, OSError) as exc:
            self._mark_degraded(exc)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _mark_degraded(self, exc: Exception) -> None:
        if not self.degraded:
            self.degraded = True
            log.warning(
                "token cache degraded: Redis unreachable, using process memory",
                extra={"error": type(exc).__name__},
            )

    def _mark_healthy(self) -> None:
        if self.degraded:
            self.degraded = False
            log.info("token cache recovered: Redis answers again")


def _encode(token: CachedToken) -> str:
    return json.dumps({"t": token.value, "e": token.expires_at}, separators=(",", ":"))


def _decode(raw: bytes | str) -> CachedToken | None:
    try:
        data = json.loads(raw)
        return CachedToken(value=str(data["t"]), expires_at=float(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None  # an entry we cannot read is a miss, never an error
