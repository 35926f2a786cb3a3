"""Only pull unless the upstream allows more: GetAuthHeaders against the real token server.

The stored credentials of an upstream can often push and delete; a resolver caller gets
a token only for the actions the upstream's ``allowed_actions`` grants (default pull),
and a refused action is answered before anything is sent to the upstream or its realm.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from tests.support.admin import empty_config, start_admin_service
from tests.support.registry import RegistryServer
from tests.support.service import Service, error_details, make_config, upstream_entry
from tests.support.token_server import TokenServer
from vregistry.v1 import upstream_service_pb2 as pb

StartService = Callable[..., Awaitable[Service]]
REPOSITORY = "private/app"


async def _token_upstream(
    service_factory: StartService, registry: RegistryServer, **extra: object
) -> Service:
    env: dict[str, str] = {}
    entry = upstream_entry("up", registry.url, credentials=registry.credentials, env=env, **extra)
    return await service_factory(make_config([entry], env=env))


def _scopes_seen(token_server: TokenServer) -> list[str]:
    return [scope for record in token_server.records for scope in record.scopes]


@pytest.mark.parametrize(
    "actions",
    [["push"], ["pull", "push"], ["push", "delete"], ["delete"], ["*"], ["pull", "*"]],
    ids=lambda a: ",".join(a),
)
async def test_pull_only_upstream_refuses_other_actions_before_any_request(
    service_factory: StartService,
    token_registry: RegistryServer,
    token_server: TokenServer,
    actions: list[str],
) -> None:
    service = await _token_upstream(service_factory, token_registry)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", REPOSITORY, actions=actions)
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.PERMISSION_DENIED
    assert details.reason == "ACTION_NOT_ALLOWED"
    assert details.metadata["upstream_id"] == "up"
    assert "allows only pull" in details.message
    # Nothing reached the token server: not a push scope, not even a discovery with pull.
    assert token_server.records == []
    # Pull itself still works, and only pull was ever asked for.
    reply = await service.auth("up", REPOSITORY, actions=["pull"])
    assert reply.scheme == "bearer"
    assert _scopes_seen(token_server) == [f"repository:{REPOSITORY}:pull"]


async def test_default_actions_are_pull(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _token_upstream(service_factory, token_registry)
    await service.auth("up", REPOSITORY)
    assert _scopes_seen(token_server) == [f"repository:{REPOSITORY}:pull"]


async def test_an_upstream_allowing_push_gets_push_but_not_delete(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _token_upstream(
        service_factory, token_registry, allowed_actions=["pull", "push"]
    )
    reply = await service.auth("up", REPOSITORY, actions=["pull", "push"])
    assert reply.scheme == "bearer"
    assert _scopes_seen(token_server) == [f"repository:{REPOSITORY}:pull,push"]
    assert token_server.records[-1].granted == (f"repository:{REPOSITORY}:pull,push",)
    before = len(token_server.records)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth("up", REPOSITORY, actions=["push", "delete"])
    assert error_details(info.value).reason == "ACTION_NOT_ALLOWED"
    assert len(token_server.records) == before


async def test_star_allows_every_action(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    service = await _token_upstream(service_factory, token_registry, allowed_actions=["*"])
    await service.auth("up", REPOSITORY, actions=["push", "delete"])
    await service.auth("up", REPOSITORY, actions=["*"])
    assert _scopes_seen(token_server) == [
        f"repository:{REPOSITORY}:push,delete",
        f"repository:{REPOSITORY}:*",
    ]


async def test_config_service_sets_and_checks_allowed_actions(
    token_registry: RegistryServer, token_server: TokenServer
) -> None:
    # The registry is on loopback: an upstream created through the API may reach it only
    # when settings.egress_allow_cidrs lists it.
    svc = await start_admin_service(
        empty_config(egress_allow_cidrs=["127.0.0.0/8"]), allow_unauthenticated=True
    )
    try:
        user, password = token_registry.credentials
        created = await svc.create_upstream(
            "up", token_registry.url, username=user, password=password
        )
        assert list(created.allowed_actions) == ["pull"], "default on create"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await svc.resolve_stub.GetAuthHeaders(_auth_request("up", ["push"]), timeout=10)
        assert error_details(info.value).reason == "ACTION_NOT_ALLOWED"
        assert token_server.records == []

        updated = await svc.update_upstream(
            created.name, ["allowed_actions"], allowed_actions=["pull", "push"]
        )
        assert list(updated.allowed_actions) == ["pull", "push"]
        reply = await svc.resolve_stub.GetAuthHeaders(_auth_request("up", ["push"]), timeout=10)
        assert reply.scheme == "bearer"
        assert _scopes_seen(token_server) == [f"repository:{REPOSITORY}:push"]

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await svc.update_upstream(
                created.name, ["allowed_actions"], allowed_actions=["pull", "admin"]
            )
        details = error_details(info.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "field 'allowed_actions'" in details.message and "'admin'" in details.message
        # An empty list in the mask means the default again.
        reset = await svc.update_upstream(created.name, ["allowed_actions"])
        assert list(reset.allowed_actions) == ["pull"]
    finally:
        await svc.close()


def _auth_request(upstream_id: str, actions: list[str]) -> pb.GetAuthHeadersRequest:
    return pb.GetAuthHeadersRequest(upstream_id=upstream_id, path=REPOSITORY, actions=actions)
