"""ResolveUpstream against real registries: priority order, outcomes, and error details."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest

from tests.support.processes import free_port
from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.service import Service, error_details, http, make_config, upstream_entry
from tests.support.token_server import TokenServer
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.oci.probe import MANIFEST_MEDIA_TYPES

StartService = Callable[..., Awaitable[Service]]
Outcome = pb.AttemptOutcome


def _outcomes(attempts: list[pb.UpstreamAttempt] | object) -> list[tuple[str, int]]:
    return [(a.upstream_id, a.outcome) for a in attempts]  # type: ignore[attr-defined]


async def _registry(
    service_factory: StartService,
    *members: tuple[str, str, tuple[str, str] | None],
    **settings: object,
) -> Service:
    env: dict[str, str] = {}
    entries = [upstream_entry(uid, url, credentials=creds, env=env) for uid, url, creds in members]
    config = make_config(entries, {"r": [uid for uid, _, _ in members]}, env=env, **settings)
    return await service_factory(config)


async def test_first_upstream_with_the_manifest_wins(
    service_factory: StartService,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
    basic_registry: RegistryServer,
) -> None:
    # public/alpine exists only on the token registry (position 2).
    service = await _registry(
        service_factory,
        ("open", open_registry.url, None),
        ("token", token_registry.url, None),
        ("basic", basic_registry.url, basic_registry.credentials),
    )
    image = token_registry.images["public/alpine:latest"]
    reply = await service.resolve("r", image.manifest_path)
    assert reply.upstream.id == "token"
    assert reply.upstream.position == 2
    assert reply.upstream.url == token_registry.url
    assert reply.upstream.cache_validity_hours == 24
    assert reply.url == f"{token_registry.url}/v2/public/alpine/manifests/latest"
    assert reply.digest == image.digest
    assert reply.media_type == image.media_type
    assert reply.size == image.size
    assert reply.headers["Accept"] == ", ".join(MANIFEST_MEDIA_TYPES)
    assert _outcomes(reply.attempts) == [
        ("open", Outcome.ATTEMPT_OUTCOME_NOT_FOUND),
        ("token", Outcome.ATTEMPT_OUTCOME_FOUND),
        ("basic", Outcome.ATTEMPT_OUTCOME_NOT_CHECKED),
    ]
    assert reply.attempts[0].http_status == 404
    assert reply.attempts[1].http_status == 200
    assert all(a.latency_ms > 0 for a in reply.attempts[:2])
    # What the caller got is enough to fetch the manifest itself.
    fetched = await http("GET", reply.url, reply.headers)
    assert fetched.status_code == 200
    assert fetched.content == image.manifest


@pytest.mark.parametrize(
    "reference", ["library/alpine:latest", "library/busybox:1.36", "library/multi:latest"]
)
async def test_docker_and_oci_manifests_and_indexes(
    service_factory: StartService, open_registry: RegistryServer, reference: str
) -> None:
    service = await _registry(service_factory, ("open", open_registry.url, None))
    image = open_registry.images[reference]
    for path in (image.manifest_path, image.digest_path):
        reply = await service.resolve("r", path)
        assert reply.digest == image.digest
        assert reply.media_type == image.media_type
        assert reply.size == image.size


async def test_blob_resolution(
    service_factory: StartService, token_registry: RegistryServer
) -> None:
    service = await _registry(
        service_factory, ("token", token_registry.url, token_registry.credentials)
    )
    image = token_registry.images["private/app:v1"]
    digest = image.layer_digests[0]
    reply = await service.resolve("r", image.blob_path(digest))
    assert reply.digest == digest
    assert reply.size == image.blob_sizes[digest]
    assert "Accept" not in reply.headers
    fetched = await http("GET", reply.url, reply.headers, follow_redirects=True)
    assert fetched.status_code == 200 and len(fetched.content) == image.blob_sizes[digest]


async def test_tags_list_falls_back_from_head(
    service_factory: StartService, open_registry: RegistryServer
) -> None:
    service = await _registry(service_factory, ("open", open_registry.url, None))
    reply = await service.resolve("r", "library/alpine/tags/list")
    assert reply.upstream.id == "open"
    assert reply.attempts[0].http_status == 200


async def test_priority_holds_when_the_higher_upstream_is_slower(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    slow = proxy_factory(open_registry, delay_seconds=0.4, fault_methods=("HEAD",))
    service = await _registry(
        service_factory, ("slow", slow.url, None), ("fast", open_registry.url, None)
    )
    started = time.monotonic()
    reply = await service.resolve("r", "library/alpine/manifests/latest")
    assert reply.upstream.id == "slow"
    assert time.monotonic() - started >= 0.4
    assert _outcomes(reply.attempts) == [
        ("slow", Outcome.ATTEMPT_OUTCOME_FOUND),
        ("fast", Outcome.ATTEMPT_OUTCOME_NOT_CHECKED),
    ]


async def test_probing_is_concurrent(
    service_factory: StartService,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
    proxy_factory: ProxyFactory,
) -> None:
    # Position 1 takes 0.5 s to miss, position 2 takes 0.5 s to hit: concurrent
    # probing answers in about 0.5 s, sequential checking would take 1 s.
    miss = proxy_factory(open_registry, delay_seconds=0.5, fault_methods=("HEAD",))
    hit = proxy_factory(token_registry, delay_seconds=0.5, fault_methods=("HEAD",))
    service = await _registry(service_factory, ("miss", miss.url, None), ("hit", hit.url, None))
    await service.auth("hit", "public/alpine")  # warm discovery and token
    started = time.monotonic()
    reply = await service.resolve("r", "public/alpine/manifests/latest")
    elapsed = time.monotonic() - started
    assert reply.upstream.id == "hit"
    assert elapsed < 0.9, elapsed


async def test_not_found_anywhere_carries_every_attempt(
    service_factory: StartService, open_registry: RegistryServer, token_registry: RegistryServer
) -> None:
    service = await _registry(
        service_factory, ("open", open_registry.url, None), ("token", token_registry.url, None)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.resolve("r", "public/nothing/manifests/latest")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "NOT_FOUND_ON_UPSTREAMS"
    assert details.metadata["registry_id"] == "r"
    assert _outcomes(details.attempts) == [
        ("open", Outcome.ATTEMPT_OUTCOME_NOT_FOUND),
        ("token", Outcome.ATTEMPT_OUTCOME_NOT_FOUND),
    ]
    assert [a.position for a in details.attempts] == [1, 2]


async def test_down_upstream_is_skipped_and_reported(
    service_factory: StartService, open_registry: RegistryServer
) -> None:
    service = await _registry(
        service_factory,
        ("down", f"http://127.0.0.1:{free_port()}", None),
        ("open", open_registry.url, None),
    )
    reply = await service.resolve("r", "library/alpine/manifests/latest")
    assert reply.upstream.id == "open"
    assert _outcomes(reply.attempts)[0] == ("down", Outcome.ATTEMPT_OUTCOME_UNAVAILABLE)
    assert "cannot connect" in reply.attempts[0].message


async def test_all_unavailable_is_unavailable_not_not_found(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    failing = proxy_factory(open_registry, fail_with=503, fault_methods=("HEAD",))
    service = await _registry(service_factory, ("failing", failing.url, None))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.resolve("r", "library/alpine/manifests/latest")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.reason == "UPSTREAM_UNREACHABLE"
    assert details.attempts[0].outcome == Outcome.ATTEMPT_OUTCOME_UNAVAILABLE
    assert details.attempts[0].http_status == 503


async def test_rate_limited_keeps_retry_after(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    limited = proxy_factory(open_registry, fail_with=429, retry_after="7", fault_methods=("HEAD",))
    service = await _registry(
        service_factory, ("limited", limited.url, None), ("open", open_registry.url, None)
    )
    reply = await service.resolve("r", "library/alpine/manifests/latest")
    assert reply.upstream.id == "open"
    first = reply.attempts[0]
    assert first.outcome == Outcome.ATTEMPT_OUTCOME_RATE_LIMITED
    assert first.http_status == 429
    assert first.retry_after_seconds == 7


async def test_private_repository_without_credentials_is_auth_failed(
    service_factory: StartService, token_registry: RegistryServer
) -> None:
    service = await _registry(service_factory, ("anon", token_registry.url, None))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.resolve("r", "private/app/manifests/v1")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert details.attempts[0].outcome == Outcome.ATTEMPT_OUTCOME_AUTH_FAILED
    assert details.attempts[0].http_status == 401


async def test_wrong_password_is_auth_failed_and_next_upstream_serves(
    service_factory: StartService, token_registry: RegistryServer, basic_registry: RegistryServer
) -> None:
    image = basic_registry.push_image("private/app", "v1")
    service = await _registry(
        service_factory,
        ("wrong", token_registry.url, ("bob", "not-bobs-password")),
        ("basic", basic_registry.url, basic_registry.credentials),
    )
    reply = await service.resolve("r", "private/app/manifests/v1")
    assert reply.upstream.id == "basic"
    assert reply.digest == image.digest
    wrong = reply.attempts[0]
    assert wrong.outcome == Outcome.ATTEMPT_OUTCOME_AUTH_FAILED
    assert "not-bobs-password" not in wrong.message


async def test_rejected_cached_token_triggers_one_reauthentication(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _registry(
        service_factory, ("token", token_registry.url, token_registry.credentials)
    )
    await service.auth("token", "private/app")
    assert token_server.count() == 1
    # Replace the cached token with one the registry rejects (as after a key rotation or revocation).
    resolver = service.resolver
    upstream = resolver.config.upstreams["token"]
    from vregistry_server.oci.paths import parse_path_or_repository

    budget_headers = await resolver.authenticator.headers_for(
        upstream, parse_path_or_repository("private/app"), _budget()
    )
    assert budget_headers.token_key is not None
    from vregistry_server.oci.token_cache import CachedToken

    await resolver.cache.set(
        budget_headers.token_key, CachedToken("revoked.token.value", time.time() + 300), 300
    )
    reply = await service.resolve("r", "private/app/manifests/v1")
    assert reply.upstream.id == "token"
    assert reply.headers["Authorization"] != "Bearer revoked.token.value"
    assert token_server.count() == 2, "exactly one re-authentication"
    assert (await http("HEAD", reply.url, reply.headers)).status_code == 200


async def test_caller_deadline_bounds_resolution(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    # Position 1 hangs past the caller's deadline: the server answers just before the
    # deadline with what it knows (position 2 has it) rather than letting the call expire.
    hanging = proxy_factory(open_registry, delay_seconds=5, fault_methods=("HEAD",))
    service = await _registry(
        service_factory, ("hanging", hanging.url, None), ("open", open_registry.url, None)
    )
    started = time.monotonic()
    reply = await service.resolve("r", "library/alpine/manifests/latest", timeout=0.5)
    assert time.monotonic() - started < 0.5
    assert reply.upstream.id == "open"
    assert reply.attempts[0].outcome == Outcome.ATTEMPT_OUTCOME_UNAVAILABLE
    assert "timed out" in reply.attempts[0].message


async def test_caller_deadline_with_nothing_to_answer(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    hanging = proxy_factory(open_registry, delay_seconds=5, fault_methods=("HEAD",))
    service = await _registry(service_factory, ("hanging", hanging.url, None))
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.resolve("r", "library/alpine/manifests/latest", timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.0
    details = error_details(info.value)
    if details.reason:  # the server's answer, just before the client's own timer
        assert details.reason == "DEADLINE_EXCEEDED"
        assert details.attempts[0].outcome == Outcome.ATTEMPT_OUTCOME_UNAVAILABLE


async def test_probe_timeout_moves_on(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    hanging = proxy_factory(open_registry, delay_seconds=5, fault_methods=("HEAD",))
    service = await _registry(
        service_factory,
        ("hanging", hanging.url, None),
        ("open", open_registry.url, None),
        probe_timeout_seconds=0.3,
    )
    reply = await service.resolve("r", "library/alpine/manifests/latest")
    assert reply.upstream.id == "open"
    assert reply.attempts[0].outcome == Outcome.ATTEMPT_OUTCOME_UNAVAILABLE
    assert "timed out" in reply.attempts[0].message


async def test_unknown_registry_and_empty_registry(
    service_factory: StartService, open_registry: RegistryServer
) -> None:
    entries = [upstream_entry("open", open_registry.url)]
    service = await service_factory(make_config(entries, {"empty": [], "r": ["open"]}))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.resolve("nope", "library/alpine/manifests/latest")
    assert error_details(info.value).reason == "REGISTRY_NOT_FOUND"
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.resolve("empty", "library/alpine/manifests/latest")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(info.value).reason == "REGISTRY_HAS_NO_UPSTREAMS"


@pytest.mark.parametrize(
    "path", ["", "library/alpine", "Library/alpine/manifests/latest", "a/../b/manifests/x"]
)
async def test_invalid_resolve_paths(
    service_factory: StartService, open_registry: RegistryServer, path: str
) -> None:
    service = await service_factory(
        make_config([upstream_entry("open", open_registry.url)], {"r": ["open"]})
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.resolve("r", path)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_resolutions_agree(
    service_factory: StartService, open_registry: RegistryServer, token_registry: RegistryServer
) -> None:
    service = await _registry(
        service_factory, ("open", open_registry.url, None), ("token", token_registry.url, None)
    )
    replies = await asyncio.gather(
        *(service.resolve("r", "public/alpine/manifests/latest") for _ in range(50))
    )
    assert {r.upstream.id for r in replies} == {"token"}


def _budget():  # type: ignore[no-untyped-def]
    from vregistry_server.oci.http import Budget

    return Budget.start(5)
