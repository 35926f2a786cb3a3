"""Where bearer tokens are kept between calls: Redis for a fleet, memory for one process.

Keys are a hash of (upstream, realm, service, scopes, credential fingerprint):
two upstreams with different credentials never share a token, one repository's
blobs and manifests share one, and nothing in a key can be turned back into a
credential. A Redis outage never fails a call: the cache falls back to process
memory and says so in the log until Redis answers again.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import functools
import hashlib
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.commands.core import AsyncScript

from vregistry_server.oci.observer import NULL_OBSERVER, Observer
from vregistry_server.redis_topology import (
    REDIS_DOWN,
    RedisOutage,
    close_bounded,
    connect,
    is_cluster,
)

log = logging.getLogger(__name__)

KEY_PREFIX = "vregistry:token:v1:"
MAX_REDIS_CONNECTIONS = 32
# How long a call waits for a pooled connection: a queue behind a healthy Redis under a
# cold burst, not an outage (a hung Redis still fails each command at its socket timeout).
POOL_WAIT_SECONDS = 2.0
# Keys per DEL command in a batched delete; more keys go as several DELs in one pipeline.
DELETE_CHUNK_KEYS = 256
# Lease claims per pipeline; more queued claims go in the next round trip.
CLAIMS_PER_ROUND_TRIP = 512
_SEALED_PREFIX = "aesgcm1:"
LEASE_SUFFIX = ":lease"


@dataclass(frozen=True, slots=True)
class CachedToken:
    value: str = field(repr=False)
    expires_at: float  # unix time


class ClaimState(enum.Enum):
    """What a replica may do about a token nobody in this process holds (``claim_fetch``)."""

    CACHED = "cached"  # another replica stored it meanwhile: use it
    OWNED = "owned"  # this replica holds the fetch lease: fetch, store, release
    HELD = "held"  # another replica holds the lease: ask again a little later
    UNSHARED = "unshared"  # no shared cache (memory only, Redis degraded): fetch alone


@dataclass(frozen=True, slots=True)
class FetchClaim:
    state: ClaimState
    token: CachedToken | None = None  # CACHED only
    owner: str = ""  # OWNED only: the random id that alone may renew and release the lease
    held_seconds: float = 0.0  # HELD only: how long the other replica's lease has left


UNSHARED_CLAIM = FetchClaim(ClaimState.UNSHARED)


def lease_key(key: str) -> str:
    """The fetch lease of a token key, in the same Redis Cluster slot as the key.

    A hash tag is the first ``{...}`` of a key; token keys have none, so ``{key}``
    hashes exactly as ``key`` does and one script may touch both on a cluster.
    """
    return "{" + key + "}" + LEASE_SUFFIX


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

    def held_locally(self, key: str) -> tuple[str, float] | None:
        """The layer that would answer ``get(key)`` from this process's memory, without a
        round trip, and until when (``time.monotonic()``); None when ``get`` would ask
        Redis (or has nothing)."""
        ...

    async def delete_many(self, keys: Collection[str]) -> None:
        """Delete many keys at once: one round trip, not one per key."""
        ...

    async def claim_fetch(self, key: str, lease_seconds: float) -> FetchClaim:
        """Before fetching a missing token: the token if another replica stored it since,
        else this replica's lease to fetch it if no other replica holds one (one round trip)."""
        ...

    async def renew_fetch(self, key: str, owner: str, lease_seconds: float) -> None:
        """Keep an owned lease alive while its fetch runs."""
        ...

    async def release_fetch(self, key: str, owner: str) -> None:
        """Give up an owned lease (after storing the token, or after the fetch failed)."""
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

    def held_locally(self, key: str) -> tuple[str, float] | None:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() >= entry[1]:
            return None
        return self.name, entry[1]

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

    # One process, nothing to share: its single-flight already makes one fetch per key.
    async def claim_fetch(self, key: str, lease_seconds: float) -> FetchClaim:
        return UNSHARED_CLAIM

    async def renew_fetch(self, key: str, owner: str, lease_seconds: float) -> None:
        return None

    async def release_fetch(self, key: str, owner: str) -> None:
        return None

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
            pool_timeout=POOL_WAIT_SECONDS,
            ca_file=ca_file,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        self._fallback = MemoryTokenCache(observer=observer)
        self._outage = RedisOutage(self._redis, "token cache", log, observer.token_cache_degraded)
        # The near cache: a small in-process layer in front of Redis, so the hot path
        # usually makes no Redis round trip at all. An entry lives at most
        # ``near_cache_seconds`` and never past the Redis entry's own TTL, so a token
        # deleted or replaced by another replica is seen again within that bound.
        self.near_cache_seconds = near_cache_seconds
        self._near = MemoryTokenCache(near_cache_entries) if near_cache_seconds > 0 else None

    @property
    def degraded(self) -> bool:
        return self._outage.degraded

    def _skip_redis(self) -> bool:
        return self._outage.skip()

    async def get(self, key: str) -> CachedToken | None:
        if self._skip_redis():
            return await self._fallback.get(key)
        near = self._near
        await self._outage.before_try()
        if near is None:
            try:
                raw = await self._redis.get(key)
            except REDIS_DOWN as exc:
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
        except REDIS_DOWN as exc:
            self._mark_degraded(exc)
            return await self._fallback.get(key)
        self._mark_healthy()
        token = self._counted(self._decode(key, raw) if raw is not None else None)
        if token is not None and isinstance(pttl_ms, int) and pttl_ms > 0:
            await near.set(key, token, min(self.near_cache_seconds, pttl_ms / 1000))
        return token

    def held_locally(self, key: str) -> tuple[str, float] | None:
        # Only the near cache, and only while Redis answers: during an outage ``get`` reads
        # the fallback, and once Redis is back it asks Redis again.
        if self._near is None or self.degraded:
            return None
        held = self._near.held_locally(key)
        return None if held is None else ("near", held[1])

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
        await self._outage.before_try()
        try:
            await self._redis.set(key, self._encode(key, token), px=ttl_ms)
        except REDIS_DOWN as exc:
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
        await self._outage.before_try()
        batch = list(keys)
        try:
            # A cluster client splits one DEL by slot itself (one pipeline per node); a
            # multi-key DEL in its pipeline would be refused as cross-slot.
            if len(batch) <= DELETE_CHUNK_KEYS or is_cluster(self._redis):
                await self._redis.delete(*batch)
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for start in range(0, len(batch), DELETE_CHUNK_KEYS):
                        pipe.delete(*batch[start : start + DELETE_CHUNK_KEYS])
                    await pipe.execute()
        except REDIS_DOWN as exc:
            self._mark_degraded(exc)
            return
        self._mark_healthy()

    # ------------------------------------------------------------------ fetch leases

    async def claim_fetch(self, key: str, lease_seconds: float) -> FetchClaim:
        """The token, or the lease (``SET NX PX`` with a random owner), or how long it is held.

        Claims made while a round trip is out are sent together in one pipeline: during
        a cold burst over many keys, each waiting key polls, and one process would
        otherwise hold a pooled connection per key and per poll.
        Redis unreachable or degraded: UNSHARED, and the replica fetches for itself as it
        did before leases existed; a lease is an optimisation, never a reason to fail.
        """
        if self._skip_redis():
            return UNSHARED_CLAIM
        owner = secrets.token_hex(16)
        reply = await self._claims.send(key, owner, _lease_ms(lease_seconds))
        if reply is None:
            return UNSHARED_CLAIM
        return await self._claim_from_reply(key, owner, reply)

    async def _send_claims(self, batch: Sequence[tuple[str, str, int]]) -> list[Any] | None:
        """One pipeline of claim scripts; None when Redis failed (the cache is degraded)."""
        await self._outage.before_try()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, owner, lease_ms in batch:
                    # EVAL, not EVALSHA: nothing to reload after a failover or a restart.
                    pipe.eval(_CLAIM_SCRIPT, 2, key, lease_key(key), owner, lease_ms)
                replies: list[Any] = await pipe.execute()
        except REDIS_DOWN as exc:
            self._mark_degraded(exc)
            return None
        self._mark_healthy()
        return replies

    @functools.cached_property
    def _claims(self) -> _Batcher:
        return _Batcher(self._send_claims)

    async def _claim_from_reply(self, key: str, owner: str, reply: list[Any]) -> FetchClaim:
        code = reply[0]
        if code == _CLAIM_OWNED:
            return FetchClaim(ClaimState.OWNED, owner=owner)
        if code == _CLAIM_HELD:
            pttl = reply[1]
            return FetchClaim(ClaimState.HELD, held_seconds=_seconds(pttl))
        raw = reply[1]
        token = self._decode(key, raw) if isinstance(raw, (bytes, str)) else None
        if token is None:
            return UNSHARED_CLAIM  # a value we cannot read (another encryption key): fetch
        pttl_seconds = _seconds(reply[2])
        if self._near is not None and pttl_seconds > 0:
            await self._near.set(key, token, min(self.near_cache_seconds, pttl_seconds))
        return FetchClaim(ClaimState.CACHED, token=token)

    async def renew_fetch(self, key: str, owner: str, lease_seconds: float) -> None:
        await self._lease_call(
            self._lease_scripts.renew, lease_key(key), owner, _lease_ms(lease_seconds)
        )

    async def release_fetch(self, key: str, owner: str) -> None:
        await self._lease_call(self._lease_scripts.release, lease_key(key), owner)

    async def _lease_call(self, script: AsyncScript, lease: str, *args: str | int) -> None:
        # Compare-and-act on the owner id: a lease that expired and was taken by another
        # replica is that replica's now, and must be neither extended nor deleted by us.
        if self._skip_redis():
            return
        try:
            await script(keys=[lease], args=list(args))
        except REDIS_DOWN as exc:
            self._mark_degraded(exc)
            return
        self._mark_healthy()

    @functools.cached_property
    def _lease_scripts(self) -> _LeaseScripts:
        return _LeaseScripts(
            renew=self._redis.register_script(_RENEW_SCRIPT),
            release=self._redis.register_script(_RELEASE_SCRIPT),
        )

    async def aclose(self) -> None:
        await close_bounded(self._redis.aclose(), "token cache")

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
        self._outage.failed(exc)

    def _mark_healthy(self) -> None:
        self._outage.answered()


# KEYS[1] the token key, KEYS[2] its lease (same slot: ``lease_key``);
# ARGV[1] a random owner id, ARGV[2] the lease in milliseconds.
# Reply {1, value, pttl}: stored by another replica; {2}: the lease is ours; {3, pttl}: held.
_CLAIM_SCRIPT = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value, redis.call('PTTL', KEYS[1])} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3, redis.call('PTTL', KEYS[2])}
"""
_CLAIM_OWNED = 2
_CLAIM_HELD = 3
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_Claim = tuple[str, str, int]  # key, owner, lease ms


class _Batcher:
    """Sends the claims queued while a send is out together, in arrival order."""

    def __init__(self, send: Callable[[Sequence[_Claim]], Awaitable[list[Any] | None]]) -> None:
        self._send = send
        self._queue: list[tuple[_Claim, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def send(self, key: str, owner: str, lease_ms: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(((key, owner, lease_ms), future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        batch: list[tuple[_Claim, asyncio.Future[Any]]] = []
        try:
            while self._queue:  # claims queued during a send go in the next one
                batch = self._queue[:CLAIMS_PER_ROUND_TRIP]
                del self._queue[:CLAIMS_PER_ROUND_TRIP]
                replies = await self._send([claim for claim, _ in batch])
                for index, (_, future) in enumerate(batch):
                    if not future.done():  # its caller may have been cancelled
                        future.set_result(None if replies is None else replies[index])
        except BaseException as exc:
            # No caller may wait forever on a claim: they all get what stopped the send.
            for _, future in [*batch, *self._queue]:
                if not future.done():
                    future.set_exception(exc) if isinstance(exc, Exception) else future.cancel()
            self._queue.clear()
            raise
        finally:
            self._flusher = None


@dataclass(frozen=True, slots=True)
class _LeaseScripts:
    renew: AsyncScript
    release: AsyncScript


def _lease_ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _seconds(pttl_ms: object) -> float:
    # PTTL is -1 (no expiry) or -2 (gone) in the edge cases: no time left to count on.
    return pttl_ms / 1000 if isinstance(pttl_ms, int) and pttl_ms > 0 else 0.0


def _encode(token: CachedToken) -> str:
    return json.dumps({"t": token.value, "e": token.expires_at}, separators=(",", ":"))


def _decode(raw: bytes | str) -> CachedToken | None:
    try:
        data = json.loads(raw)
        return CachedToken(value=str(data["t"]), expires_at=float(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None  # an entry we cannot read is a miss, never an error
