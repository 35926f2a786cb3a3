"""ConfigClient: every ConfigService RPC against the live server ($VREGISTRY_STACK's "config"
section), and offline: field masks, names, the service config, token metadata, retries."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from vregistry_client import (
    SERVICE_CONFIG,
    ErrorReason,
    RegistryConfig,
    UpstreamConfig,
    VRegistryClient,
    VRegistryError,
    field_mask,
    registry_name,
    upstream_name,
)
from vregistry_client.v1 import config_service_pb2 as cpb

live = pytest.mark.skipif(
    not os.environ.get("VREGISTRY_STACK"),
    reason="VREGISTRY_STACK is not set: run through tests/system/test_clients.py (make test)",
)


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(os.environ["VREGISTRY_STACK"]).read_text())
    assert "config" in data, "the stack's server runs without ConfigService"
    return data


def _upstream(url: str, hosts: list[str]) -> UpstreamConfig:
    return UpstreamConfig(
        display_name=f"py {url}", url=url, allow_http=True, realm_allow_hosts=hosts
    )


@live
async def test_every_config_rpc(stack: dict[str, Any]) -> None:
    case = stack["config"]
    group, hosts = case["group"], case["realm_allow_hosts"]
    async with VRegistryClient(stack["target"], insecure=True, timeout=20) as client:
        admin = client.config
        opened = await admin.create_upstream(group, "py-open", _upstream(case["open_url"], hosts))
        token = await admin.create_upstream(group, "py-token", _upstream(case["token_url"], hosts))
        with pytest.raises(VRegistryError) as duplicate:
            await admin.create_upstream(group, "py-open", _upstream(case["open_url"], hosts))
        assert duplicate.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert (await admin.get_upstream(opened.name)).etag == opened.etag

        # A plain-name mask and the etag read before; then that etag is stale.
        change = UpstreamConfig(name=opened.name, etag=opened.etag, display_name="renamed")
        renamed = await admin.update_upstream(change, ["display_name"])
        assert renamed.display_name == "renamed" and renamed.etag != opened.etag
        with pytest.raises(VRegistryError) as stale:
            await admin.update_upstream(change, ["display_name"])
        assert stale.value.code == grpc.StatusCode.ABORTED
        assert stale.value.reason_code == ErrorReason.ETAG_MISMATCH

        # Paging one at a time still yields both.
        names = [u.name async for u in admin.list_upstreams(group, page_size=1)]
        assert {opened.name, token.name} <= set(names)

        path = "library/alpine/manifests/latest"
        assert (await admin.test_upstream(opened.name, path)).ok
        assert (await admin.test_upstream(_upstream(case["open_url"], hosts), path)).ok

        registry = await admin.create_registry(group, "py-r", RegistryConfig(display_name="py"))
        registry = await admin.add_upstream(registry.name, opened.name, 1, etag=registry.etag)
        registry = await admin.add_upstream(registry.name, token.name, 2)
        assert [(m.upstream, m.position) for m in registry.upstreams] == [
            (opened.name, 1),
            (token.name, 2),
        ]
        hit = await client.resolve_upstream("py-r", case["hit_path"], refresh=True)
        assert (hit.upstream.id, hit.upstream.position, hit.digest) == (
            "py-token",
            2,
            case["hit_digest"],
        )
        assert not hit.cache_hit and hit.HasField("checked_at")

        registry = await admin.reorder_upstreams(
            registry.name, [token.name, opened.name], etag=registry.etag
        )
        assert registry.upstreams[0].upstream == token.name
        described = RegistryConfig(name=registry.name, description="two")
        registry = await admin.update_registry(described, ["description"])
        assert registry.description == "two"
        assert registry.name in [r.name async for r in admin.list_registries(group)]
        assert (await admin.get_registry(registry.name)).etag == registry.etag

        registry = await admin.remove_upstream(registry.name, opened.name)
        assert len(registry.upstreams) == 1
        with pytest.raises(VRegistryError) as in_use:
            await admin.delete_upstream(token.name)
        assert in_use.value.reason_code == ErrorReason.UPSTREAM_IN_USE
        assert await admin.delete_upstream(token.name, force=True) == [registry.name]
        await admin.delete_registry(registry.name)
        assert await admin.delete_upstream(renamed.name, etag=renamed.etag) == []
        with pytest.raises(VRegistryError) as gone:
            await admin.get_registry(registry.name)
        assert gone.value.code == grpc.StatusCode.NOT_FOUND


def test_field_mask_from_plain_names() -> None:
    assert list(field_mask(cpb.UpstreamConfig, ["display_name", "url"]).paths) == [
        "display_name",
        "url",
    ]
    assert list(field_mask(cpb.UpstreamConfig, ["*"]).paths) == ["*"]
    assert list(field_mask(cpb.RegistryConfig, []).paths) == []
    with pytest.raises(ValueError, match="no_such_field"):
        field_mask(cpb.UpstreamConfig, ["url", "no_such_field"])


def test_resource_names() -> None:
    assert upstream_name("acme", "ghcr") == "groups/acme/upstreams/ghcr"
    assert registry_name("acme", "default") == "groups/acme/registries/default"


def test_service_config_is_the_shared_one() -> None:
    config = json.loads(SERVICE_CONFIG)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] >= 2
    shared = Path(__file__).resolve().parents[2] / "service_config.json"
    if shared.is_file():  # in a checkout; the installed package carries its copy
        assert shared.read_text() == SERVICE_CONFIG, "run scripts/gen_clients.sh"


class _StandIn:
    """A stand-in ConfigService GetUpstream on 127.0.0.1: it records each call's
    authorization header and fails the first ``failures`` calls with UNAVAILABLE. A real
    server cannot be made to fail a chosen number of times, which the retry test needs."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.authorizations: list[str | None] = []

    async def get_upstream(
        self, request: cpb.GetUpstreamRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.GetUpstreamResponse:
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get("authorization")
        self.authorizations.append(value if isinstance(value, str) else None)
        if len(self.authorizations) <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return cpb.GetUpstreamResponse(upstream=cpb.UpstreamConfig(name=request.name))


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[_StandIn, str]]:
    servicer = _StandIn(failures=2)
    handler = grpc.method_handlers_generic_handler(
        "vregistry.v1.ConfigService",
        {
            "GetUpstream": grpc.unary_unary_rpc_method_handler(
                servicer.get_upstream,
                request_deserializer=cpb.GetUpstreamRequest.FromString,
                response_serializer=cpb.GetUpstreamResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"dns:///127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_unavailable_is_retried_and_tokens_are_per_call(
    stand_in: tuple[_StandIn, str],
) -> None:
    servicer, target = stand_in
    wide = "client-wide"  # a stand-in's token, not a secret
    async with VRegistryClient(target, insecure=True, token=wide, timeout=10) as client:
        # Two UNAVAILABLE answers, then the answer: gRPC retried (service config), each try
        # with the client's token.
        name = upstream_name("g", "u")
        assert (await client.config.get_upstream(name)).name == name
        assert servicer.authorizations == ["Bearer client-wide"] * 3
        await client.config.get_upstream(name, token="per-call")  # noqa: S106
        await client.config.get_upstream(name, token=None)
        assert servicer.authorizations[3:] == ["Bearer per-call", None]
        assert "client-wide" not in repr(client)


async def test_without_service_config_unavailable_is_not_retried(
    stand_in: tuple[_StandIn, str],
) -> None:
    servicer, target = stand_in
    async with VRegistryClient(target, insecure=True, service_config=None) as client:
        with pytest.raises(VRegistryError) as info:
            await client.config.get_upstream(upstream_name("g", "u"))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and len(servicer.authorizations) == 1
