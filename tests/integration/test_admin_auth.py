"""Caller authentication: bearer tokens with roles (resolver, admin), and TLS / mTLS handshakes
with certificates the fixtures make."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.admin import AdminService, CapturedLogs, start_admin_service
from tests.support.certs import Pki, make_pki
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.admin.callers import Callers, hash_token
from vregistry_server.runtime.tls import server_credentials

RESOLVER_TOKEN = "resolver-token-Zq81xT0bQ"
ADMIN_TOKEN = "admin-token-Lm27vY4kP"
BOTH_TOKEN = "both-token-Pp93wE1rS"
WRONG_TOKEN = "wrong-token-Xx00aa11Bb"
TOKENS = (RESOLVER_TOKEN, ADMIN_TOKEN, BOTH_TOKEN, WRONG_TOKEN)

CALLERS_FILE = f"""
# sha256 of the token   name        roles          groups
{hash_token(RESOLVER_TOKEN)} frontend resolver       *
{hash_token(ADMIN_TOKEN)}    ops      admin          *
{hash_token(BOTH_TOKEN)}     ci       admin,resolver *
"""


@pytest.fixture
def captured() -> Iterator[CapturedLogs]:
    handler = CapturedLogs()
    logger = logging.getLogger("vregistry_server")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture
async def guarded() -> AsyncIterator[AdminService]:
    service = await start_admin_service(callers=Callers.parse(CALLERS_FILE))
    try:
        yield service
    finally:
        await service.close()


def _md(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_tokens_and_roles(guarded: AdminService, captured: CapturedLogs) -> None:
    def url_for(token: str | None) -> object:
        return guarded.resolve_stub.UrlFor(
            pb.UrlForRequest(upstream_id="nope", path=""), metadata=_md(token), timeout=5
        )

    def list_upstreams(token: str | None) -> object:
        return guarded.admin.ListUpstreams(
            cpb.ListUpstreamsRequest(parent="groups/-"), metadata=_md(token), timeout=5
        )

    # No token, an unknown token, a malformed header: UNAUTHENTICATED on both services.
    assert await _code(url_for(None)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _code(list_upstreams(None)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _code(url_for(WRONG_TOKEN)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _code(list_upstreams(WRONG_TOKEN)) == grpc.StatusCode.UNAUTHENTICATED
    basic = guarded.admin.ListUpstreams(
        cpb.ListUpstreamsRequest(parent="groups/-"),
        metadata=(("authorization", f"Basic {ADMIN_TOKEN}"),),
        timeout=5,
    )
    assert await _code(basic) == grpc.StatusCode.UNAUTHENTICATED
    # The wrong role: PERMISSION_DENIED.
    assert await _code(list_upstreams(RESOLVER_TOKEN)) == grpc.StatusCode.PERMISSION_DENIED
    assert await _code(url_for(ADMIN_TOKEN)) == grpc.StatusCode.PERMISSION_DENIED
    # The right role gets through (NOT_FOUND is the service's own answer).
    assert await _code(url_for(RESOLVER_TOKEN)) == grpc.StatusCode.NOT_FOUND
    assert await _code(list_upstreams(ADMIN_TOKEN)) == grpc.StatusCode.OK
    assert await _code(url_for(BOTH_TOKEN)) == grpc.StatusCode.NOT_FOUND
    assert await _code(list_upstreams(BOTH_TOKEN)) == grpc.StatusCode.OK
    # Health and reflection need no token.
    health = await health_pb2_grpc.HealthStub(guarded.channel).Check(
        health_pb2.HealthCheckRequest(service="vregistry.v1.ConfigService"), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(guarded.channel)
    names: list[str] = []
    async for reply in stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    ):
        names += [s.name for s in reply.list_services_response.service]
    assert "vregistry.v1.ConfigService" in names and "vregistry.v1.UpstreamService" in names
    # Refusals are logged with the caller and the reason, never with the token.
    text = captured.text
    assert '"why": "missing_role"' in text and '"caller": "frontend"' in text
    assert '"why": "unknown_token"' in text and '"why": "missing_token"' in text
    for token in TOKENS:
        assert token not in text


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _start_tls(pki: Pki, *, mutual: bool) -> AdminService:
    credentials = server_credentials(
        str(pki.server.cert_path),
        str(pki.server.key_path),
        str(pki.ca.cert_path) if mutual else None,
    )
    return await start_admin_service(credentials=credentials)


async def _list_over(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    if credentials is None:
        channel = grpc.aio.insecure_channel(target)
    else:
        channel = grpc.aio.secure_channel(target, credentials)
    async with channel:
        stub = cpb_grpc.ConfigServiceStub(channel)
        return await _code(
            stub.ListUpstreams(cpb.ListUpstreamsRequest(parent="groups/-"), timeout=5)
        )


async def test_tls_handshake(pki: Pki) -> None:
    service = await _start_tls(pki, mutual=False)
    try:
        trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
        assert await _list_over(service.target, trusted) == grpc.StatusCode.OK
        async with grpc.aio.secure_channel(service.target, trusted) as channel:
            call = pb_grpc.UpstreamServiceStub(channel).UrlFor(
                pb.UrlForRequest(upstream_id="x", path=""), timeout=5
            )
            assert await _code(call) == grpc.StatusCode.NOT_FOUND  # the service's own answer
        # A client that does not trust the server's CA, and a plaintext client, fail.
        untrusted = grpc.ssl_channel_credentials(root_certificates=pki.other_ca.cert)
        assert await _list_over(service.target, untrusted) == grpc.StatusCode.UNAVAILABLE
        assert await _list_over(service.target, None) == grpc.StatusCode.UNAVAILABLE
    finally:
        await service.close()


async def test_mtls_handshake(pki: Pki) -> None:
    service = await _start_tls(pki, mutual=True)
    try:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert,
            private_key=pki.client.key,
            certificate_chain=pki.client.cert,
        )
        assert await _list_over(service.target, with_cert) == grpc.StatusCode.OK
        without_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
        assert await _list_over(service.target, without_cert) == grpc.StatusCode.UNAVAILABLE
        stranger = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert,
            private_key=pki.stranger.key,
            certificate_chain=pki.stranger.cert,
        )
        assert await _list_over(service.target, stranger) == grpc.StatusCode.UNAVAILABLE
    finally:
        await service.close()


async def test_mtls_with_tokens_together(pki: Pki, tmp_path: Path) -> None:
    credentials = server_credentials(
        str(pki.server.cert_path), str(pki.server.key_path), str(pki.ca.cert_path)
    )
    service = await start_admin_service(
        credentials=credentials, callers=Callers.parse(CALLERS_FILE)
    )
    try:
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert,
            private_key=pki.client.key,
            certificate_chain=pki.client.cert,
        )
        async with grpc.aio.secure_channel(service.target, channel_credentials) as channel:
            stub = cpb_grpc.ConfigServiceStub(channel)
            request = cpb.ListUpstreamsRequest(parent="groups/-")
            assert (
                await _code(stub.ListUpstreams(request, timeout=5))
                == grpc.StatusCode.UNAUTHENTICATED
            )
            assert (
                await _code(stub.ListUpstreams(request, metadata=_md(ADMIN_TOKEN), timeout=5))
                == grpc.StatusCode.OK
            )
    finally:
        await service.close()


async def test_container_healthcheck_over_mtls(pki: Pki) -> None:
    from vregistry_server.runtime import healthcheck

    service = await _start_tls(pki, mutual=True)
    try:
        args = [
            service.target,
            "--ca",
            str(pki.ca.cert_path),
            "--cert",
            str(pki.client.cert_path),
            "--key",
            str(pki.client.key_path),
        ]
        assert await asyncio.to_thread(healthcheck.main, args) == 0
        assert await asyncio.to_thread(healthcheck.main, [service.target]) == 1, "plaintext fails"
    finally:
        await service.close()
