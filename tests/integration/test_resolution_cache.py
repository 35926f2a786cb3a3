"""The ResolveUpstream resolution cache against real registries, a real Redis and gRPC.

Whether an upstream was asked is read from the counting proxy in front of it (every
request it forwarded); time moves by the cache's injected clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis

from tests.support.processes import RedisServer
from tests.support.proxy import Proxy, ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.scripted import Reply, start_scripted
from tests.support.service import (
    Service,
    error_details,
    http,
    make_config,
    start_service,
    upstream_entry,
)
from tests.support.token_server import TokenServer
from tests.support.waiting import settle, until
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.errors import ResolveDeadlineExceeded
from vregistry_server.model import Config, Registry, RegistryUpstream, Resolution
from vregistry_server.oci.circuit import State
from vregistry_server.oci.paths import parse_path
from vregistry_server.resolve_cache import KEY_PREFIX, ResolveCache
from vregistry_server.resolver import Resolver
from vregistry_server.runtime.metrics import PROMETHEUS, REGISTRY

Outcome = pb.AttemptOutcome
HOUR = 3600.0
ALPINE = "library/alpine:latest"


class Clock:
    """The resolution cache's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Start = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """``await start(config, clock)``: an in-process server whose resolution cache uses ``clock``."""
    services: list[Service] = []

    async def make(config: Config, clock: Clock) -> Service:
        cache = ResolveCache(config.settings, clock=clock, observer=PROMETHEUS)
        resolver = Resolver(config, observer=PROMETHEUS, resolve_cache=cache)
        service = await start_service(config, resolver=resolver)
        services.append(service)
        return service

    try:
        yield make
    finally:
        for service in services:
            await service.close()


def _wipe(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=KEY_PREFIX + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def shared_redis(redis_server: RedisServer) -> RedisServer:
    _wipe(redis_server.url)
    return redis_server


def _config(*members: tuple[str, str], registry: str = "r", **settings: Any) -> Config:
    env: dict[str, str] = {}
    entries = []
    for upstream_id, url in members:
        extra = settings.pop(f"{upstream_id}_extra", {})
        entries.append(upstream_entry(upstream_id, url, env=env, **extra))
    return make_config(entries, {registry: [m[0] for m in members]}, env=env, **settings)


def _checks_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("vregistry_resolve_checks_total", {"outcome": outcome})
    return value or 0.0


def _resolve_cache_count(layer: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "vregistry_resolve_cache_requests_total", {"layer": layer, "result": result}
    )
    return value or 0.0


# --------------------------------------------------------------------------- misses in flight
# A new image pulled by many nodes at once: its identical misses share one check of the
# upstreams. The HEAD is held at the proxy so that the calls overlap for sure.


@dataclasses.dataclass
class Held:
    """A service whose upstream holds every HEAD for ``delay`` seconds at the proxy."""

    proxy: Proxy
    service: Service
    path: str  # an uncached tag's manifest
    digest: str

    @property
    def resolver(self) -> Resolver:
        return self.service.resolver

    @property
    def heads(self) -> int:
        return self.proxy.count("HEAD", f"/v2/{self.path}")

    async def first_in_flight(self, caller_remaining: float) -> asyncio.Task[Resolution]:
        """The first call, once its check of the upstream is running."""
        first = asyncio.create_task(
            self.resolver.resolve_upstream("r", self.path, caller_remaining=caller_remaining)
        )
        await until(lambda: self.resolver.checks_in_flight == 1, 5.0)
        return first


@pytest.fixture
def held(start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory) -> HeldFactory:
    async def make(delay: float) -> Held:
        proxy = proxy_factory(open_registry, delay_seconds=delay, fault_methods=("HEAD",))
        service = await start(_config(("open", proxy.url)), Clock())
        image = open_registry.images[ALPINE]
        return Held(proxy, service, image.manifest_path, image.digest)

    return make


HeldFactory = Callable[[float], Awaitable[Held]]


async def test_identical_misses_in_flight_share_one_check_of_the_upstreams(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry, delay_seconds=0.5, fault_methods=("HEAD",))
    service = await start(_config(("open", proxy.url)), Clock())
    image = open_registry.images[ALPINE]
    head = ("HEAD", f"/v2/{image.manifest_path}")

    checked, joined = _checks_count("checked"), _checks_count("joined")

    answers = await asyncio.gather(*(service.resolve("r", image.manifest_path) for _ in range(20)))
    assert proxy.count(*head) == 1, "20 identical misses, one upstream check"
    assert (_checks_count("checked"), _checks_count("joined")) == (checked + 1, joined + 19)
    assert {(a.digest, a.url, a.upstream.id) for a in answers} == {
        (image.digest, f"{proxy.url}/v2/{image.manifest_path}", "open")
    }
    assert service.resolver.checks_in_flight == 0

    # A refresh asks for a check made after it: refreshes in flight are never merged.
    refreshed = await asyncio.gather(
        *(service.resolve("r", image.manifest_path, refresh=True) for _ in range(3))
    )
    assert proxy.count(*head) == 1 + 3
    assert all(not a.cache_hit for a in refreshed)
    assert (_checks_count("checked"), _checks_count("joined")) == (checked + 4, joined + 19)


async def test_a_caller_that_joined_waits_no_longer_than_its_own_deadline(
    held: HeldFactory,
) -> None:
    """Its deadline ends its wait, not the shared check, which still answers the others."""
    h = await held(1.5)
    first = await h.first_in_flight(caller_remaining=10)
    started = time.monotonic()
    with pytest.raises(ResolveDeadlineExceeded) as info:
        await h.resolver.resolve_upstream("r", h.path, caller_remaining=0.3)
    assert time.monotonic() - started < 1.0, "it gave up at its own deadline"
    assert "another call's check" in info.value.message
    assert (await first).hit.digest == h.digest
    assert h.heads == 1
    again = await h.service.resolve("r", h.path)
    assert again.cache_hit, "the shared check's answer was remembered"


async def test_a_caller_that_joined_checks_again_when_the_first_callers_deadline_ended_it(
    held: HeldFactory,
) -> None:
    h = await held(1.0)
    first = await h.first_in_flight(caller_remaining=0.5)
    joined = await h.resolver.resolve_upstream("r", h.path, caller_remaining=10)
    with pytest.raises(ResolveDeadlineExceeded) as info:
        await first
    assert info.value.attempts, "the first caller gets its own attempts, as when alone"
    assert joined.hit.digest == h.digest
    assert h.heads == 2


async def test_a_shared_check_stops_when_every_caller_has_gone(held: HeldFactory) -> None:
    h = await held(1.0)
    resolver = h.resolver
    calls = [await h.first_in_flight(caller_remaining=10)]
    calls += [asyncio.create_task(resolver.resolve_upstream("r", h.path)) for _ in range(2)]
    await settle()  # both have joined
    calls[0].cancel()  # the first caller goes: the others still wait for its check
    await settle()
    assert calls[0].cancelled()
    assert resolver.checks_in_flight == 1
    for call in calls[1:]:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await until(lambda: resolver.checks_in_flight == 0, 5.0)
    cache = resolver.resolve_cache
    key = cache.key(resolver.registry("r"), parse_path(h.path))
    assert await cache.get(key, "r", immutable=False) is None, (
        "nothing was remembered from a check nobody waited for"
    )


# --------------------------------------------------------------------------- hits


async def test_second_call_is_answered_from_the_cache_without_asking_the_upstream(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    service = await start(_config(("open", proxy.url)), Clock())
    image = open_registry.images[ALPINE]
    hits_before = _resolve_cache_count("memory", "hit")

    first = await service.resolve("r", image.manifest_path)
    asked = proxy.request_count
    assert asked > 0
    assert not first.cache_hit and not first.stale
    assert first.url == f"{proxy.url}/v2/{image.manifest_path}"

    second = await service.resolve("r", image.manifest_path)
    assert proxy.request_count == asked, "the cached answer must not ask the upstream"
    assert second.cache_hit and not second.stale
    assert second.checked_at == first.checked_at
    # A tag answer names the manifest by digest: the caller fetches exactly what was answered.
    assert second.url == f"{proxy.url}/v2/{image.digest_path}"
    assert (second.digest, second.media_type, second.size) == (
        image.digest,
        image.media_type,
        image.size,
    )
    assert [(a.upstream_id, a.outcome) for a in second.attempts] == [
        ("open", Outcome.ATTEMPT_OUTCOME_FOUND)
    ]
    assert second.headers["Accept"] == first.headers["Accept"]
    fetched = await http("GET", second.url, second.headers)
    assert fetched.status_code == 200
    assert fetched.content == image.manifest
    assert _resolve_cache_count("memory", "hit") == hits_before + 1


async def test_blob_answers_are_cached_with_the_upstreams_own_url(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    service = await start(_config(("open", proxy.url)), Clock())
    blob = open_registry.images[ALPINE].blob_path()
    first = await service.resolve("r", blob)
    asked = proxy.request_count
    second = await service.resolve("r", blob)
    assert proxy.request_count == asked
    assert second.cache_hit
    assert second.url == first.url == f"{proxy.url}/v2/{blob}"


async def test_digest_answers_live_until_the_configuration_changes(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    clock = Clock()
    config = _config(("open", proxy.url), open_extra={"cache_validity_hours": 1})
    service = await start(config, clock)
    path = open_registry.images[ALPINE].digest_path
    await service.resolve("r", path)
    asked = proxy.request_count
    clock.advance(10 * 365 * 24 * HOUR)  # content-addressed: no validity applies
    reply = await service.resolve("r", path)
    assert reply.cache_hit
    assert proxy.request_count == asked


async def test_tag_answers_expire_after_the_upstreams_cache_validity(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    clock = Clock()
    config = _config(("open", proxy.url), open_extra={"cache_validity_hours": 2})
    service = await start(config, clock)
    path = open_registry.images[ALPINE].manifest_path
    first = await service.resolve("r", path)
    asked = proxy.request_count

    clock.advance(2 * HOUR - 1)
    assert (await service.resolve("r", path)).cache_hit
    assert proxy.request_count == asked

    clock.advance(2)  # past the validity: checked again
    rechecked = await service.resolve("r", path)
    assert not rechecked.cache_hit
    assert proxy.count("HEAD") == 2
    assert rechecked.checked_at.ToSeconds() > first.checked_at.ToSeconds()
    # And that answer is cached again, from its own check.
    again = await service.resolve("r", path)
    assert again.cache_hit and again.checked_at == rechecked.checked_at


async def test_cache_validity_zero_never_rechecks_a_tag(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    clock = Clock()
    config = _config(("open", proxy.url), open_extra={"cache_validity_hours": 0})
    service = await start(config, clock)
    path = open_registry.images[ALPINE].manifest_path
    await service.resolve("r", path)
    asked = proxy.request_count
    clock.advance(10 * 365 * 24 * HOUR)
    assert (await service.resolve("r", path)).cache_hit
    assert proxy.request_count == asked


async def test_refresh_checks_the_upstreams_and_replaces_the_cached_answer(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    clock = Clock()
    service = await start(_config(("open", proxy.url)), clock)
    path = open_registry.images[ALPINE].manifest_path
    await service.resolve("r", path)
    clock.advance(60)
    refreshed = await service.resolve("r", path, refresh=True)
    assert not refreshed.cache_hit
    assert proxy.count("HEAD") == 2
    after = await service.resolve("r", path)
    assert after.cache_hit
    assert after.checked_at == refreshed.checked_at
    assert proxy.count("HEAD") == 2


# --------------------------------------------------------------------------- headers


async def test_headers_come_fresh_from_the_token_cache_on_a_hit(
    start: Start,
    token_registry: RegistryServer,
    token_server: TokenServer,
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory(token_registry)
    # A token that is expired as soon as it arrives (its lifetime is the expiry margin):
    # the token cache never keeps it, so every answer, a cached one too, needs a new token.
    # (60 s: the least lifetime the token spec lets a client assume.)
    token_server.configure(expires_in=60)
    config = _config(("tok", proxy.url), token_expiry_margin_seconds=60)
    service = await start(config, Clock())
    image = token_registry.images["public/alpine:latest"]
    first = await service.resolve("r", image.manifest_path)
    tokens = token_server.request_count
    asked = proxy.request_count

    second = await service.resolve("r", image.manifest_path)
    assert second.cache_hit
    assert proxy.request_count == asked, "no manifest check for a cached answer"
    assert token_server.request_count == tokens + 1, "the expired token was replaced"
    assert second.headers["Authorization"] != first.headers["Authorization"]
    fetched = await http("GET", second.url, second.headers)
    assert fetched.status_code == 200
    assert fetched.content == image.manifest


async def test_a_valid_token_is_reused_from_the_token_cache_on_a_hit(
    start: Start,
    token_registry: RegistryServer,
    token_server: TokenServer,
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory(token_registry)
    service = await start(_config(("tok", proxy.url)), Clock())
    path = token_registry.images["public/alpine:latest"].manifest_path
    first = await service.resolve("r", path)
    tokens = token_server.request_count
    second = await service.resolve("r", path)
    assert second.cache_hit
    assert token_server.request_count == tokens
    assert second.headers["Authorization"] == first.headers["Authorization"]


# --------------------------------------------------------------------------- misses


async def test_misses_are_not_cached_by_default(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    service = await start(_config(("open", proxy.url)), Clock())
    for round_number in (1, 2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.resolve("r", "library/nothing/manifests/latest")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert proxy.count("HEAD") == round_number


async def test_negative_cache_remembers_a_miss_for_its_seconds(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    clock = Clock()
    service = await start(_config(("open", proxy.url), negative_cache_seconds=30), clock)
    path = "library/nothing/manifests/latest"
    with pytest.raises(grpc.aio.AioRpcError) as first:
        await service.resolve("r", path)
    asked = proxy.request_count
    with pytest.raises(grpc.aio.AioRpcError) as cached:
        await service.resolve("r", path)
    assert proxy.request_count == asked
    details = error_details(cached.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "NOT_FOUND_ON_UPSTREAMS"
    assert details.message == error_details(first.value).message
    assert [a.outcome for a in details.attempts] == [Outcome.ATTEMPT_OUTCOME_NOT_FOUND]
    clock.advance(31)
    with pytest.raises(grpc.aio.AioRpcError):
        await service.resolve("r", path)
    assert proxy.count("HEAD") == 2


# --------------------------------------------------------------------------- stale if error


async def test_an_expired_tag_answer_is_served_stale_while_the_upstream_is_down(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    clock = Clock()
    config = _config(("open", proxy.url), open_extra={"cache_validity_hours": 1}, probe_retries=0)
    service = await start(config, clock)
    path = open_registry.images[ALPINE].manifest_path
    first = await service.resolve("r", path)
    proxy.stop()  # the upstream is gone: connections are refused

    clock.advance(HOUR + 1)  # expired: re-checked, and the re-check fails
    stale = await service.resolve("r", path)
    assert stale.stale and stale.cache_hit
    assert stale.checked_at == first.checked_at
    assert stale.digest == first.digest
    assert stale.url.endswith(open_registry.images[ALPINE].digest_path)

    clock.advance(3600)  # past stale_if_error_seconds (default 3600) beyond the validity
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.resolve("r", path)
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert [a.outcome for a in details.attempts] == [Outcome.ATTEMPT_OUTCOME_UNAVAILABLE]


async def test_not_served_stale_when_the_upstream_now_says_not_found(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    clock = Clock()
    config = _config(("open", proxy.url), open_extra={"cache_validity_hours": 1})
    service = await start(config, clock)
    path = open_registry.images[ALPINE].manifest_path
    await service.resolve("r", path)
    proxy.configure(fail_with=404, fault_methods=("HEAD",))  # the tag was deleted
    clock.advance(HOUR + 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.resolve("r", path)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # And the old answer is gone: an outage afterwards does not bring it back as stale.
    proxy.configure(fail_with=503)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.resolve("r", path)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_refresh_that_finds_nothing_drops_the_cached_answer(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    service = await start(_config(("open", proxy.url)), Clock())
    path = open_registry.images[ALPINE].manifest_path
    await service.resolve("r", path)
    proxy.configure(fail_with=404, fault_methods=("HEAD",))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.resolve("r", path, refresh=True)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    proxy.configure(fail_with=None)
    again = await service.resolve("r", path)
    assert not again.cache_hit
    assert proxy.count("HEAD") == 3


# --------------------------------------------------------------------------- short deadlines
# A caller with little time left may get the second upstream's answer because the first one
# could not answer in that time. That answer is right for that caller only.


async def _slow_first(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory, **settings: Any
) -> tuple[Service, str]:
    slow = proxy_factory(open_registry, delay_seconds=0.8, fault_methods=("HEAD",))
    fast = proxy_factory(open_registry)
    config = _config(("u1", slow.url), ("u2", fast.url), probe_retries=0, **settings)
    service = await start(config, Clock())
    return service, open_registry.images[ALPINE].manifest_path


async def test_an_answer_a_short_deadline_got_from_a_lower_position_is_not_remembered(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    service, path = await _slow_first(start, open_registry, proxy_factory)
    resolver = service.resolver
    hurried = await resolver.resolve_upstream("r", path, caller_remaining=0.4)
    assert hurried.hit.member.upstream.id == "u2" and hurried.cut_short
    assert hurried.attempts[0].cut_by_deadline
    patient = await resolver.resolve_upstream("r", path, caller_remaining=30)
    assert patient.hit.member.upstream.id == "u1" and not patient.cache_hit
    again = await resolver.resolve_upstream("r", path, caller_remaining=30)
    assert again.hit.member.upstream.id == "u1" and again.cache_hit


async def test_a_caller_with_time_does_not_take_a_hurried_callers_lower_answer(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    service, path = await _slow_first(start, open_registry, proxy_factory)
    resolver = service.resolver
    hurried = asyncio.create_task(resolver.resolve_upstream("r", path, caller_remaining=0.4))
    await until(lambda: resolver.checks_in_flight == 1, 5.0)
    joined = await resolver.resolve_upstream("r", path, caller_remaining=30)
    assert (await hurried).hit.member.upstream.id == "u2"
    assert joined.hit.member.upstream.id == "u1"


async def test_probes_a_callers_deadline_ended_do_not_open_the_upstreams_circuit(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    service, path = await _slow_first(
        start, open_registry, proxy_factory, circuit_failure_threshold=2
    )
    resolver = service.resolver
    for _ in range(3):
        await resolver.resolve_upstream("r", path, caller_remaining=0.4, refresh=True)
    assert resolver.prober.breaker.state("u1") is State.CLOSED
    patient = await resolver.resolve_upstream("r", path, caller_remaining=30, refresh=True)
    assert patient.hit.member.upstream.id == "u1"


async def test_not_served_stale_once_its_upstream_said_not_found_while_another_was_down(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    first, second = proxy_factory(open_registry), proxy_factory(open_registry)
    clock = Clock()
    hour = {"cache_validity_hours": 1}
    config = _config(
        ("u1", first.url), ("u2", second.url), u1_extra=hour, u2_extra=hour, probe_retries=0
    )
    service = await start(config, clock)
    path = open_registry.images[ALPINE].manifest_path
    assert (await service.resolve("r", path)).upstream.id == "u1"
    clock.advance(HOUR + 1)
    first.configure(fail_with=404, fault_methods=("HEAD",))  # u1: the tag is gone
    second.configure(fail_with=503)  # u2: down
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.resolve("r", path)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    first.configure(fail_with=503)  # now u1 is down as well: its old answer must not return
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.resolve("r", path)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_recheck_whose_answer_cannot_be_remembered_drops_the_older_one(
    start: Start,
) -> None:
    """A stand-in (tests/support/scripted.py), since no local registry sends its manifests
    elsewhere: the tag moves to another digest and is now served by a redirect, an answer
    that is never cached (resolve_cache.answer_for_hit). The older answer must go with it,
    or an outage would bring it back, stale, after a check that said otherwise."""
    tag = "library/alpine/manifests/latest"
    old, new = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    media_type = "application/vnd.oci.image.manifest.v1+json"
    state = {"mode": "plain"}

    def script(method: str, path: str) -> Reply:
        if path == "/v2/":
            return Reply(200, b"{}")
        if state["mode"] == "down":
            return Reply(503, b"down")
        if state["mode"] == "redirect" and path == f"/v2/{tag}":
            return Reply(307, b"", {"Location": "/storage/manifest"})
        digest = new if path == "/storage/manifest" else old
        return Reply(200, b"", {"Docker-Content-Digest": digest}, content_type=media_type)

    upstream = start_scripted(script)
    try:
        clock = Clock()
        config = _config(
            ("u1", upstream.url), u1_extra={"cache_validity_hours": 1}, probe_retries=0
        )
        service = await start(config, clock)
        assert (await service.resolve("r", tag)).digest == old
        clock.advance(HOUR + 1)
        state["mode"] = "redirect"
        moved = await service.resolve("r", tag)
        assert moved.digest == new and not moved.cache_hit
        state["mode"] = "down"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.resolve("r", tag)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (
            "no stale answer older than the last check"
        )
    finally:
        upstream.stop()


# --------------------------------------------------------------------------- bounds


async def test_memory_is_bounded_lru(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    service = await start(_config(("open", proxy.url), resolve_cache_max_entries=2), Clock())
    paths = [
        open_registry.images[name].manifest_path
        for name in (ALPINE, "library/busybox:1.36", "library/multi:latest")
    ]
    for path in paths[:2]:
        await service.resolve("r", path)
    assert (await service.resolve("r", paths[0])).cache_hit  # paths[0] is now the newest
    await service.resolve("r", paths[2])  # evicts paths[1], the least recently used
    assert len(service.resolver.resolve_cache.memory) == 2
    heads = proxy.count("HEAD")
    assert (await service.resolve("r", paths[0])).cache_hit
    assert not (await service.resolve("r", paths[1])).cache_hit
    assert proxy.count("HEAD") == heads + 1


# --------------------------------------------------------------------------- the fleet


def _reordered(config: Config) -> Config:
    registry = config.registries["r"]
    members = tuple(
        RegistryUpstream(m.upstream, len(registry.upstreams) + 1 - m.position)
        for m in registry.upstreams
    )
    return dataclasses.replace(
        config, registries={"r": dataclasses.replace(registry, upstreams=members)}
    )


def _with_url(config: Config, upstream_id: str, url: str) -> Config:
    upstream = dataclasses.replace(config.upstreams[upstream_id], url=url)
    upstreams = {**config.upstreams, upstream_id: upstream}
    registry: Registry = config.registries["r"]
    members = tuple(
        RegistryUpstream(upstreams[m.upstream.id], m.position) for m in registry.upstreams
    )
    return dataclasses.replace(
        config,
        upstreams=upstreams,
        registries={"r": dataclasses.replace(registry, upstreams=members)},
    )


async def _apply_everywhere(config: Config, *replicas: Service) -> None:
    """What the store's change channel does: every replica applies the new configuration."""
    for replica in replicas:
        await replica.resolver.apply_config(config)


@pytest.fixture(params=["redis_server", "redis_sentinel", "redis_cluster"])
def fleet_redis_url(request: pytest.FixtureRequest) -> str:
    """The Redis the fleet shares, on each topology (standalone, Sentinel, Cluster)."""
    topology = request.getfixturevalue(request.param)
    if request.param == "redis_server":
        _wipe(topology.url)
    else:
        topology.flush()
    url: str = topology.url
    return url


async def test_a_second_replica_uses_the_first_ones_answer_and_sees_invalidations(
    start: Start,
    fleet_redis_url: str,
    open_registry: RegistryServer,
    proxy_factory: ProxyFactory,
) -> None:
    # Two upstreams (two proxies before one registry): whichever is first answers.
    first, second = proxy_factory(open_registry), proxy_factory(open_registry)
    config = _config(("a", first.url), ("b", second.url), redis_url=fleet_redis_url)
    replica_1 = await start(config, Clock())
    replica_2 = await start(config, Clock())
    path = open_registry.images[ALPINE].manifest_path

    answer = await replica_1.resolve("r", path)
    assert answer.upstream.id == "a" and not answer.cache_hit
    heads = (first.count("HEAD"), second.count("HEAD"))  # both probed (concurrently)
    shared = await replica_2.resolve("r", path)
    assert shared.cache_hit, "replica 2 reads replica 1's answer from Redis"
    assert shared.checked_at == answer.checked_at
    # No manifest check by replica 2 (only its own auth discovery ping, for fresh headers).
    assert (first.count("HEAD"), second.count("HEAD")) == heads

    # Reorder: b first. Both replicas' old answers are unreachable at once.
    reordered = _reordered(config)
    await _apply_everywhere(reordered, replica_1, replica_2)
    after_reorder = await replica_2.resolve("r", path)
    assert not after_reorder.cache_hit
    assert after_reorder.upstream.id == "b"
    assert (await replica_1.resolve("r", path)).cache_hit  # replica 2's new answer, shared

    # A URL change of the answering upstream: a third proxy before the same registry.
    moved = proxy_factory(open_registry)
    changed = _with_url(reordered, "b", moved.url)
    await _apply_everywhere(changed, replica_1, replica_2)
    after_move = await replica_1.resolve("r", path)
    assert not after_move.cache_hit
    assert after_move.url.startswith(moved.url)
    assert moved.count("HEAD") == 1
    on_2 = await replica_2.resolve("r", path)
    assert on_2.cache_hit and on_2.url.startswith(moved.url)


async def test_apply_config_drops_the_changed_registrys_memory_entries(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    first, second = proxy_factory(open_registry), proxy_factory(open_registry)
    config = _config(("a", first.url), ("b", second.url))
    service = await start(config, Clock())
    await service.resolve("r", open_registry.images[ALPINE].manifest_path)
    assert len(service.resolver.resolve_cache.memory) == 1
    await service.resolver.apply_config(config)  # unchanged: kept
    assert len(service.resolver.resolve_cache.memory) == 1
    await service.resolver.apply_config(_reordered(config))
    assert len(service.resolver.resolve_cache.memory) == 0


async def test_redis_stopped_means_memory_only_and_no_error(
    start: Start,
    shared_redis: RedisServer,
    open_registry: RegistryServer,
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory(open_registry)
    service = await start(_config(("open", proxy.url), redis_url=shared_redis.url), Clock())
    known = open_registry.images[ALPINE].manifest_path
    await service.resolve("r", known)
    errors_before = _resolve_cache_count("redis", "error")
    shared_redis.stop()

    assert (await service.resolve("r", known)).cache_hit  # memory, no Redis needed
    other = open_registry.images["library/busybox:1.36"].manifest_path
    fresh = await service.resolve("r", other)  # Redis fails: checked, answered, remembered
    assert not fresh.cache_hit
    assert (await service.resolve("r", other)).cache_hit
    assert service.resolver.resolve_cache.degraded
    assert _resolve_cache_count("redis", "error") > errors_before


async def test_a_miss_under_a_digest_key_keeps_its_short_redis_ttl(
    start: Start,
    shared_redis: RedisServer,
    open_registry: RegistryServer,
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory(open_registry)
    config = _config(("open", proxy.url), redis_url=shared_redis.url, negative_cache_seconds=30)
    replica_1 = await start(config, Clock())
    replica_2 = await start(config, Clock())
    path = "library/alpine/blobs/sha256:" + "0" * 64
    for replica in (replica_1, replica_2):  # the second reads the miss from Redis
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await replica.resolve("r", path)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert proxy.count("HEAD") == 1
    client = redis.Redis.from_url(shared_redis.url)
    try:
        (key,) = list(client.scan_iter(match=KEY_PREFIX + "*"))
        # Not the 7-day TTL a digest answer gets when read: the miss's own 30 s.
        assert 0 < client.ttl(key) <= 30
    finally:
        client.close()
