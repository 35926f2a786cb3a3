"""Secrets stay secret: after every RPC and every error path, no password or token anywhere.

A real server process (with Redis and the metrics endpoint) serves every RPC
and fails in every way we can provoke; then its logs, every Redis key and
value, and the metrics page are scanned for the passwords and for every token
the server handed out.
"""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from tests.support.processes import RedisServer, free_port
from tests.support.registry import RegistryServer
from tests.support.server_process import launch
from tests.support.token_server import TokenServer
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc

TOKEN_PW = "s3cret-token-pw"
BASIC_PW = "s3cret-basic-pw"
WRONG_PW = "wrong-password-Zq81"
CACHE_KEY = base64.b64encode(bytes(range(32))).decode()


def _calls(
    stub: pb_grpc.UpstreamServiceStub,
) -> list[pb.GetAuthHeadersResponse | pb.ResolveUpstreamResponse]:
    replies: list[object] = []

    def call(method: object, request: object) -> None:
        try:
            replies.append(method(request, timeout=15))  # type: ignore[operator]
        except grpc.RpcError as error:
            details = error.details() or ""  # type: ignore[attr-defined]
            for secret in (TOKEN_PW, BASIC_PW, WRONG_PW):
                assert secret not in details

    for upstream in ("token", "basic", "wrong", "open", "down", "ghost"):
        call(stub.UrlFor, pb.UrlForRequest(upstream_id=upstream, path="private/app/manifests/v1"))
        for path in ("private/app/manifests/v1", "public/alpine", "team/app", "", "BAD//path"):
            call(stub.GetAuthHeaders, pb.GetAuthHeadersRequest(upstream_id=upstream, path=path))
            call(
                stub.GetAuthHeaders,
                pb.GetAuthHeadersRequest(upstream_id=upstream, path=path, actions=["push", "x"]),
            )
    for registry in ("r", "empty", "ghost"):
        for path in (
            "private/app/manifests/v1",
            "team/app/manifests/v1",
            "nope/x/manifests/1",
            "public/alpine/tags/list",
            "../x",
        ):
            call(stub.ResolveUpstream, pb.ResolveUpstreamRequest(registry_id=registry, path=path))
    return replies  # type: ignore[return-value]


def test_no_secret_in_logs_redis_or_metrics(
    tmp_path: Path,
    redis_server: RedisServer,
    token_registry: RegistryServer,
    basic_registry: RegistryServer,
    open_registry: RegistryServer,
    token_server: TokenServer,
) -> None:
    redis.Redis.from_url(redis_server.url).flushdb()
    metrics_port = free_port()
    document = {
        "upstreams": [
            {
                "id": "token",
                "name": "Token",
                "url": token_registry.url,
                "allow_http": True,
                "username": "bob",
                "password_env": "PW_TOKEN",
            },
            {
                "id": "basic",
                "name": "Basic",
                "url": basic_registry.url,
                "allow_http": True,
                "username": "alice",
                "password_env": "PW_BASIC",
            },
            {
                "id": "wrong",
                "name": "Wrong",
                "url": token_registry.url,
                "allow_http": True,
                "username": "bob",
                "password_env": "PW_WRONG",
            },
            {"id": "open", "name": "Open", "url": open_registry.url, "allow_http": True},
            {
                "id": "down",
                "name": "Down",
                "url": f"http://127.0.0.1:{free_port()}",
                "allow_http": True,
            },
        ],
        "registries": [
            {"id": "r", "name": "R", "upstreams": ["wrong", "down", "open", "basic", "token"]},
            {"id": "empty", "name": "Empty", "upstreams": []},
        ],
        "settings": {"redis_url": redis_server.url, "token_cache_key_env": "CACHE_KEY"},
    }
    env = {"PW_TOKEN": TOKEN_PW, "PW_BASIC": BASIC_PW, "PW_WRONG": WRONG_PW, "CACHE_KEY": CACHE_KEY}
    server = launch(
        tmp_path,
        document,
        env=env,
        args=["--log-level", "debug", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            replies = _calls(pb_grpc.UpstreamServiceStub(channel))
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    finally:
        assert server.stop() == 0
    authorizations = {
        value
        for reply in replies
        if hasattr(reply, "headers")
        for name, value in reply.headers.items()  # type: ignore[union-attr]
        if name == "Authorization"
    }
    tokens = {a.split(" ", 1)[1] for a in authorizations}
    assert any(a.startswith("Bearer ") for a in authorizations) and any(
        a.startswith("Basic ") for a in authorizations
    )
    # Every token minted while the suite ran, including ones the server never returned.
    secrets = {TOKEN_PW, BASIC_PW, WRONG_PW, CACHE_KEY, *tokens}
    secrets |= {t.split(".")[2] for t in tokens if t.count(".") == 2}  # JWT signatures alone

    logs = server.logs()
    assert '"msg": "fetched bearer token"' in logs, "debug logs were captured"
    store = redis.Redis.from_url(redis_server.url)
    keys = store.keys("*")
    assert keys, "tokens were cached in Redis"
    dump = "\n".join(
        k.decode() + "=" + (store.get(k) or b"").decode(errors="replace") for k in keys
    )
    assert "vregistry_rpc_requests_total" in scrape and "vregistry_token_fetches_total" in scrape

    for where, text in (("logs", logs), ("redis", dump), ("metrics", scrape)):
        for secret in secrets:
            assert secret not in text, f"a secret leaked into the {where}"
    for key in keys:  # tokens and resolution-cache answers: hashed keys only
        prefix = next(
            (p for p in (b"vregistry:token:v1:", b"vregistry:resolve:v1:") if key.startswith(p)),
            b"",
        )
        assert prefix and len(key) == len(prefix) + 64


@pytest.mark.parametrize("bad", ["short", "!!!not-base64!!!"])
def test_bad_cache_key_is_refused_at_start(tmp_path: Path, bad: str) -> None:
    import subprocess

    from tests.support.server_process import SERVER, server_env

    config = tmp_path / "c.yaml"
    config.write_text("settings:\n  token_cache_key_env: CACHE_KEY\n")
    result = subprocess.run(
        [SERVER, "--config", str(config)],
        env=server_env({"CACHE_KEY": bad}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "token_cache_key_env" in result.stderr
    assert bad not in result.stderr
