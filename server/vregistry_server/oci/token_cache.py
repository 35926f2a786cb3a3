"""Where bearer tokens are kept between calls: Redis for a fleet, memory for one process.

Keys are a hash of (upstream, realm, service, scopes, credential fingerprint):
two upstreams with different credentials never share a token, one repository's
blobs and manifests share one, and nothing in a key can be turned back into a
credential. A Redis outage never fails a call: the cache falls back to process
memory and says so in the log until Redis answers again.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.exceptions import RedisError

from vregistry_server.oci.observer import NULL_OBSERVER, Observer
from vregistry_server.redis_topology import connect

log = logging.getLogger(__name__)

KEY_PREFIX = "vregistry:token:v1:"
REDIS_RETRY_SECONDS = 1.0
MAX_REDIS_CONNECTIONS = 32
# Keys per DEL command in a batched delete; more keys go as several DELs in one pipeline.
DELETE_CHUNK_KEYS = 256
_SEALED_PREFIX = "aesgcm1:"


@dataclass(frozen=True, slots=True)
class CachedToken:
    value: str = field(repr=False)
    expires_at: float  # unix time


@functools.lru_cache(maxsize=4096)
def cache_key(
    upstream_id: str, realm: str, service: str, scopes: tuple[str, ...], credential_fingerprint: str
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

    async def delete_many(self, keys: Collection[str]) -> None:
        """Delete many keys at once: one round trip, not one per key."""
        ...

    async def aclose(self) -> None: ...


class MemoryTokenCache:
    """A bounded in-process cache; the oldest entries go first when it is full."""

    name = "memory"

    def __init__(self, max_entries: int = 10_000, *, observer: Observer = NULL_OBSERVER) -> None:
        self._entries: OrderedDict[str, tuple[CachedToken, float]] = OrderedDict()
        self._max_entries = max_entries
        self._observer = observer

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedToken | None:
        token = self.peek(key)
        self._observer.token_cache(self.name, "miss" if token is None else "hit")
        return token

    def peek(self, key: str) -> CachedToken | None:
        """``get`` without a coroutine, for callers on the hot path."""
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

    async def delete_many(self, keys: Collection[str]) -> None:
        for key in keys:
            self._entries.pop(key, None)

    async def aclose(self) -> None:
        self._entries.clear()


class RedisTokenCache:
    """Tokens shared by every replica through Redis, with a memory fallback for outages."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 0.5,
        near_cache_seconds: float = 0.0,
        near_cache_entries: int = 4096,
        encryption_key: bytes | None = None,
        ca_file: str | None = None,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self._observer = observer
        self._aead = AESGCM(encryption_key) if encryption_key else None
        # A bounded pool: a burst of cold callers queues for a connection instead of
        # opening hundreds of sockets at once (whose handshakes then time out and
        # degrade the cache for everyone).
        self._redis = connect(
            url,
            socket_timeout=socket_timeout,
            max_connections=MAX_REDIS_CONNECTIONS,
            blocking_pool=True,
            ca_file=ca_file,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        self._fallback = MemoryTokenCache(observer=observer)
        self.degraded = False
        # While degraded, Redis is only tried again after this time (monotonic): a Redis
        # that hangs instead of refusing would otherwise cost every call a socket timeout.
        self._retry_at = 0.0
        self._stale_connections = False
        # The near cache: a small in-process layer in front of Redis, so the hot path
        # usually makes no Redis round trip at all. An entry lives at most
        # ``near_cache_seconds`` and never past the Redis entry's own TTL, so a token
        # deleted or replaced by another replica is seen again within that bound.
        self.near_cache_seconds = near_cache_seconds
        self._near = MemoryTokenCache(near_cache_entries) if near_cache_seconds > 0 else None

    def _skip_redis(self) -> bool:
        return self.degraded and time.monotonic() < self._retry_at

    async def _drop_stale_connections(self) -> None:
        """After a failure, the idle pooled connections are to the Redis that failed.

        A restarted Redis would otherwise fail one stale connection per back-off period,
        so the cache would stay degraded for as many seconds as the pool held
        connections; dropping the idle ones makes the next try use a fresh connection.
        """
        if not self._stale_connections:
            return
        self._stale_connections = False
        with contextlib.suppress(RedisError, OSError):
            await self._redis.connection_pool.disconnect(inuse_connections=False)

    async def get(self, key: str) -> CachedToken | None:
        if self._skip_redis():
            return await self._fallback.get(key)
        near = self._near
        await self._drop_stale_connections()
        if near is None:
            try:
                raw = await self._redis.get(key)
            except (RedisError, OSError) as exc:
                self._mark_degraded(exc)
                return await self._fallback.get(key)
            self._mark_healthy()
            return self._counted(self._decode(key, raw) if raw is not None else None)
        token = near.peek(key)
        if token is not None:
            self._observer.token_cache("near", "hit")
            return token
        self._observer.token_cache("near", "miss")
        try:
            # One round trip: the value and how long Redis keeps it.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, pttl_ms = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._mark_degraded(exc)
            return await self._fallback.get(key)
        self._mark_healthy()
        token = self._counted(self._decode(key, raw) if raw is not None else None)
        if token is not None and isinstance(pttl_ms, int) and pttl_ms > 0:
            await near.set(key, token, min(self.near_cache_seconds, pttl_ms / 1000))
        return token

    def _counted(self, token: CachedToken | None) -> CachedToken | None:
        self._observer.token_cache(self.name, "miss" if token is None else "hit")
        return token

    async def set(self, key: str, token: CachedToken, ttl_seconds: float) -> None:
        ttl_ms = int(ttl_seconds * 1000)
        if ttl_ms <= 0:
            return
        await self._fallback.set(key, token, ttl_seconds)
        if self._near is not None:
            await self._near.set(key, token, min(self.near_cache_seconds, ttl_seconds))
        if self._skip_redis():
            return
        await self._drop_stale_connections()
        try:
            await self._redis.set(key, self._encode(key, token), px=ttl_ms)
        except (RedisError, OSError) as exc:
            self._mark_degraded(exc)
            return
        self._mark_healthy()

    async def delete(self, key: str) -> None:
        await self.delete_many((key,))

    async def delete_many(self, keys: Collection[str]) -> None:
        """Drop the keys from every layer: memory at once, Redis in one round trip.

        While degraded (within the back-off) Redis is not tried at all, like ``get`` and
        ``set``: a Redis that hangs would otherwise cost a socket timeout per call, and
        a configuration change deletes up to a thousand keys per upstream.
        """
        if not keys:
            return
        await self._fallback.delete_many(keys)
        if self._near is not None:
            await self._near.delete_many(keys)
        if self._skip_redis():
            return
        await self._drop_stale_connections()
        batch = list(keys)
        try:
            if len(batch) <= DELETE_CHUNK_KEYS:
                await self._redis.delete(*batch)
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for start in range(0, len(batch), DELETE_CHUNK_KEYS):
                        pipe.delete(*batch[start : start + DELETE_CHUNK_KEYS])
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            self._mark_degraded(exc)
            return
        self._mark_healthy()

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _encode(self, key: str, token: CachedToken) -> str:
        plain = _encode(token)
        if self._aead is None:
            return plain
        # The cache key is the associated data: a value cannot be replayed under another key.
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plain.encode(), key.encode())
        return _SEALED_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def _decode(self, key: str, raw: bytes | str) -> CachedToken | None:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if self._aead is None:
            return _decode(text)
        if not text.startswith(_SEALED_PREFIX):
            return None  # written without encryption (or by a misconfigured replica): a miss
        try:
            blob = base64.b64decode(text[len(_SEALED_PREFIX) :])
            plain = self._aead.decrypt(blob[:12], blob[12:], key.encode())
        except (ValueError, InvalidTag):
            return None  # another key (rotation) or tampering: a miss, never an error
        return _decode(plain)

    def _mark_degraded(self, exc: Exception) -> None:
        self._observer.token_cache(self.name, "error")
        self._stale_connections = True
        self._retry_at = time.monotonic() + REDIS_RETRY_SECONDS
        if not self.degraded:
            self.degraded = True
            self._observer.token_cache_degraded(True)
            log.warning(
                "token cache degraded: Redis unreachable, using process memory",
                extra={"error": type(exc).__name__},
            )

    def _mark_healthy(self) -> None:
        if self.degraded:
            self.degraded = False
            self._observer.token_cache_degraded(False)
            log.info("token cache recovered: Redis answers again")


def _encode(token: CachedToken) -> str:
    return json.dumps({"t": token.value, "e": token.expires_at}, separators=(",", ":"))


def _decode(raw: bytes | str) -> CachedToken | None:
    try:
        data = json.loads(raw)
        return CachedToken(value=str(data["t"]), expires_at=float(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None  # an entry we cannot read is a miss, never an error
