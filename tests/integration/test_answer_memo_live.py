"""Repeats answered by the gRPC face's answer memo (rpc/answer_memo.py), over real gRPC with
real registries, the token server fixture and the resolution cache's injected clock.

A repeat must be exactly the answer the resolver would give, with the same audit line and
the same counts; what the resolver is asked is read from a counting wrapper around it, what
the upstreams and the token server are asked from their own counts."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from tests.support.processes import RedisServer
from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.service import Service, make_config, start_service, upstream_entry
from tests.support.token_server import TokenServer
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.model import Config
from vregistry_server.resolve_cache import ResolveCache
from vregistry_server.resolver import Resolver
from vregistry_server.rpc.upstream_servicer import UpstreamServicer
from vregistry_server.runtime.metrics import PROMETHEUS, REGISTRY

ALPINE = "library/alpine:latest"
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Asked:
    """Counts the resolver's three questions, by wrapping them on the instance."""

    def __init__(self, resolver: Resolver) -> None:
        self.counts: Counter[str] = Counter()
        for name in ("url_for", "get_auth_headers", "resolve_upstream"):
            setattr(resolver, name, self._counting(name, getattr(resolver, name)))

    def _counting(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return method(*args, **kwargs)

        return counted


Start = Callable[[Config], Awaitable[tuple[Service, Asked, Clock]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    services: list[Service] = []

    async def make(config: Config) -> tuple[Service, Asked, Clock]:
        clock = Clock()
        cache = ResolveCache(config.settings, clock=clock, observer=PROMETHEUS)
        resolver = Resolver(config, observer=PROMETHEUS, resolve_cache=cache)
        service = await start_service(config, resolver=resolver)
        services.append(service)
        return service, Asked(resolver), clock

    try:
        yield make
    finally:
        for service in services:
            await service.close()


def _config(*members: tuple[str, str], **extra: Any) -> Config:
    env: dict[str, str] = {}
    entries = [upstream_entry(i, url, env=env, **extra.get(i, {})) for i, url in members]
    return make_config(entries, {"r": [m[0] for m in members]}, env=env)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "vregistry.audit"]


async def test_a_repeated_token_is_handed_out_without_asking_the_resolver(
    start: Start,
    token_registry: RegistryServer,
    token_server: TokenServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert token_registry.credentials is not None
    config = _config(("up", token_registry.url), up={"credentials": token_registry.credentials})
    service, asked, _ = await start(config)
    path = "team/app/manifests/v1"
    tokens_before = token_server.request_count
    hits_before = _sample("vregistry_token_cache_requests_total", layer="memory", result="hit")
    disclosed_before = _sample(
        "vregistry_credentials_disclosed_total", upstream="up", scheme="bearer"
    )
    caplog.set_level(logging.INFO, logger="vregistry.audit")

    first = await service.auth("up", path)  # fetched: no reuse yet
    second = await service.auth("up", path)  # from the token cache: kept
    repeats = [await service.auth("up", path) for _ in range(3)]

    assert not first.cache_hit and second.cache_hit
    assert all(r == second for r in repeats)
    assert asked.counts["get_auth_headers"] == 2
    assert token_server.request_count == tokens_before + 1
    # Counted as the token cache lookup and the disclosure that asking again would have made.
    assert (
        _sample("vregistry_token_cache_requests_total", layer="memory", result="hit")
        == hits_before + 4
    )
    assert (
        _sample("vregistry_credentials_disclosed_total", upstream="up", scheme="bearer")
        == disclosed_before + 5
    )
    audit = _audit_lines(caplog)
    assert len(audit) == 5
    assert {(r.method, r.upstream_id, r.scheme) for r in audit} == {  # type: ignore[attr-defined]
        ("GetAuthHeaders", "up", "bearer")
    }
    # Other actions are another question.
    await service.auth("up", path, actions=["pull"])
    assert asked.counts["get_auth_headers"] == 3


async def test_an_invalidated_upstream_gets_a_new_token(
    start: Start, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    assert token_registry.credentials is not None
    config = _config(("up", token_registry.url), up={"credentials": token_registry.credentials})
    service, asked, _ = await start(config)
    path = "team/app/manifests/v1"
    for _ in range(3):
        await service.auth("up", path)
    tokens = token_server.request_count
    await service.resolver.authenticator.invalidate("up")
    fresh = await service.auth("up", path)
    assert not fresh.cache_hit, "the dropped token is not handed out again"
    assert token_server.request_count == tokens + 1
    assert asked.counts["get_auth_headers"] == 3


async def test_a_changed_configuration_is_answered_at_once(
    start: Start,
    open_registry: RegistryServer,
    proxy_factory: ProxyFactory,
) -> None:
    first_proxy, second_proxy = proxy_factory(open_registry), proxy_factory(open_registry)
    config = _config(("open", first_proxy.url))
    service, asked, _ = await start(config)
    path = open_registry.images[ALPINE].manifest_path
    for _ in range(3):
        assert (await service.url_for("open", path)).url == f"{first_proxy.url}/v2/{path}"
        await service.resolve("r", path)
    assert asked.counts["url_for"] == 1
    assert asked.counts["resolve_upstream"] == 2

    moved = _config(("open", second_proxy.url))
    await service.resolver.apply_config(moved)
    assert (await service.url_for("open", path)).url == f"{second_proxy.url}/v2/{path}"
    resolved = await service.resolve("r", path)
    assert resolved.url.startswith(second_proxy.url) and not resolved.cache_hit
    assert second_proxy.request_count > 0
    assert asked.counts["url_for"] == 2


async def test_repeated_resolutions_ask_neither_the_resolver_nor_the_upstream(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    service, asked, _ = await start(_config(("open", proxy.url)))
    image = open_registry.images[ALPINE]
    hits_before = _sample("vregistry_resolve_cache_requests_total", layer="memory", result="hit")

    first = await service.resolve("r", image.manifest_path)
    upstream_requests = proxy.request_count
    second = await service.resolve("r", image.manifest_path)
    repeats = [await service.resolve("r", image.manifest_path) for _ in range(3)]

    assert not first.cache_hit and second.cache_hit
    assert all(r == second for r in repeats)
    assert asked.counts["resolve_upstream"] == 2
    assert proxy.request_count == upstream_requests
    assert (
        _sample("vregistry_resolve_cache_requests_total", layer="memory", result="hit")
        == hits_before + 4
    )


async def test_a_refresh_asks_the_upstreams_and_later_repeats_give_its_answer(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    service, asked, _ = await start(_config(("open", proxy.url)))
    path = open_registry.images[ALPINE].manifest_path
    for _ in range(3):
        await service.resolve("r", path)
    heads = proxy.count("HEAD")
    refreshed = await service.resolve("r", path, refresh=True)
    assert not refreshed.cache_hit and proxy.count("HEAD") == heads + 1
    after = await service.resolve("r", path)
    assert after.cache_hit and after.checked_at == refreshed.checked_at
    assert asked.counts["resolve_upstream"] == 4, "the answer stored by the refresh is news"


async def test_a_tag_answer_past_its_validity_is_checked_again(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    config = _config(("open", proxy.url), open={"cache_validity_hours": 1})
    service, _, clock = await start(config)
    path = open_registry.images[ALPINE].manifest_path
    for _ in range(3):
        await service.resolve("r", path)
    heads = proxy.count("HEAD")
    clock.now += HOUR - 1
    assert (await service.resolve("r", path)).cache_hit and proxy.count("HEAD") == heads
    clock.now += 2
    rechecked = await service.resolve("r", path)
    assert not rechecked.cache_hit and proxy.count("HEAD") == heads + 1


async def test_a_digest_answer_is_kept_by_digest(
    start: Start, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    service, asked, clock = await start(_config(("open", proxy.url)))
    image = open_registry.images[ALPINE]
    for _ in range(3):
        await service.resolve("r", image.digest_path)
    clock.now += 1000 * HOUR  # content-addressed: no validity to run out
    again = await service.resolve("r", image.digest_path)
    assert again.cache_hit and again.digest == image.digest
    assert asked.counts["resolve_upstream"] == 2


@pytest.mark.parametrize("near_cache_seconds", [0.0, 2.0])
async def test_a_token_is_reused_only_while_this_process_holds_it(
    start: Start,
    token_registry: RegistryServer,
    clean_redis: RedisServer,
    near_cache_seconds: float,
) -> None:
    """With Redis and no near cache every call reads Redis (another replica may have dropped
    the token), so nothing is kept; with one, a repeat holds no longer than its entry."""
    assert token_registry.credentials is not None
    env: dict[str, str] = {}
    entry = upstream_entry(
        "up", token_registry.url, env=env, credentials=token_registry.credentials
    )
    config = make_config(
        [entry],
        env=env,
        redis_url=clean_redis.url,
        token_near_cache_seconds=near_cache_seconds,
    )
    service, asked, _ = await start(config)
    path = "team/app/manifests/v1"
    await service.auth("up", path)
    kept = await service.resolver.get_auth_headers("up", path)
    assert kept.cache_hit
    if near_cache_seconds == 0:
        assert kept.reuse is None
        for _ in range(3):
            await service.auth("up", path)
        assert asked.counts["get_auth_headers"] == 5
        return
    assert kept.reuse is not None and kept.reuse.token_layer == "near"
    assert kept.reuse.until <= time.monotonic() + near_cache_seconds
    assert kept.expires_at is not None
    assert kept.reuse.until <= time.monotonic() + (kept.expires_at - time.time()) + 0.01


class _Aborted(Exception):
    pass


class _Context:
    """The part of grpc.aio.ServicerContext the servicer uses, with the deadline set by the
    test: a deadline that passed before the call was handled cannot be sent over a real
    channel (the client fails it first), so this in-process context stands in for it."""

    def __init__(self) -> None:
        self.remaining: float | None = None
        self.code: grpc.StatusCode | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def abort_with_status(self, status: object) -> None:
        raise _Aborted(self.code)


async def test_a_repeat_after_the_callers_deadline_is_the_resolvers_deadline_answer(
    start: Start, basic_registry: RegistryServer
) -> None:
    assert basic_registry.credentials is not None
    config = _config(("up", basic_registry.url), up={"credentials": basic_registry.credentials})
    service, asked, _ = await start(config)
    servicer = UpstreamServicer(service.resolver)
    request = pb.GetAuthHeadersRequest(upstream_id="up", path="team/app/manifests/v1")
    context = _Context()
    await servicer.GetAuthHeaders(request, context)  # type: ignore[arg-type]  # discovers
    kept = await servicer.GetAuthHeaders(request, context)  # type: ignore[arg-type]
    assert await servicer.GetAuthHeaders(request, context) is kept  # type: ignore[arg-type]
    assert asked.counts["get_auth_headers"] == 2
    context.remaining = 0.0
    with pytest.raises(_Aborted):
        await servicer.GetAuthHeaders(request, context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert asked.counts["get_auth_headers"] == 3
