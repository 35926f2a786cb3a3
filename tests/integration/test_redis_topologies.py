"""The token cache and the ``--store redis`` config store on real Sentinel and Cluster setups.

Each topology is a session fixture (tests/support/redis_topologies.py): one master and two
replicas watched by three sentinels, and a 6-node cluster. Covered: the cache and the store
on both (URLs as an operator writes them), compare-and-set with concurrent writers, change
notification by pub/sub (not by the 1 s poll), a master SIGKILLed (answers keep coming,
degraded to memory, and Redis serves again after the failover), and the one-time move of a
standalone store's keys to their hash-tagged names.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.admin import (
    AdminService,
    new_keyring,
    redis_replicas,
)
from tests.support.certs import make_pki
from tests.support.processes import ManagedProcess, RedisServer, free_port
from tests.support.redis_topologies import ClusterTopology, SentinelTopology
from tests.support.waiting import until
from vregistry.v1 import config_service_pb2 as cpb
from vregistry_server.admin.crypto import Keyring
from vregistry_server.admin.records import UpstreamRecord
from vregistry_server.admin.stores.base import Changes, Conflict
from vregistry_server.admin.stores.redis import (
    GENERATION,
    LEGACY_PREFIX,
    PREFIX,
    REGISTRIES,
    UPSTREAMS,
    RedisStore,
)
from vregistry_server.model import Attempt, Outcome, Settings, Upstream
from vregistry_server.oci.token_cache import CachedToken, RedisTokenCache, cache_key
from vregistry_server.resolve_cache import CachedAnswer, ResolveCache

Topology = SentinelTopology | ClusterTopology


@pytest.fixture(params=["sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """Each test runs on both topologies, empty at the start, whole again at the end."""
    value: Topology = request.getfixturevalue(f"redis_{request.param}")
    value.flush()
    yield value
    value.restore()


def _token(value: str) -> CachedToken:
    return CachedToken(value=value, expires_at=time.time() + 300)


def _found_answer() -> CachedAnswer:
    digest = "sha256:" + "a" * 64
    return CachedAnswer(
        found=True, attempts=(Attempt("u1", 1, Outcome.FOUND, 200, 1.0),), checked_at=1.0,
        expires_at=None, stale_until=None, upstream_id="u1", position=1,
        url="https://u1.example/v2/a/manifests/" + digest, digest=digest,
    )  # fmt: skip


def _key(n: int) -> str:
    return cache_key("up", "https://auth.example/token", "reg", (f"repository:r{n}:pull",), "anon")


def _stored(topology: Topology, key: str) -> bool:
    """Whether ``key`` is on the master that now serves it (plain client, no redis-py routing)."""
    if isinstance(topology, ClusterTopology):
        client = topology.master_client(key)
    else:
        client = topology.master_client()
    try:
        return bool(client.exists(key))
    finally:
        client.close()


# --------------------------------------------------------------------------- token cache


async def test_token_cache_stores_reads_and_deletes_on_the_topology(topology: Topology) -> None:
    cache = RedisTokenCache(topology.url, socket_timeout=1.0)
    try:
        keys = [_key(n) for n in range(300)]  # > one DEL chunk: keys over many cluster slots
        for n, key in enumerate(keys):
            await cache.set(key, _token(f"tok-{n}"), 60)
        assert not cache.degraded
        other = RedisTokenCache(topology.url, socket_timeout=1.0)
        try:
            # Another replica reads what this one stored: it went through Redis, not memory.
            got = await other.get(keys[7])
            assert got is not None and got.value == "tok-7"
            assert _stored(topology, keys[7])
            await cache.delete_many(keys)
            assert not cache.degraded
            assert await other.get(keys[7]) is None
            assert not any(_stored(topology, key) for key in keys[:20])
        finally:
            await other.aclose()
    finally:
        await cache.aclose()


async def test_a_cluster_with_no_node_reachable_means_memory_only_and_no_error() -> None:
    """redis-py's cluster client raises RedisClusterException (not a RedisError) when it
    reaches no node: that is an outage like any other, not a failed call."""
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"  # nothing listens
    cache = RedisTokenCache(url, socket_timeout=0.3)
    try:
        assert await cache.get(_key(1)) is None
        await cache.set(_key(1), _token("tok"), 60)
        assert cache.degraded
        got = await cache.get(_key(1))  # from process memory
        assert got is not None and got.value == "tok"
        await cache.claim_fetch(_key(2), 1.0)
        await cache.delete_many([_key(1)])
    finally:
        await cache.aclose()
    answers = ResolveCache(Settings(redis_url=url, redis_timeout_seconds=0.3))
    try:
        answer = _found_answer()
        await answers.put("k", "r", answer)
        found = await answers.get("k", "r", immutable=True)
        assert found is not None and found.answer == answer and found.layer == "memory"
    finally:
        await answers.aclose()


async def test_token_cache_answers_through_a_failover_and_serves_from_the_new_master(
    topology: Topology,
) -> None:
    cache = RedisTokenCache(topology.url, socket_timeout=0.5)
    try:
        before = _key(1)
        await cache.set(before, _token("before"), 60)
        topology.kill_master()
        # While no master answers: every call returns (from process memory), none raises.
        for n in range(20):
            await cache.set(_key(100 + n), _token(f"during-{n}"), 60)
            got = await cache.get(before)
            assert got is not None and got.value == "before"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(topology.wait_for_failover, 20.0)
        # The cache finds the promoted master by itself (bounded: the degraded back-off).
        after = _key(2)
        deadline = time.monotonic() + 10
        while True:
            await cache.set(after, _token("after"), 60)
            if not cache.degraded and _stored(topology, after):
                break
            assert time.monotonic() < deadline, "the cache did not reach the new master"
            await asyncio.sleep(0.2)
    finally:
        await cache.aclose()


# --------------------------------------------------------------------------- config store


def _upstream(upstream_id: str) -> UpstreamRecord:
    url = f"https://{upstream_id}.example"
    return UpstreamRecord(Upstream(id=upstream_id, name=upstream_id, url=url), version=1)


async def _open_store(url: str, keyring: Keyring) -> RedisStore:
    store = RedisStore(url, keyring, socket_timeout=1.0)
    await store.open()
    return store


async def test_store_compare_and_set_with_concurrent_writers(topology: Topology) -> None:
    keyring, _ = new_keyring("cas")
    stores = [await _open_store(topology.url, keyring) for _ in range(4)]
    try:
        # Every writer starts from generation 0 at the same moment: exactly one may win.
        outcomes = await asyncio.gather(
            *[
                store.commit(0, Changes(put_upstreams=(_upstream(f"w{n}"),)))
                for n, store in enumerate(stores)
            ],
            return_exceptions=True,
        )
        wins = [o for o in outcomes if isinstance(o, int)]
        assert wins == [1], outcomes
        assert sum(isinstance(o, Conflict) for o in outcomes) == 3, outcomes
        # Writers that retry on conflict (as ConfigManager does) all land, serialized.
        await asyncio.gather(*[_commit_retrying(store, f"r{n}") for n, store in enumerate(stores)])
        state = await stores[0].load()
        assert state.generation == 5
        assert {f"r{n}" for n in range(4)} <= set(state.upstreams)
    finally:
        for store in stores:
            await store.aclose()


async def _commit_retrying(store: RedisStore, upstream_id: str) -> None:
    for _ in range(50):
        generation = (await store.load()).generation
        try:
            await store.commit(generation, Changes(put_upstreams=(_upstream(upstream_id),)))
            return
        except Conflict:
            await asyncio.sleep(0.01)
    raise AssertionError(f"{upstream_id}: never committed")


async def test_store_change_is_notified_not_polled(topology: Topology) -> None:
    keyring, _ = new_keyring("notify")
    writer = await _open_store(topology.url, keyring)
    reader = await _open_store(topology.url, keyring)
    try:
        # A long wait: only a pub/sub message can end it early (the poll runs at its end).
        waiting = asyncio.create_task(reader.wait_for_change(0, 15.0))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await writer.commit(0, Changes(put_upstreams=(_upstream("n1"),)))
        assert await asyncio.wait_for(waiting, 5.0) is True
        print(f"notified after {(time.monotonic() - started) * 1000:.1f} ms")
    finally:
        await writer.aclose()
        await reader.aclose()


@pytest.fixture
async def replicas(topology: Topology) -> AsyncIterator[tuple[AdminService, AdminService]]:
    async with redis_replicas(topology.url) as pair:
        yield pair


async def test_replicas_share_the_store_and_survive_a_failover(
    replicas: tuple[AdminService, AdminService], topology: Topology
) -> None:
    a, b = replicas
    await a.create_upstream("before", "https://before.example")
    await until(lambda: "before" in b.resolver.config.upstreams, 1.0)
    topology.kill_master()
    await asyncio.to_thread(topology.wait_for_failover, 20.0)
    # Writes work again on the promoted master, and replica B hears of them.
    deadline = time.monotonic() + 10
    while True:
        try:
            await a.create_upstream("after", "https://after.example")
            break
        except Exception:
            assert time.monotonic() < deadline, "no write accepted after the failover"
            await asyncio.sleep(0.2)
    await until(lambda: "after" in b.resolver.config.upstreams, 8.0)
    reply = await b.admin.GetUpstream(cpb.GetUpstreamRequest(name="groups/g1/upstreams/after"))
    assert reply.upstream.url == "https://after.example"


# --------------------------------------------------------------------------- key migration


@pytest.fixture
def bare_redis(clean_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(clean_redis.url)
    client.delete(*[LEGACY_PREFIX + n for n in ("generation", "upstreams", "registries")])
    try:
        yield client
    finally:
        client.delete(*[LEGACY_PREFIX + n for n in ("generation", "upstreams", "registries")])
        client.close()


async def _legacy_store(url: str, keyring: Keyring, client: redis.Redis) -> None:
    """A store as the previous version left it: the same documents under the old key names."""
    store = await _open_store(url, keyring)
    try:
        generation = await store.commit(0, Changes(put_upstreams=(_upstream("kept"),)))
        await store.commit(generation, Changes(put_upstreams=(_upstream("kept2"),)))
    finally:
        await store.aclose()
    for key in (GENERATION, UPSTREAMS, REGISTRIES):
        if client.exists(key):
            client.rename(key, LEGACY_PREFIX + key.removeprefix(PREFIX))


async def test_standalone_store_keys_move_to_the_hash_tagged_names_once(
    clean_redis: RedisServer, bare_redis: redis.Redis
) -> None:
    keyring, _ = new_keyring("migrate")
    await _legacy_store(clean_redis.url, keyring, bare_redis)
    assert not bare_redis.exists(GENERATION)
    assert bare_redis.exists(LEGACY_PREFIX + "generation")

    # Two replicas of the new version start at once: the move happens once, nothing is lost.
    first, second = await asyncio.gather(
        _open_store(clean_redis.url, keyring), _open_store(clean_redis.url, keyring)
    )
    try:
        for store in (first, second):
            state = await store.load()
            assert state.generation == 2
            assert {"kept", "kept2"} <= set(state.upstreams)
        assert not bare_redis.exists(LEGACY_PREFIX + "generation")
        assert not bare_redis.exists(LEGACY_PREFIX + "upstreams")
        # The store keeps working at the new names.
        assert await first.commit(2, Changes(put_upstreams=(_upstream("new"),))) == 3
    finally:
        await first.aclose()
        await second.aclose()


async def test_old_keys_never_overwrite_a_store_already_at_the_new_names(
    clean_redis: RedisServer, bare_redis: redis.Redis
) -> None:
    keyring, _ = new_keyring("migrate2")
    store = await _open_store(clean_redis.url, keyring)
    try:
        await store.commit(0, Changes(put_upstreams=(_upstream("current"),)))
    finally:
        await store.aclose()
    # Stale keys of an old replica appear beside the current store.
    bare_redis.set(LEGACY_PREFIX + "generation", 9)
    bare_redis.hset(LEGACY_PREFIX + "upstreams", "stale", "{}")
    store = await _open_store(clean_redis.url, keyring)
    try:
        state = await store.load()
        assert state.generation == 1 and set(state.upstreams) == {"current"}
        assert bare_redis.exists(LEGACY_PREFIX + "generation"), "left alone, not merged"
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """A TLS-only redis-server with a certificate of a private CA: (port, ca, other ca)."""
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    argv = [shutil.which("redis-server") or "redis-server", "--port", "0"]
    argv += ["--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--tls-cert-file", str(pki.server.cert_path)]
    argv += ["--tls-key-file", str(pki.server.key_path)]
    argv += ["--tls-ca-cert-file", str(pki.ca.cert_path), "--tls-auth-clients", "no"]
    argv += ["--dir", str(tmp_path)]
    process = ManagedProcess("redis-tls", argv, port=port, log_dir=tmp_path)
    process.start()
    try:
        yield port, pki.ca.cert_path, pki.other_ca.cert_path
    finally:
        process.stop()


async def test_rediss_is_verified_against_settings_redis_ca_file(
    tls_redis: tuple[int, Path, Path],
) -> None:
    port, ca, other_ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/0"
    trusted = RedisTokenCache(url, socket_timeout=2.0, ca_file=str(ca))
    stranger = RedisTokenCache(url, socket_timeout=2.0, ca_file=str(other_ca))
    try:
        await trusted.set(_key(1), _token("over-tls"), 60)
        assert not trusted.degraded
        got = await trusted.get(_key(1))
        assert got is not None and got.value == "over-tls"
        # A CA that did not sign the server's certificate: refused, so the cache degrades.
        assert await stranger.get(_key(1)) is None
        assert stranger.degraded
    finally:
        await trusted.aclose()
        await stranger.aclose()
