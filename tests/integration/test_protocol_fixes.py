"""Registry-protocol fixes against real servers, through gRPC.

1. One retry policy: one 503 from the token server (its real fixture, ``fail_count=1``)
   or from ``/v2/`` (the proxy in front of a real docker-registry) no longer fails the call.
2. A 429 on the discovery ping or from the token server is a rate limit with its delay:
   GetAuthHeaders answers UNAVAILABLE / UPSTREAM_RATE_LIMITED with a google.rpc.RetryInfo,
   ResolveUpstream reports ATTEMPT_OUTCOME_RATE_LIMITED with HTTP 429 and retry_after_seconds,
   and a rate limit does not count against the circuit breaker (as a 429 to the probe never did).
3. A manifest redirected to another host is followed, without the upstream's Authorization,
   authenticating anew at the target, and the Hit carries the final URL.
4. ``tags/list`` is probed with GET, and a HEAD refused with 400/405/501 is asked with GET.

Real parts wherever they produce the behaviour: docker-registry (distribution 2.8) with the
token server fixture, and the proxy fixture in front of them for faults a real registry does
not produce on demand. Scripted servers stand in, and each such test says why, only where no
real server here behaves so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.scripted import Reply, ScriptedServer, start_scripted
from tests.support.service import Service, error_details, http, make_config, upstream_entry
from tests.support.token_server import TokenServer
from vregistry.v1 import upstream_service_pb2 as pb

StartService = Callable[..., Awaitable[Service]]
Outcome = pb.AttemptOutcome

DIGEST = "sha256:" + "a" * 64
ORIGIN_HOST = "127.0.0.2"  # a second loopback host: another host to an HTTP client
STORAGE_HOST = "127.0.0.3"


def _retry_delay(error: grpc.aio.AioRpcError) -> int | None:
    """The google.rpc.RetryInfo delay in seconds, as a Go or Java client reads it; None if absent."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for packed in status_pb2.Status.FromString(value).details:
            if packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                packed.Unpack(info)
                return int(info.retry_delay.seconds)
    return None


async def _service(
    service_factory: StartService,
    *members: tuple[str, str, tuple[str, str] | None, dict[str, object]],
    **settings: object,
) -> Service:
    env: dict[str, str] = {}
    entries = [
        upstream_entry(uid, url, credentials=creds, env=env, **extra)
        for uid, url, creds, extra in members
    ]
    config = make_config(entries, {"r": [m[0] for m in members]}, env=env, **settings)
    return await service_factory(config)


# --------------------------------------------------------------------------- 1. retries


async def test_one_503_from_the_token_server_is_retried(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    """The real token server answers one 503, then issues tokens: the call succeeds."""
    token_server.configure(fail_status=503, fail_count=1)
    service = await _service(
        service_factory, ("up", token_registry.url, token_registry.credentials, {})
    )
    reply = await service.auth("up", "private/app/manifests/v1")
    assert reply.scheme == "bearer"
    assert reply.headers["Authorization"].startswith("Bearer ")
    assert [(r.method, r.status) for r in token_server.records] == [("GET", 503), ("GET", 200)]
    # The token works at the registry: it is a real one, for the right scope.
    fetched = await http("HEAD", f"{token_registry.url}/v2/private/app/manifests/v1", reply.headers)
    assert fetched.status_code == 200


async def test_one_503_from_the_token_server_does_not_fail_a_resolution(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    token_server.configure(fail_status=503, fail_count=1)
    service = await _service(
        service_factory, ("up", token_registry.url, token_registry.credentials, {})
    )
    reply = await service.resolve("r", "private/app/manifests/v1")
    assert [a.outcome for a in reply.attempts] == [Outcome.ATTEMPT_OUTCOME_FOUND]


async def test_one_503_on_v2_is_retried(
    service_factory: StartService, token_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    """The proxy answers the first ``GET /v2/`` with 503, then forwards to the real registry."""
    flaky = proxy_factory(token_registry, fail_with=503, fail_count=1, fault_paths=("/v2/",))
    service = await _service(service_factory, ("up", flaky.url, None, {}))
    reply = await service.auth("up", "public/alpine/manifests/latest")
    assert reply.scheme == "bearer"
    assert flaky.ping_count == 2
    assert [r.status for r in flaky.records] == [503, 401]


# --------------------------------------------------------------------------- 2. rate limits


async def test_v2_rate_limited_is_rate_limited_with_retry_info(
    service_factory: StartService, token_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    """``/v2/`` answers 429 Retry-After: 30 (Docker Hub and GHCR rate-limit it): the proxy
    injects it in front of the real registry, as no local registry rate-limits."""
    limited = proxy_factory(token_registry, fail_with=429, retry_after="30", fault_paths=("/v2/",))
    service = await _service(service_factory, ("up", limited.url, None, {}))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "public/alpine/manifests/latest")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.reason == "UPSTREAM_RATE_LIMITED"
    assert details.metadata["upstream_id"] == "up"
    assert _retry_delay(info.value) == 30
    assert limited.ping_count == 1, "30 s is longer than the longest wait: reported, not waited"


async def test_v2_rate_limited_attempt_is_rate_limited_and_does_not_open_the_circuit(
    service_factory: StartService,
    token_registry: RegistryServer,
    open_registry: RegistryServer,
    proxy_factory: ProxyFactory,
) -> None:
    limited = proxy_factory(token_registry, fail_with=429, retry_after="30", fault_paths=("/v2/",))
    service = await _service(
        service_factory,
        ("limited", limited.url, None, {}),
        ("open", open_registry.url, None, {}),
        circuit_failure_threshold=1,
    )
    for round_number in (1, 2):  # refresh: each round checks the upstreams
        reply = await service.resolve("r", "library/alpine/manifests/latest", refresh=True)
        assert reply.upstream.id == "open"
        first = reply.attempts[0]
        assert first.outcome == Outcome.ATTEMPT_OUTCOME_RATE_LIMITED, round_number
        assert first.http_status == 429
        assert first.retry_after_seconds == 30
        assert "circuit is open" not in first.message
    # Threshold 1: had the 429 counted as a failure, the second round would not have pinged.
    assert limited.ping_count == 2


TOKEN_FLOWS = [
    pytest.param({}, "GET", id="get-flow"),
    pytest.param({"token_flow": "oauth2"}, "POST", id="oauth2-flow"),
]


@pytest.mark.parametrize(("extra", "method"), TOKEN_FLOWS)
async def test_token_server_rate_limited_is_rate_limited_with_retry_info(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    extra: dict[str, object],
    method: str,
) -> None:
    """The real token server answers 429 Retry-After: 30 (its ``fail_status`` knob)."""
    token_server.configure(fail_status=429, fail_retry_after="30")
    service = await _service(
        service_factory, ("up", token_registry.url, token_registry.credentials, extra)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", "private/app/manifests/v1")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.reason == "UPSTREAM_RATE_LIMITED"
    assert _retry_delay(info.value) == 30
    # A rate limit is not a flow refusal: no fallback to the other flow, no retry.
    assert [r.method for r in token_server.records] == [method]


@pytest.mark.parametrize(("extra", "method"), TOKEN_FLOWS)
async def test_token_server_rate_limited_attempt_is_rate_limited(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    extra: dict[str, object],
    method: str,
) -> None:
    token_server.configure(fail_status=429, fail_retry_after="30")
    service = await _service(
        service_factory, ("up", token_registry.url, token_registry.credentials, extra)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.resolve("r", "private/app/manifests/v1")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    (attempt,) = details.attempts
    assert attempt.outcome == Outcome.ATTEMPT_OUTCOME_RATE_LIMITED
    assert attempt.http_status == 429
    assert attempt.retry_after_seconds == 30
    assert [r.method for r in token_server.records] == [method]


# --------------------------------------------------------------------------- 3. manifest redirects


def _redirecting_origin(target_url: str) -> ScriptedServer:
    """An upstream on 127.0.0.2 that wants Basic credentials and sends every manifest to
    ``target_url`` with a 307, as registry.k8s.io sends manifests to another registry.
    Scripted: no local registry redirects manifests to another host."""

    def script(method: str, path: str) -> Reply:
        if path == "/v2/":
            return Reply(401, headers={"WWW-Authenticate": 'Basic realm="origin"'})
        if "/manifests/" in path:
            return Reply(307, headers={"Location": f"{target_url}{path}"})
        return Reply(404)

    return start_scripted(script, host=ORIGIN_HOST)


async def test_manifest_redirect_to_another_host_is_followed_and_authenticated_there(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    proxy_factory: ProxyFactory,
) -> None:
    """The target is the real token-auth registry (behind the counting proxy, to see what
    it receives): it answers 401 with its own Bearer challenge, a token is fetched from its
    token server for the same scope, anonymously, and the manifest is found there."""
    target = proxy_factory(token_registry)
    origin = _redirecting_origin(target.url)
    try:
        service = await _service(
            service_factory, ("k8s", origin.url, ("carol", "origin-only-secret"), {})
        )
        image = token_registry.images["public/alpine:latest"]
        reply = await service.resolve("r", image.manifest_path)

        assert [a.outcome for a in reply.attempts] == [Outcome.ATTEMPT_OUTCOME_FOUND]
        assert reply.attempts[0].http_status == 200
        assert reply.url == f"{target.url}/v2/{image.manifest_path}", "the final URL"
        assert reply.digest == image.digest
        assert reply.headers["Authorization"].startswith("Bearer ")
        # The origin got its Basic credentials; the target never did: its first HEAD went
        # without Authorization (401), the second with the target's own token.
        assert all(s.authorization for s in origin.seen if s.path != "/v2/")
        heads = [r for r in target.records if r.method in ("HEAD", "GET")]
        assert [(r.has_authorization, r.status) for r in heads] == [(False, 401), (True, 200)]
        # The token request carried no credentials (they are the origin's), same scope.
        (token_request,) = token_server.records
        assert not token_request.has_authorization
        assert token_request.scopes == ("repository:public/alpine:pull",)
        # What the caller got is enough to fetch the manifest where it really is.
        fetched = await http("GET", reply.url, reply.headers)
        assert fetched.status_code == 200 and fetched.content == image.manifest
    finally:
        origin.stop()


async def test_manifest_redirect_to_another_host_without_auth_keeps_no_authorization(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    """The target is the real open registry: found there, and the Hit's headers carry no
    Authorization (the origin's Basic credentials are not for that host)."""
    target = proxy_factory(open_registry)
    origin = _redirecting_origin(target.url)
    try:
        service = await _service(
            service_factory, ("k8s", origin.url, ("carol", "origin-only-secret"), {})
        )
        reply = await service.resolve("r", "library/alpine/manifests/latest")
        assert reply.url == f"{target.url}/v2/library/alpine/manifests/latest"
        assert "Authorization" not in reply.headers
        assert reply.digest == open_registry.images["library/alpine:latest"].digest
        assert not any(r.has_authorization for r in target.records)
    finally:
        origin.stop()


async def test_manifest_redirect_hops_are_bounded(service_factory: StartService) -> None:
    """Scripted: a registry that redirects a manifest to itself for ever (no real one does)."""

    def script(method: str, path: str) -> Reply:
        if path == "/v2/":
            return Reply(200)
        return Reply(302, headers={"Location": path})

    loop = start_scripted(script, host=ORIGIN_HOST)
    try:
        service = await _service(service_factory, ("loop", loop.url, None, {}))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.resolve("r", "library/alpine/manifests/latest")
        (attempt,) = error_details(info.value).attempts
        assert attempt.outcome == Outcome.ATTEMPT_OUTCOME_UNAVAILABLE
        assert "more than 3 times" in attempt.message
        assert len([s for s in loop.seen if s.method == "HEAD"]) == 4, "one try, three hops"
    finally:
        loop.stop()


async def test_blob_redirect_to_storage_is_found_and_not_followed(
    service_factory: StartService,
) -> None:
    """Unchanged: a blob's redirect to storage says "found"; storage is never contacted.
    Scripted: the local registry serves blobs itself, without a storage redirect."""
    storage = start_scripted(lambda method, path: Reply(200), host=STORAGE_HOST)

    def script(method: str, path: str) -> Reply:
        if path == "/v2/":
            return Reply(401, headers={"WWW-Authenticate": 'Basic realm="origin"'})
        return Reply(307, headers={"Location": f"{storage.url}/blob?sig=x"})

    origin = start_scripted(script, host=ORIGIN_HOST)
    try:
        service = await _service(
            service_factory, ("up", origin.url, ("carol", "origin-only-secret"), {})
        )
        reply = await service.resolve("r", f"library/alpine/blobs/{DIGEST}")
        assert reply.url == f"{origin.url}/v2/library/alpine/blobs/{DIGEST}"
        assert reply.digest == DIGEST
        assert storage.seen == []
    finally:
        origin.stop()
        storage.stop()


# --------------------------------------------------------------------------- 4. tags/list, HEAD refused


async def test_tags_list_is_probed_with_get(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    """The real docker-registry answers HEAD tags/list with 405: it is never asked with HEAD."""
    counting = proxy_factory(open_registry)
    service = await _service(service_factory, ("open", counting.url, None, {}))
    reply = await service.resolve("r", "library/alpine/tags/list")
    assert reply.attempts[0].outcome == Outcome.ATTEMPT_OUTCOME_FOUND
    assert reply.attempts[0].http_status == 200
    path = "/v2/library/alpine/tags/list"
    assert (counting.count("HEAD", path), counting.count("GET", path)) == (0, 1)


def _head_refusing_registry(status: int) -> ScriptedServer:
    """A registry that refuses HEAD with ``status`` and answers GET: go-containerregistry's
    registry answers HEAD tags/list with 400 (METHOD_UNKNOWN). Scripted: no such registry
    is installed here, and distribution answers 405."""
    body = b'{"name":"library/alpine","tags":["latest"]}'

    def script(method: str, path: str) -> Reply:
        if path == "/v2/":
            return Reply(200)
        if method == "HEAD":
            return Reply(status, body=b'{"errors":[{"code":"METHOD_UNKNOWN"}]}')
        if path.endswith("/tags/list"):
            return Reply(200, body=body)
        return Reply(
            200,
            body=b"{}",
            headers={"Docker-Content-Digest": DIGEST},
            content_type="application/vnd.oci.image.manifest.v1+json",
        )

    return start_scripted(script)


async def test_tags_list_of_a_registry_refusing_head_with_400(
    service_factory: StartService,
) -> None:
    registry = _head_refusing_registry(400)
    try:
        service = await _service(service_factory, ("ggcr", registry.url, None, {}))
        reply = await service.resolve("r", "library/alpine/tags/list")
        assert reply.attempts[0].outcome == Outcome.ATTEMPT_OUTCOME_FOUND
        assert reply.attempts[0].http_status == 200
    finally:
        registry.stop()


@pytest.mark.parametrize("status", [400, 405, 501])
async def test_manifest_head_refused_is_asked_with_get(
    service_factory: StartService, status: int
) -> None:
    registry = _head_refusing_registry(status)
    try:
        service = await _service(
            service_factory, ("nohead", registry.url, None, {}), circuit_failure_threshold=1
        )
        for _ in range(2):  # and it does not count against the circuit (refresh: re-checked)
            reply = await service.resolve("r", "library/alpine/manifests/latest", refresh=True)
            assert reply.attempts[0].outcome == Outcome.ATTEMPT_OUTCOME_FOUND
            assert reply.digest == DIGEST
        methods = [s.method for s in registry.seen if "/manifests/" in s.path]
        assert methods == ["HEAD", "GET", "HEAD", "GET"]
    finally:
        registry.stop()
