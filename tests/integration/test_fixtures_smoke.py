"""Proof that the fixtures are real servers speaking the real protocols."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from tests.support.images import MANIFEST_ACCEPT_HEADER, OCI_INDEX_V1, PushedImage
from tests.support.processes import RedisServer
from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.token_server import TokenServer


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as c:
        yield c


def _challenge_params(header: str) -> dict[str, str]:
    _, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    for part in rest.split('",'):
        key, _, value = part.partition("=")
        params[key.strip()] = value.strip().strip('"')
    return params


async def _head_manifest(
    client: httpx.AsyncClient, registry_url: str, image: PushedImage, token: str | None = None
) -> httpx.Response:
    headers = {"Accept": MANIFEST_ACCEPT_HEADER}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.head(f"{registry_url}/v2/{image.manifest_path}", headers=headers)


async def test_token_registry_sends_bearer_challenge(
    client: httpx.AsyncClient, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    response = await client.get(f"{token_registry.url}/v2/")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    params = _challenge_params(challenge)
    assert params["realm"] == token_server.url
    assert params["service"] == token_server.service
    assert token_registry.realm == token_server.url


async def test_anonymous_public_token_opens_manifest(
    client: httpx.AsyncClient, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    image = token_registry.images["public/alpine:latest"]
    scope = "repository:public/alpine:pull"
    reply = await client.get(
        token_server.url, params={"service": token_server.service, "scope": scope}
    )
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    claims = token_server.decode_token(body["token"])
    assert claims["access"] == [
        {"type": "repository", "name": "public/alpine", "actions": ["pull"]}
    ]

    response = await _head_manifest(client, token_registry.url, image, body["token"])
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert int(response.headers["Content-Length"]) == image.size
    assert response.headers["Content-Type"] == image.media_type
    assert token_server.count("GET", scope) == 1
    assert token_server.records[0].has_authorization is False


async def test_anonymous_private_token_gets_insufficient_scope(
    client: httpx.AsyncClient, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    image = token_registry.images["private/app:v1"]
    reply = await client.get(
        token_server.url,
        params={"service": token_server.service, "scope": "repository:private/app:pull"},
    )
    assert reply.status_code == 200
    token = reply.json()["token"]
    assert token_server.decode_token(token)["access"] == []
    response = await _head_manifest(client, token_registry.url, image, token)
    assert response.status_code == 401
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


async def test_basic_auth_get_token_opens_private_and_wrong_password_is_401(
    client: httpx.AsyncClient, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    image = token_registry.images["private/app:v1"]
    assert token_registry.credentials == ("bob", "s3cret-token-pw")
    params = {
        "service": token_server.service,
        "scope": ["repository:private/app:pull", "repository:public/alpine:pull"],
        "offline_token": "true",
    }
    reply = await client.get(token_server.url, params=params, auth=("bob", "s3cret-token-pw"))
    assert reply.status_code == 200
    body = reply.json()
    assert "refresh_token" in body
    actions = {a["name"]: a["actions"] for a in token_server.decode_token(body["token"])["access"]}
    assert actions == {"private/app": ["pull"], "public/alpine": ["pull"]}
    response = await _head_manifest(client, token_registry.url, image, body["access_token"])
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.digest

    wrong = await client.get(token_server.url, params=params, auth=("bob", "nope"))
    assert wrong.status_code == 401
    assert wrong.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert token_server.count("GET", "repository:private/app:pull") == 2
    assert [r.username for r in token_server.records] == ["bob", "bob"]


async def test_oauth2_post_flow_with_chunked_body(
    client: httpx.AsyncClient, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    image = token_registry.images["private/app:v1"]
    form = (
        "grant_type=password&username=bob&password=s3cret-token-pw&client_id=smoke"
        f"&service={token_server.service}&scope=repository%3Aprivate%2Fapp%3Apull"
        "&access_type=offline"
    ).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(form), 16):
            yield form[i : i + 16]

    reply = await client.post(
        token_server.url,
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "token" not in body
    assert body["scope"] == "repository:private/app:pull"
    assert {"access_token", "expires_in", "issued_at", "refresh_token"} <= set(body)
    record = token_server.records[-1]
    assert record.chunked and record.form["password"] == ["<redacted>"]
    response = await _head_manifest(client, token_registry.url, image, body["access_token"])
    assert response.status_code == 200

    refreshed = await client.post(
        token_server.url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": "smoke",
            "service": token_server.service,
            "scope": "repository:private/app:pull",
        },
    )
    assert refreshed.status_code == 200
    assert token_server.count_by_method == {"POST": 2}

    bad = await client.post(
        token_server.url,
        data={"grant_type": "password", "username": "bob", "password": "x", "client_id": "c"},
    )
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_grant"


async def test_token_server_knobs_and_reset(
    client: httpx.AsyncClient, token_server: TokenServer
) -> None:
    token_server.get_status_override = 404
    token_server.post_disabled = True
    assert (await client.get(token_server.url)).status_code == 404
    assert (await client.post(token_server.url, data={"grant_type": "x"})).status_code == 405
    token_server.configure(get_status_override=None, post_disabled=False, non_json=True)
    html = await client.get(token_server.url)
    assert html.status_code == 200 and html.headers["Content-Type"].startswith("text/html")
    token_server.configure(non_json=False, fail_status=500)
    assert (await client.get(token_server.url)).status_code == 500
    token_server.reset()
    assert token_server.request_count == 0
    token_server.configure(expires_in=7, include_issued_at=False, delay_seconds=0.2)
    started = time.monotonic()
    body = (await client.get(token_server.url)).json()
    assert time.monotonic() - started >= 0.2
    assert body["expires_in"] == 7 and "issued_at" not in body
    claims = token_server.decode_token(body["token"])
    assert claims["exp"] - claims["iat"] == 7


async def test_htpasswd_registry_basic_challenge(
    client: httpx.AsyncClient, basic_registry: RegistryServer
) -> None:
    anonymous = await client.get(f"{basic_registry.url}/v2/")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].lower().startswith("basic ")
    assert basic_registry.credentials == ("alice", "s3cret-basic-pw")
    image = basic_registry.images["team/app:v1"]
    response = await client.head(
        f"{basic_registry.url}/v2/{image.manifest_path}",
        headers={"Accept": MANIFEST_ACCEPT_HEADER},
        auth=("alice", "s3cret-basic-pw"),
    )
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.digest
    wrong = await client.get(f"{basic_registry.url}/v2/", auth=("alice", "wrong"))
    assert wrong.status_code == 401


async def test_open_registry_seeded_images(
    client: httpx.AsyncClient, open_registry: RegistryServer
) -> None:
    assert set(open_registry.images) == {
        "library/alpine:latest",
        "library/busybox:1.36",
        "library/multi:latest",
    }
    for image in open_registry.images.values():
        response = await _head_manifest(client, open_registry.url, image)
        assert response.status_code == 200, image.reference
        assert response.headers["Docker-Content-Digest"] == image.digest
        assert response.headers["Content-Type"] == image.media_type
    multi = open_registry.images["library/multi:latest"]
    assert multi.media_type == OCI_INDEX_V1 and len(multi.children) == 2
    # docker-registry hides OCI content from clients that do not Accept it.
    bare = await client.head(
        f"{open_registry.url}/v2/{multi.manifest_path}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert bare.status_code == 404
    blob = await client.get(f"{open_registry.url}/v2/{multi.children[0].blob_path()}")
    assert blob.status_code == 200
    assert blob.headers["Docker-Content-Digest"] == multi.children[0].layer_digests[0]


async def test_proxy_forwards_counts_delays_and_faults(
    client: httpx.AsyncClient, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    image = open_registry.images["library/alpine:latest"]
    assert (await client.get(f"{proxy.url}/v2/")).status_code == 200
    assert (await client.get(f"{proxy.url}/v2/")).status_code == 200
    head = await _head_manifest(client, proxy.url, image)
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == image.digest
    assert int(head.headers["Content-Length"]) == image.size
    assert head.content == b""
    assert proxy.ping_count == 2
    assert proxy.count("HEAD", f"/v2/{image.manifest_path}") == 1

    proxy.delay_seconds = 0.3
    started = time.monotonic()
    assert (await client.get(f"{proxy.url}/v2/")).status_code == 200
    assert time.monotonic() - started >= 0.3

    proxy.configure(delay_seconds=0.0, fail_with=429, retry_after="7")
    limited = await client.get(f"{proxy.url}/v2/")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    proxy.configure(fail_with=None, close_connection=True)
    with pytest.raises(httpx.TransportError):
        await client.get(f"{proxy.url}/v2/")
    assert proxy.ping_count == 5
    assert [r.status for r in proxy.records] == [200, 200, 200, 200, 429, 0]


async def test_proxy_forwards_authorization(
    client: httpx.AsyncClient, basic_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(basic_registry.url)
    assert (await client.get(f"{proxy.url}/v2/")).status_code == 401
    ok = await client.get(f"{proxy.url}/v2/", auth=("alice", "s3cret-basic-pw"))
    assert ok.status_code == 200
    assert [r.has_authorization for r in proxy.records] == [False, True]


async def test_redis_answers_ping(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.ping() is True
        await client.set("smoke", json.dumps({"ok": True}), ex=5)
        stored = await client.get("smoke")
        assert stored is not None
        assert json.loads(stored) == {"ok": True}
    finally:
        await client.aclose()


async def test_servers_restart_on_the_same_port(
    client: httpx.AsyncClient, redis_server: RedisServer, basic_registry: RegistryServer
) -> None:
    port = redis_server.port
    redis_server.restart()
    assert redis_server.port == port and redis_server.running
    client_redis = aioredis.from_url(redis_server.url)
    try:
        assert await client_redis.ping() is True
    finally:
        await client_redis.aclose()

    basic_registry.stop()
    with pytest.raises(httpx.ConnectError):
        await client.get(f"{basic_registry.url}/v2/")
    basic_registry.start()
    image = basic_registry.images["team/app:v1"]
    credentials = basic_registry.credentials
    assert credentials is not None
    again = await client.head(
        f"{basic_registry.url}/v2/{image.manifest_path}",
        headers={"Accept": MANIFEST_ACCEPT_HEADER},
        auth=credentials,
    )
    assert again.status_code == 200
