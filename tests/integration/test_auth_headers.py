"""GetAuthHeaders against real registries and a Docker-token-spec token server."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

import grpc
import httpx
import pytest

from tests.support.images import MANIFEST_ACCEPT_HEADER
from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.scripted import Reply, start_scripted
from tests.support.service import Service, error_details, make_config, upstream_entry
from tests.support.token_server import TokenServer

StartService = Callable[..., Awaitable[Service]]


def _head_manifest(
    registry: RegistryServer, reference: str, headers: dict[str, str]
) -> httpx.Response:
    image = registry.images[reference]
    return httpx.head(
        f"{registry.url}/v2/{image.manifest_path}",
        headers={**headers, "Accept": MANIFEST_ACCEPT_HEADER},
    )


async def _single(service_factory: StartService, url: str, **kwargs: object) -> Service:
    env: dict[str, str] = {}
    settings = kwargs.pop("settings", {})
    entry = upstream_entry("up", url, env=env, **kwargs)  # type: ignore[arg-type]
    return await service_factory(make_config([entry], env=env, **settings))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- schemes


async def test_open_registry_needs_no_headers(
    service_factory: StartService, open_registry: RegistryServer
) -> None:
    service = await _single(service_factory, open_registry.url)
    reply = await service.auth("up", "library/alpine/manifests/latest")
    assert dict(reply.headers) == {}
    assert reply.scheme == "none"
    assert not reply.HasField("expires_at")


async def test_basic_registry_gets_basic_header(
    service_factory: StartService, basic_registry: RegistryServer
) -> None:
    service = await _single(
        service_factory, basic_registry.url, credentials=basic_registry.credentials
    )
    reply = await service.auth("up", "team/app/manifests/v1")
    expected = "Basic " + base64.b64encode(b"alice:s3cret-basic-pw").decode()
    assert dict(reply.headers) == {"Authorization": expected}
    assert reply.scheme == "basic"
    assert _head_manifest(basic_registry, "team/app:v1", dict(reply.headers)).status_code == 200


async def test_basic_registry_without_credentials_is_failed_precondition(
    service_factory: StartService, basic_registry: RegistryServer
) -> None:
    service = await _single(service_factory, basic_registry.url)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "team/app/manifests/v1")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert details.metadata["upstream_id"] == "up"


# --------------------------------------------------------------------------- bearer tokens


async def test_anonymous_token_for_public_repository(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _single(service_factory, token_registry.url)
    before = time.time()
    reply = await service.auth("up", "public/alpine/manifests/latest")
    assert reply.scheme == "bearer"
    assert reply.headers["Authorization"].startswith("Bearer ey")
    assert not reply.cache_hit
    assert before + 290 <= reply.expires_at.seconds <= time.time() + 301
    # The token really opens the repository on the real registry.
    assert (
        _head_manifest(token_registry, "public/alpine:latest", dict(reply.headers)).status_code
        == 200
    )
    (record,) = token_server.records
    assert record.method == "GET"
    assert record.scopes == ("repository:public/alpine:pull",)
    assert record.service == token_server.service
    assert not record.has_authorization


async def test_one_token_per_repository_not_per_blob(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _single(service_factory, token_registry.url)
    image = token_registry.images["public/alpine:latest"]
    first = await service.auth("up", image.manifest_path)
    paths = [image.digest_path, "public/alpine/tags/list", "public/alpine"]
    paths += [image.blob_path(d) for d in image.blob_digests]
    for path in paths:
        reply = await service.auth("up", path)
        assert reply.cache_hit, path
        assert reply.headers["Authorization"] == first.headers["Authorization"]
    assert token_server.count() == 1


async def test_credentials_for_private_repository(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _single(
        service_factory, token_registry.url, credentials=token_registry.credentials
    )
    reply = await service.auth("up", "private/app/manifests/v1")
    assert _head_manifest(token_registry, "private/app:v1", dict(reply.headers)).status_code == 200
    (record,) = token_server.records
    assert record.has_authorization and record.username == "bob"
    assert record.granted == ("repository:private/app:pull",)


async def test_empty_path_asks_for_a_token_without_scope(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _single(
        service_factory, token_registry.url, credentials=token_registry.credentials
    )
    reply = await service.auth("up", "")
    assert reply.scheme == "bearer"
    (record,) = token_server.records
    assert record.scopes == ()


async def test_actions_shape_the_scope(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    # push only where the upstream allows it (tests/integration/test_allowed_actions.py)
    service = await _single(
        service_factory,
        token_registry.url,
        credentials=token_registry.credentials,
        allowed_actions=["pull", "push"],
    )
    await service.auth("up", "private/app", actions=["pull", "push"])
    assert token_server.records[-1].scopes == ("repository:private/app:pull,push",)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "private/app", actions=["steal"])
    assert error_details(info.value).code == grpc.StatusCode.INVALID_ARGUMENT


async def test_discovery_and_token_are_cached(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory(token_registry)
    service = await _single(service_factory, proxy.url)
    repositories = ["public/alpine", "public/a", "public/b"]
    for _ in range(10):
        for repository in repositories:
            await service.auth("up", f"{repository}/manifests/latest")
    assert proxy.ping_count == 1, "one discovery ping for 30 calls"
    assert token_server.count() == len(repositories), "one token per repository"


async def test_concurrent_misses_make_one_ping_and_one_token_request(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory(token_registry, delay_seconds=0.1)
    token_server.configure(delay_seconds=0.2)
    service = await _single(service_factory, proxy.url)
    replies = await asyncio.gather(
        *(service.auth("up", "public/alpine/manifests/latest") for _ in range(200))
    )
    assert len({r.headers["Authorization"] for r in replies}) == 1
    assert proxy.ping_count == 1
    assert token_server.count() == 1


async def test_token_refreshed_when_it_expires(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    # A 62 s token with a 60 s safety margin stays in the cache for one to two seconds: its
    # lifetime runs from the issued_at the token server gives in whole seconds (up to one
    # second before it answered; with 61 s a token issued at x.99 s was never cached).
    token_server.configure(expires_in=62)
    service = await _single(
        service_factory, token_registry.url, settings={"token_expiry_margin_seconds": 60}
    )
    first = await service.auth("up", "public/alpine/manifests/latest")
    assert (await service.auth("up", "public/alpine/manifests/latest")).cache_hit
    await asyncio.sleep(2.3)
    refreshed = await service.auth("up", "public/alpine/manifests/latest")
    assert not refreshed.cache_hit
    assert refreshed.expires_at.seconds >= first.expires_at.seconds
    assert token_server.count() == 2


async def test_cache_ttl_capped_by_max_ttl(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _single(
        service_factory, token_registry.url, settings={"token_cache_max_ttl_seconds": 0.5}
    )
    await service.auth("up", "public/alpine/manifests/latest")
    await asyncio.sleep(0.7)
    assert not (await service.auth("up", "public/alpine/manifests/latest")).cache_hit
    assert token_server.count() == 2


@pytest.mark.parametrize(
    ("knobs", "expected_lifetime"),
    [
        ({"include_expires_in": False}, 60),  # the spec's default
        ({"expires_in": 10}, 60),  # never less than 60 s
        ({"expires_in": 1800}, 1800),  # Harbor's half hour
    ],
)
async def test_expires_in_rules(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    knobs: dict[str, object],
    expected_lifetime: int,
) -> None:
    token_server.configure(**knobs)
    service = await _single(service_factory, token_registry.url)
    now = time.time()
    reply = await service.auth("up", "public/alpine/manifests/latest")
    assert abs(reply.expires_at.seconds - (now + expected_lifetime)) <= 3


@pytest.mark.parametrize("offset", [290.0, -120.0, 20.0])
async def test_a_token_servers_clock_never_stretches_or_voids_a_tokens_lifetime(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    offset: float,
) -> None:
    """Its clock ahead: the token still lives ``expires_in`` from now, not longer (the
    registry, on that clock, expires it then). Behind: not expired on arrival, and cached."""
    token_server.configure(expires_in=60, issued_at_offset_seconds=offset)
    service = await _single(service_factory, token_registry.url)
    now = time.time()
    first = await service.auth("up", "public/alpine/manifests/latest")
    assert now + 57 <= first.expires_at.seconds <= now + 61
    again = await service.auth("up", "public/alpine/manifests/latest")
    assert again.cache_hit
    assert len(token_server.records) == 1


# --------------------------------------------------------------------------- OAuth2 flow


async def test_oauth2_post_fallback_when_get_is_refused(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    token_server.configure(get_status_override=404)  # Azure answers GET with 404
    service = await _single(
        service_factory, token_registry.url, credentials=token_registry.credentials
    )
    reply = await service.auth("up", "private/app/manifests/v1")
    assert _head_manifest(token_registry, "private/app:v1", dict(reply.headers)).status_code == 200
    assert [r.method for r in token_server.records] == ["GET", "POST"]
    post = token_server.records[1]
    assert post.grant_type == "password" and post.username == "bob"
    assert post.form["client_id"] == ["vregistry"]
    # The flow that worked is remembered: the next scope goes straight to POST,
    # with the refresh token the first POST returned.
    await service.auth("up", "private/other/manifests/v1")
    assert [r.method for r in token_server.records] == ["GET", "POST", "POST"]
    assert token_server.records[2].grant_type == "refresh_token"


async def test_oauth2_post_fallback_when_get_is_not_json(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _single(
        service_factory, token_registry.url, credentials=token_registry.credentials
    )
    token_server.configure(non_json=True)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "private/app/manifests/v1")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.reason == "UPSTREAM_PROTOCOL_ERROR"
    assert [r.method for r in token_server.records] == ["GET", "POST"]


async def test_configured_oauth2_flow_skips_get(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _single(
        service_factory,
        token_registry.url,
        credentials=token_registry.credentials,
        token_flow="oauth2",
    )
    await service.auth("up", "private/app/manifests/v1")
    assert [r.method for r in token_server.records] == ["POST"]


async def test_revoked_refresh_token_falls_back_to_password(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _single(
        service_factory,
        token_registry.url,
        credentials=token_registry.credentials,
        token_flow="oauth2",
    )
    await service.auth("up", "private/app/manifests/v1")
    token_server.revoke_refresh_tokens()
    reply = await service.auth("up", "private/second/manifests/v1")
    assert reply.scheme == "bearer"
    assert [r.grant_type for r in token_server.records] == ["password", "refresh_token", "password"]


# --------------------------------------------------------------------------- failures


async def test_wrong_password_is_failed_precondition_after_both_flows(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _single(
        service_factory, token_registry.url, credentials=("bob", "wrong-password-123")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "private/app/manifests/v1")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert details.metadata["upstream_id"] == "up"
    assert "wrong-password-123" not in details.message
    assert [r.method for r in token_server.records] == ["GET", "POST"]


async def test_upstream_down_is_unavailable(
    service_factory: StartService, token_registry: RegistryServer
) -> None:
    from tests.support.processes import free_port

    service = await _single(service_factory, f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "public/alpine/manifests/latest")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.reason == "UPSTREAM_UNREACHABLE"
    assert details.metadata["upstream_id"] == "up"
    assert time.monotonic() - started < 5


async def test_registry_stopped_is_unavailable(
    service_factory: StartService, token_registry: RegistryServer
) -> None:
    service = await _single(service_factory, token_registry.url)
    token_registry.stop()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "public/alpine/manifests/latest")
    assert error_details(info.value).reason == "UPSTREAM_UNREACHABLE"


async def test_token_server_error_is_unavailable(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    token_server.configure(fail_status=503)
    service = await _single(
        service_factory, token_registry.url, credentials=token_registry.credentials
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "private/app/manifests/v1")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.reason == "UPSTREAM_UNREACHABLE"
    assert token_server.count("POST") == 0, "a 5xx is not a flow refusal: no POST fallback"
    assert token_server.count("GET") == 3, "retried twice (probe_retries=2), then reported"


async def test_caller_deadline_is_respected(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    token_server.configure(delay_seconds=3)
    service = await _single(service_factory, token_registry.url)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "public/alpine/manifests/latest", timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5


async def test_configured_timeout_bounds_a_hanging_token_server(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    token_server.configure(delay_seconds=3)
    service = await _single(
        service_factory, token_registry.url, settings={"request_timeout_seconds": 0.5}
    )
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "public/alpine/manifests/latest")
    assert error_details(info.value).reason == "UPSTREAM_UNREACHABLE"
    assert time.monotonic() - started < 1.5


async def test_unknown_upstream(
    service_factory: StartService, open_registry: RegistryServer
) -> None:
    service = await _single(service_factory, open_registry.url)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("missing", "library/alpine")
    assert error_details(info.value).code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("path", ["Library/alpine", "library/alpine/manifests/..", "a//b", "x?y"])
async def test_invalid_path(
    service_factory: StartService, open_registry: RegistryServer, path: str
) -> None:
    service = await _single(service_factory, open_registry.url)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", path)
    assert error_details(info.value).code == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- faults no real server produces
# Stand-in servers below: real registries and token servers do not send these,
# but hostile or broken ones do, and the service must answer precisely.


async def test_malformed_challenge_is_protocol_error(service_factory: StartService) -> None:
    server = start_scripted(
        lambda m, p: Reply(401, headers={"WWW-Authenticate": 'Bearer realm="unterminated'})
    )
    try:
        service = await _single(service_factory, server.url)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.auth("up", "library/alpine")
        details = error_details(info.value)
        assert details.code == grpc.StatusCode.UNAVAILABLE
        assert details.reason == "UPSTREAM_PROTOCOL_ERROR"
        assert "malformed" in details.message
    finally:
        server.stop()


async def test_several_challenges_in_one_header_prefer_bearer(
    service_factory: StartService, token_server: TokenServer
) -> None:
    challenge = (
        f'Basic realm="ignored", Bearer realm="{token_server.url}",service="{token_server.service}"'
    )
    server = start_scripted(lambda m, p: Reply(401, headers={"WWW-Authenticate": challenge}))
    try:
        service = await _single(service_factory, server.url)
        reply = await service.auth("up", "public/alpine")
        assert reply.scheme == "bearer"
        assert token_server.records[0].service == token_server.service
    finally:
        server.stop()


async def test_oversized_token_body_is_protocol_error(service_factory: StartService) -> None:
    def script(method: str, path: str) -> Reply:
        if path.startswith("/v2/"):
            return Reply(
                401, headers={"WWW-Authenticate": f'Bearer realm="{server.url}/token",service="s"'}
            )
        return Reply(200, body=b'{"token": "' + b"x" * 70_000 + b'"}')

    server = start_scripted(script)
    try:
        service = await _single(service_factory, server.url)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.auth("up", "library/alpine")
        details = error_details(info.value)
        assert details.reason == "UPSTREAM_PROTOCOL_ERROR"
        assert "larger than 65536 bytes" in details.message
    finally:
        server.stop()


async def test_authorization_not_carried_across_a_cross_host_redirect(
    service_factory: StartService,
) -> None:
    # 127.0.0.1 and localhost are different hosts to an HTTP client.
    target = start_scripted(
        lambda m, p: Reply(200, body=b'{"token": "from-other-host", "expires_in": 300}')
    )

    def script(method: str, path: str) -> Reply:
        if path.startswith("/v2/"):
            return Reply(
                401, headers={"WWW-Authenticate": f'Bearer realm="{origin.url}/token",service="s"'}
            )
        return Reply(307, headers={"Location": f"http://localhost:{target.port}/token?moved=1"})

    origin = start_scripted(script)
    try:
        # Every redirect hop passes the realm rule too: the other host is allow-listed here
        # (tests/integration/test_egress_policy.py shows a hop that is not being refused).
        service = await _single(
            service_factory,
            origin.url,
            credentials=("carol", "never-forward-me"),
            realm_allow_hosts=["localhost"],
        )
        reply = await service.auth("up", "library/alpine")
        assert reply.headers["Authorization"] == "Bearer from-other-host"
        token_requests = [s for s in origin.seen if s.path.startswith("/token")]
        assert token_requests and token_requests[0].authorization is not None
        assert [s.authorization for s in target.seen] == [None]
    finally:
        origin.stop()
        target.stop()
