"""realm_allow_hosts survives the admin store: an upstream that works with --config alone
keeps working once --data-dir turns the admin API on (it used to be dropped by the seed).

The upstream is the real token-auth docker-registry addressed as ``localhost`` while its
token realm is on ``127.0.0.1``: another host, so the realm policy refuses it unless
``127.0.0.1`` is on the upstream's realm_allow_hosts.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.conftest import TOKEN_PASSWORD, TOKEN_USER
from tests.support.admin import new_keyring, start_admin_service
from tests.support.registry import RegistryServer
from tests.support.service import make_config, start_service, upstream_entry
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc


def _seed(token_registry: RegistryServer, allow: list[str]) -> dict[str, object]:
    env: dict[str, str] = {}
    url = token_registry.url.replace("127.0.0.1", "localhost")
    entry = upstream_entry(
        "tok", url, credentials=(TOKEN_USER, TOKEN_PASSWORD), env=env, realm_allow_hosts=allow
    )
    return {"config": make_config([entry], {"r": ["tok"]}, env=env)}


async def _auth(target: str) -> pb.GetAuthHeadersResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.UpstreamServiceStub(channel)
        return await stub.GetAuthHeaders(
            pb.GetAuthHeadersRequest(upstream_id="tok", path="private/app"), timeout=15
        )


async def test_the_realm_is_refused_without_the_allow_list(token_registry: RegistryServer) -> None:
    service = await start_service(_seed(token_registry, [])["config"])  # type: ignore[arg-type]
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _auth(service.target)
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "realm" in (info.value.details() or "")
    finally:
        await service.close()


async def test_realm_allow_hosts_survives_the_data_dir(
    token_registry: RegistryServer, tmp_path: Path
) -> None:
    keyring, _text = new_keyring()
    config = _seed(token_registry, ["127.0.0.1"])["config"]
    svc = await start_admin_service(
        config,  # type: ignore[arg-type]
        store="sqlite",
        data_dir=tmp_path,
        keyring=keyring,
        seed=True,
    )
    try:
        reply = await _auth(svc.target)
        assert reply.headers["Authorization"].startswith("Bearer ")
        stored = await svc.admin.GetUpstream(
            cpb.GetUpstreamRequest(name="groups/default/upstreams/tok"), timeout=10
        )
        assert list(stored.upstream.realm_allow_hosts) == ["127.0.0.1"]
    finally:
        await svc.close()

    # Restarted from the same data dir without the seed: the store alone carries it.
    again = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=keyring)
    try:
        assert again.resolver.config.upstreams["tok"].realm_allow_hosts == ("127.0.0.1",)
        reply = await _auth(again.target)
        assert reply.headers["Authorization"].startswith("Bearer ")
    finally:
        await again.close()


async def test_realm_allow_hosts_is_set_and_cleared_through_the_api(
    token_registry: RegistryServer,
) -> None:
    svc = await start_admin_service(store="memory", keyring=new_keyring()[0])
    try:
        url = token_registry.url.replace("127.0.0.1", "localhost")
        created = await svc.create_upstream(
            "tok", url, realm_allow_hosts=["127.0.0.1", "*.example.com"]
        )
        assert list(created.realm_allow_hosts) == ["127.0.0.1", "*.example.com"]
        cleared = await svc.update_upstream(created.name, ["realm_allow_hosts"])
        assert list(cleared.realm_allow_hosts) == []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await svc.update_upstream(
                created.name, ["realm_allow_hosts"], realm_allow_hosts=["https://x.example/"]
            )
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "field 'realm_allow_hosts'" in (info.value.details() or "")
    finally:
        await svc.close()
