"""One token per key across the fleet: the Redis fetch lease, with in-process "replicas".

Each replica is a Resolver with its own RedisTokenCache (its own connections, single-flight
and near cache) on one real redis-server, against the real token server and the
token-auth docker-registry; the token server's request count is the proof.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from tests.support.processes import RedisServer
from tests.support.registry import RegistryServer
from tests.support.service import make_config, upstream_entry
from tests.support.token_server import TokenServer
from vregistry_server.errors import CredentialsRejected, DeadlineExceeded
from vregistry_server.model import Config
from vregistry_server.oci.auth import ANONYMOUS_FINGERPRINT, LEASE_SECONDS
from vregistry_server.oci.http import Budget
from vregistry_server.oci.observer import Observer
from vregistry_server.oci.paths import parse_path_or_repository, pull_scope
from vregistry_server.oci.token_cache import (
    CachedToken,
    ClaimState,
    MemoryTokenCache,
    RedisTokenCache,
    cache_key,
    lease_key,
)
from vregistry_server.resolver import Resolver

REPLICAS = 3
CALLER_SECONDS = 30.0  # the callers' deadline in the bursts
KEY = "vregistry:token:v1:lease-test"
TOKEN = CachedToken("lease-token-value", 2_000_000_000.0)


class LeaseOutcomes(Observer):
    """Counts the lease outcomes of every replica (the Prometheus observer does the same)."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def token_lease(self, outcome: str) -> None:
        self.outcomes[outcome] += 1


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


def _config(registry: RegistryServer, redis_url: str) -> Config:
    env: dict[str, str] = {}
    entry = upstream_entry("token", registry.url, credentials=registry.credentials, env=env)
    # Near cache off: every replica really reads Redis, the worst case for the lease.
    # A long request timeout: hundreds of token requests at once to the token server,
    # a thread per request in this test's own (shared, busy) process, take seconds.
    return make_config(
        [entry],
        {"r": ["token"]},
        env=env,
        redis_url=redis_url,
        token_near_cache_seconds=0,
        request_timeout_seconds=CALLER_SECONDS,
    )


Fleet = Callable[..., Awaitable[list[Resolver]]]


@pytest.fixture
async def fleet(
    token_registry: RegistryServer, redis_server: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[Fleet]:
    """``await fleet(n, observer=None)``: n replicas, their upstream already discovered."""
    made: list[Resolver] = []

    async def start(count: int = REPLICAS, observer: Observer | None = None) -> list[Resolver]:
        config = _config(token_registry, redis_server.url)
        observer = observer or Observer()
        replicas = [
            Resolver(config, _replica_cache(redis_server, observer), observer=observer)
            for _ in range(count)
        ]
        made.extend(replicas)
        for replica in replicas:
            # The /v2/ ping goes to the registry, not the token server: done up front so a
            # burst's timing is about tokens only.
            await replica.authenticator.discover(replica.upstream("token"), Budget.start(10))
        return replicas

    try:
        yield start
    finally:
        for replica in made:
            await replica.aclose()


def _replica_cache(redis_server: RedisServer, observer: Observer) -> RedisTokenCache:
    # All replicas share this test's one event loop (and a loaded CPU): a burst of
    # hundreds of callers queues longer for a pooled connection than the default 0.5 s
    # socket timeout (also the pool's wait), which counts as a Redis outage and makes
    # every replica fetch alone. A process of its own per replica: tests/system.
    return RedisTokenCache(redis_server.url, socket_timeout=10.0, observer=observer)


async def _burst(replicas: Sequence[Resolver], paths: Sequence[str], per_path: int) -> set[str]:
    """``per_path`` concurrent callers for every path, spread round-robin over the replicas."""
    calls = [
        replicas[(index + n) % len(replicas)].get_auth_headers(
            "token", path, caller_remaining=CALLER_SECONDS
        )
        for index, path in enumerate(paths)
        for n in range(per_path)
    ]
    replies = await asyncio.gather(*calls)
    return {reply.headers["Authorization"] for reply in replies}


def _token_key(replica: Resolver, path: str) -> str:
    """The cache key a replica uses for ``path``'s pull token (as Authenticator computes it)."""
    upstream = replica.upstream("token")
    realm, service = _realm_and_service(replica)
    scope = pull_scope(parse_path_or_repository(path), ())
    fingerprint = (
        upstream.credentials.fingerprint if upstream.credentials else ANONYMOUS_FINGERPRINT
    )
    return cache_key(upstream.id, realm, service, (scope,) if scope else (), fingerprint)


def _realm_and_service(replica: Resolver) -> tuple[str, str]:
    discoveries = replica.authenticator._discoveries
    ((discovery, _),) = discoveries.values()
    return discovery.realm, discovery.service


# ---------------------------------------------------------------- the lease primitives


async def test_claim_gives_one_owner_and_only_the_owner_releases(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    one, two = RedisTokenCache(redis_server.url), RedisTokenCache(redis_server.url)
    try:
        first = await one.claim_fetch(KEY, 5)
        assert first.state is ClaimState.OWNED and first.owner
        held = await two.claim_fetch(KEY, 5)
        assert held.state is ClaimState.HELD and 4 < held.held_seconds <= 5
        # Not the owner: neither extends nor deletes the lease.
        await two.release_fetch(KEY, "someone-else")
        await two.renew_fetch(KEY, "someone-else", 60)
        assert 0 < await redis_client.pttl(lease_key(KEY)) <= 5000
        await one.renew_fetch(KEY, first.owner, 30)
        assert await redis_client.pttl(lease_key(KEY)) > 5000
        await one.release_fetch(KEY, first.owner)
        assert not await redis_client.exists(lease_key(KEY))
        # The token stored: a claim returns it instead of a lease.
        await one.set(KEY, TOKEN, 60)
        cached = await two.claim_fetch(KEY, 5)
        assert cached.state is ClaimState.CACHED and cached.token == TOKEN
        assert not await redis_client.exists(lease_key(KEY))
    finally:
        await one.aclose()
        await two.aclose()


async def test_lease_shares_the_token_keys_cluster_slot_and_expires(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    real_key = cache_key("u", "https://auth.example/token", "svc", ("repository:a:pull",), "fp")
    assert key_slot(lease_key(real_key).encode()) == key_slot(real_key.encode())
    cache = RedisTokenCache(redis_server.url)
    try:
        assert (await cache.claim_fetch(real_key, 0.1)).state is ClaimState.OWNED
        await asyncio.sleep(0.2)  # the holder "died": nobody renewed or released
        assert (await cache.claim_fetch(real_key, 0.1)).state is ClaimState.OWNED
    finally:
        await cache.aclose()


async def test_claim_reads_an_encrypted_token(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    key_a, key_b = b"a" * 32, b"b" * 32
    writer = RedisTokenCache(redis_server.url, encryption_key=key_a)
    reader = RedisTokenCache(redis_server.url, encryption_key=key_a)
    stranger = RedisTokenCache(redis_server.url, encryption_key=key_b)
    try:
        await writer.set(KEY, TOKEN, 60)
        assert (await reader.claim_fetch(KEY, 5)).token == TOKEN
        # Sealed with another key: not readable, so that replica fetches for itself.
        assert (await stranger.claim_fetch(KEY, 5)).state is ClaimState.UNSHARED
    finally:
        for cache in (writer, reader, stranger):
            await cache.aclose()


async def test_memory_cache_never_leases() -> None:
    cache = MemoryTokenCache()
    assert (await cache.claim_fetch(KEY, 5)).state is ClaimState.UNSHARED
    await cache.renew_fetch(KEY, "x", 5)
    await cache.release_fetch(KEY, "x")


# ---------------------------------------------------------------- replicas


@pytest.mark.parametrize("delay", [0.0, 0.3])
async def test_cold_burst_over_replicas_costs_one_token_request(
    fleet: Fleet, token_server: TokenServer, delay: float
) -> None:
    outcomes = LeaseOutcomes()
    replicas = await fleet(observer=outcomes)
    token_server.configure(delay_seconds=delay)
    headers = await _burst(replicas, ["private/cold/manifests/v1"], per_path=600)
    assert token_server.count() == 1, [(r.method, r.scopes) for r in token_server.records]
    assert len(headers) == 1  # every caller on every replica got the one token
    # One replica fetched; every other replica (one claim each: the local single-flight
    # keeps its callers behind one poller) took its token.
    assert outcomes.outcomes["acquired"] == 1
    assert outcomes.outcomes["acquired"] + outcomes.outcomes["shared"] <= REPLICAS


async def test_distinct_keys_cost_one_request_each(fleet: Fleet, token_server: TokenServer) -> None:
    outcomes = LeaseOutcomes()
    replicas = await fleet(observer=outcomes)
    token_server.configure(delay_seconds=0.05)
    paths = [f"private/key-{n}/manifests/v1" for n in range(300)]
    await _burst(replicas, paths, per_path=2)  # each key on two replicas
    assert token_server.count() == 300, outcomes.outcomes
    assert Counter(s for r in token_server.records for s in r.scopes) == {
        f"repository:private/key-{n}:pull": 1 for n in range(300)
    }


async def test_dead_holder_is_replaced_within_the_lease_time(
    fleet: Fleet, token_server: TokenServer
) -> None:
    dead, alive = await fleet(2)
    key = _token_key(alive, "private/orphan/manifests/v1")
    # The "dead" replica took the lease and then neither stored a token nor released it.
    assert isinstance(dead.cache, RedisTokenCache)
    assert (await dead.cache.claim_fetch(key, LEASE_SECONDS)).state is ClaimState.OWNED
    started = time.monotonic()
    reply = await alive.get_auth_headers(
        "token", "private/orphan/manifests/v1", caller_remaining=15
    )
    waited = time.monotonic() - started
    assert reply.headers["Authorization"].startswith("Bearer ")
    assert token_server.count() == 1
    # It waited for the lease to lapse (not fetched at once), and not much longer.
    assert LEASE_SECONDS * 0.8 <= waited <= LEASE_SECONDS + 1.5


async def test_failed_holder_releases_so_a_waiter_fetches_at_once(
    fleet: Fleet, token_server: TokenServer
) -> None:
    first, second = await fleet(2)
    # The holder's token requests are refused after 0.3 s each (its GET, then the OAuth2
    # POST that token_flow auto falls back to); the next request works.
    token_server.configure(delay_seconds=0.3, fail_status=403, fail_count=2)
    holder = asyncio.create_task(
        first.get_auth_headers("token", "private/flaky/manifests/v1", caller_remaining=15)
    )
    while token_server.count() == 0:  # bounded by the holder's own 15 s deadline
        assert not holder.done()
        await asyncio.sleep(0.01)
    started = time.monotonic()
    reply = await second.get_auth_headers(
        "token", "private/flaky/manifests/v1", caller_remaining=15
    )
    assert reply.headers["Authorization"].startswith("Bearer ")
    with pytest.raises(CredentialsRejected):
        await holder
    assert token_server.count() == 3
    # The holder released its lease when it failed: no wait for the lease to lapse.
    assert time.monotonic() - started < LEASE_SECONDS


async def test_redis_stopped_every_replica_fetches_for_itself(
    fleet: Fleet, token_server: TokenServer, redis_server: RedisServer
) -> None:
    outcomes = LeaseOutcomes()
    replicas = await fleet(observer=outcomes)
    redis_server.stop()
    headers = await _burst(replicas, ["private/outage/manifests/v1"], per_path=50)
    assert len(headers) == REPLICAS  # no error: each replica its own token
    assert token_server.count() == REPLICAS
    assert outcomes.outcomes == {"unshared": REPLICAS}
    assert all(isinstance(r.cache, RedisTokenCache) and r.cache.degraded for r in replicas)


async def test_caller_deadline_is_kept_while_another_replica_holds_the_lease(
    fleet: Fleet, token_server: TokenServer
) -> None:
    holder, waiter = await fleet(2)
    key = _token_key(waiter, "private/slow/manifests/v1")
    assert isinstance(holder.cache, RedisTokenCache)
    assert (await holder.cache.claim_fetch(key, LEASE_SECONDS)).state is ClaimState.OWNED
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await waiter.get_auth_headers("token", "private/slow/manifests/v1", caller_remaining=0.3)
    assert time.monotonic() - started < 0.35
    assert token_server.count() == 0
    # The shared wait goes on for later callers, and takes the lease once it lapses.
    reply = await waiter.get_auth_headers("token", "private/slow/manifests/v1", caller_remaining=15)
    assert reply.headers["Authorization"].startswith("Bearer ")
    assert token_server.count() == 1
