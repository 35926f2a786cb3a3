"""The shared store: Redis, for several replicas, with change notification.

Layout: every key carries the hash tag ``{vregistry:config:v1}`` (so on a Redis Cluster
they all live in one slot, and a transaction may touch them together): ``...:generation``
(a counter), ``...:upstreams`` and ``...:registries`` (hashes of id -> JSON document;
credentials sealed with AES-GCM, never plain). A commit is WATCH generation / MULTI / EXEC
(on a cluster, redis-py's transactional cluster pipeline, which needs exactly that one
slot), so concurrent writers on different replicas serialize; the same transaction
PUBLISHes the new generation on ``...:changes``, and every replica reloads when it hears
it. On a cluster that is sharded pub/sub (SPUBLISH / SSUBSCRIBE, Redis 7): the channel has
the keys' slot, so it can be part of the transaction, which redis-py refuses for a classic
PUBLISH (no slot); one server and Sentinel keep classic pub/sub (any Redis version). A
replica also polls the counter, so a missed
message (a Redis restart, a failover, a dropped subscription) delays a change by seconds,
never forever.

Stores written before the hash tag (keys ``vregistry:config:v1:generation`` ...) are moved
to the new names once, atomically, by the first replica that opens them (``open``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, cast

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from vregistry_server.admin.crypto import Keyring
from vregistry_server.admin.records import (
    RecordCache,
    ResealOutcome,
    State,
    check_resealed,
    registry_to_doc,
    reseal_doc,
    state_from_docs,
    upstream_to_doc,
)
from vregistry_server.admin.stores.base import Changes, Conflict
from vregistry_server.errors import StoreUnavailable
from vregistry_server.redis_topology import (
    REDIS_DOWN,
    RedisClient,
    close_bounded,
    connect,
    is_cluster,
    redact_redis_url,
)

log = logging.getLogger(__name__)

PREFIX = "{vregistry:config:v1}:"
GENERATION = PREFIX + "generation"
UPSTREAMS = PREFIX + "upstreams"
REGISTRIES = PREFIX + "registries"
CHANNEL = PREFIX + "changes"
# The names before the hash tag (single-server stores only: a cluster could not hold them).
LEGACY_PREFIX = "vregistry:config:v1:"
_MIGRATED = ("generation", "upstreams", "registries")
# Moves the old keys to the new names unless the new store already exists: atomic, so two
# replicas starting together migrate once, and a store written since is never overwritten.
_MIGRATE_SCRIPT = """
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, 3 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('RENAME', KEYS[i], KEYS[i + 3]) end
end
return 1
"""
# A reload this often even without a message: covers a Redis that lost its data.
FULL_RELOAD_SECONDS = 10.0


class RedisStore:
    name = "redis"

    def __init__(
        self,
        url: str,
        keyring: Keyring | None,
        *,
        socket_timeout: float = 2.0,
        ca_file: str | None = None,
    ) -> None:
        self._redis = connect(
            url,
            socket_timeout=socket_timeout,
            ca_file=ca_file,
            # A connection broken by a Redis restart is replaced, not reported.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.location = redact_redis_url(url)
        self._keyring = keyring
        self._records = RecordCache()
        self._pubsub: Any = None
        # Cluster: sharded pub/sub (SPUBLISH in the commit's transaction, SSUBSCRIBE).
        self._cluster = is_cluster(self._redis)
        self._last_full_reload = time.monotonic()

    @property
    def client(self) -> RedisClient:
        return self._redis

    async def open(self) -> None:
        try:
            await self._migrate_legacy_keys()
            await self._redis.setnx(GENERATION, 0)
        except REDIS_DOWN as exc:
            raise StoreUnavailable(f"cannot reach the Redis store: {type(exc).__name__}") from None
        await self._subscribe()

    async def _migrate_legacy_keys(self) -> None:
        """Move a store written under the old key names (one server or Sentinel only).

        On a cluster the old names hash to different slots, so no script may touch them
        together; and no cluster store can have them: the single-server client that wrote
        them could not talk to a cluster.
        """
        if is_cluster(self._redis):
            return
        keys = [LEGACY_PREFIX + name for name in _MIGRATED] + [PREFIX + n for n in _MIGRATED]
        moved = await self._redis.eval(_MIGRATE_SCRIPT, len(keys), *keys)
        if moved:
            log.info(
                "config store: moved the keys to their hash-tagged names",
                extra={"store": self.location},
            )

    async def _subscribe(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        if self._cluster:
            await pubsub.ssubscribe(CHANNEL)
        else:
            await pubsub.subscribe(CHANNEL)
        self._pubsub = pubsub

    async def _next_message(self, wait_seconds: float) -> Any:
        """The next change message, or None after ``wait_seconds``.

        redis-py answers None at once for a (un)subscribe confirmation it skips, so the wait
        goes on until a real message or the deadline.
        """
        deadline = time.monotonic() + wait_seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._cluster:
                message = await self._pubsub.get_sharded_message(
                    ignore_subscribe_messages=True, timeout=left
                )
            else:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=left
                )
            if message is not None:
                return message
            # Not a busy loop if the client returns at once with nothing (no subscription
            # left after a failover, until it is made again).
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return None

    async def load(self) -> State:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(GENERATION)
                pipe.hgetall(UPSTREAMS)
                pipe.hgetall(REGISTRIES)
                generation, upstream_docs, registry_docs = await pipe.execute()
        except REDIS_DOWN as exc:
            raise StoreUnavailable(f"cannot read the Redis store: {type(exc).__name__}") from None
        # In a worker thread: opening credentials may derive fingerprints (PBKDF2).
        return await asyncio.to_thread(
            state_from_docs,
            int(generation or 0),
            upstream_docs.values(),
            registry_docs.values(),
            self._keyring,
            self._records,
        )

    async def commit(self, expected_generation: int, changes: Changes) -> int:
        upstream_docs = {
            u.id: json.dumps(upstream_to_doc(u, self._keyring)) for u in changes.put_upstreams
        }
        registry_docs = {r.id: json.dumps(registry_to_doc(r)) for r in changes.put_registries}
        new_generation = expected_generation + 1
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.watch(GENERATION)
                current = int(await pipe.get(GENERATION) or 0)
                if current != expected_generation:
                    raise Conflict()
                pipe.multi()  # type: ignore[no-untyped-call]
                if changes.delete_upstreams:
                    pipe.hdel(UPSTREAMS, *changes.delete_upstreams)
                if changes.delete_registries:
                    pipe.hdel(REGISTRIES, *changes.delete_registries)
                if upstream_docs:
                    pipe.hset(UPSTREAMS, mapping=cast(Any, upstream_docs))
                if registry_docs:
                    pipe.hset(REGISTRIES, mapping=cast(Any, registry_docs))
                pipe.set(GENERATION, new_generation)
                if self._cluster:
                    # Sharded: the channel has the keys' slot, so it may join the transaction
                    # (a classic PUBLISH has no slot and redis-py refuses it in one).
                    pipe.spublish(CHANNEL, str(new_generation))
                else:
                    pipe.publish(CHANNEL, str(new_generation))
                await pipe.execute()
        except WatchError:
            raise Conflict() from None
        except REDIS_DOWN as exc:
            raise StoreUnavailable(f"cannot write the Redis store: {type(exc).__name__}") from None
        return new_generation

    async def wait_for_change(self, known_generation: int, wait_seconds: float) -> bool:
        try:
            resync = self._pubsub is None
            if resync:
                # A command through the client first: on a cluster it re-reads the slot map
                # after a failover, so the subscription goes to the channel's new owner.
                await self._redis.get(GENERATION)
                await self._subscribe()
            message = await self._next_message(wait_seconds)
            if message is not None or resync:
                # After a reconnect, messages may have been missed: reload once.
                return True
            current = int(await self._redis.get(GENERATION) or 0)
        except REDIS_DOWN as exc:
            log.warning(
                "config store: Redis unreachable; will retry", extra={"error": type(exc).__name__}
            )
            await self._drop_pubsub()
            await asyncio.sleep(wait_seconds)
            return False
        if time.monotonic() - self._last_full_reload > FULL_RELOAD_SECONDS:
            self._last_full_reload = time.monotonic()
            return True
        return current != known_generation

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await close_bounded(pubsub.aclose(), "config store", lambda: pubsub.connection)

    async def reencrypt(self) -> int:
        keyring = self._keyring
        if keyring is None:
            return 0
        for _ in range(10):
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(UPSTREAMS)
                    docs = await pipe.hgetall(UPSTREAMS)
                    fresh: dict[str, str] = {}
                    outcomes: dict[str, ResealOutcome] = {}
                    for key, raw in docs.items():
                        upstream_id = key.decode() if isinstance(key, bytes) else str(key)
                        outcomes[upstream_id], doc = reseal_doc(json.loads(raw), keyring)
                        if outcomes[upstream_id] == "resealed":
                            fresh[upstream_id] = json.dumps(doc)
                    check_resealed(outcomes, self.location)
                    if not fresh:
                        return 0
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(UPSTREAMS, mapping=cast(Any, fresh))
                    await pipe.execute()
                    return len(fresh)
            except WatchError:
                continue
        raise StoreUnavailable("could not re-encrypt: the store kept changing")

    async def aclose(self) -> None:
        await self._drop_pubsub()
        await close_bounded(self._redis.aclose(), "config store")
