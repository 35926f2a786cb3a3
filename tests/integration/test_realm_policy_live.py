"""Where credentials may go, against live servers: connections go to the checked address, and
hostile or redirecting realms through gRPC (the pure rules are in tests/unit/test_realm_policy.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest
from yarl import URL

from tests.support.registry import RegistryServer
from tests.support.scripted import Reply, start_scripted
from tests.support.service import Service, error_details, make_config, upstream_entry
from tests.support.token_server import TokenServer
from vregistry_server.oci import http
from vregistry_server.oci.egress import current_scope
from vregistry_server.oci.realm_policy import (
    EGRESS_REFUSED,
    AddressClass,
    EgressRefusedError,
    lift_restriction,
    restrict_connections,
)
from vregistry_server.oci.wire import Request, Wire

StartService = Callable[..., Awaitable[Service]]


def _resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"unknown host {host}")
        return table[host]

    return resolve


async def test_connections_go_to_the_checked_address(token_server: TokenServer) -> None:
    # "rebind.test" is unknown to the system resolver: connecting at all proves the
    # connection used the address our policy checked, not a second DNS answer.
    client = Wire(
        connect_timeout=2,
        tls=http.tls_context(),
        max_pools=4,
        resolve=_resolver({"rebind.test": ["127.0.0.1"], "meta.test": ["169.254.169.254"]}),
    )
    token = restrict_connections(frozenset({AddressClass.PUBLIC, AddressClass.LOOPBACK}))

    def get(url: str) -> Request:
        return Request("GET", URL(url), {}, None, True, 64 * 1024)

    try:
        reply = await client.request(
            get(f"http://rebind.test:{token_server.port}/"), seconds=2, scope=current_scope()
        )
        assert reply.status > 0  # it answered: the connection was made
        with pytest.raises(EgressRefusedError) as caught:
            await client.request(get("http://meta.test:80/"), seconds=2, scope=current_scope())
        assert EGRESS_REFUSED in str(caught.value)
    finally:
        lift_restriction(token)
        client.close()


async def _hostile(
    service_factory: StartService, realm: str, *allow: str
) -> tuple[Service, object]:
    server = start_scripted(
        lambda m, p: Reply(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'})
    )
    env: dict[str, str] = {}
    entry = upstream_entry(
        "up",
        server.url,
        credentials=("carol", "keep-me-secret"),
        env=env,
        realm_allow_hosts=list(allow),
    )
    return await service_factory(make_config([entry], {"r": ["up"]}, env=env)), server


@pytest.mark.parametrize(
    ("realm", "allow"),
    [
        ("http://collector.example.net/token", ()),  # foreign host
        (
            "http://localhost:9/token",
            (),
        ),  # another host name for the same machine is still another host
        (
            "http://169.254.169.254/latest/meta-data",
            ("169.254.169.254",),
        ),  # allow-listed, but link-local
    ],
)
async def test_hostile_realm_gets_no_credentials(
    service_factory: StartService, realm: str, allow: tuple[str, ...]
) -> None:
    service, server = await _hostile(service_factory, realm, *allow)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.auth("up", "library/alpine")
        details = error_details(info.value)
        assert details.code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.reason == "UPSTREAM_REALM_REFUSED"
        assert "no credentials were sent" in details.message
        # ResolveUpstream reports the same refusal as an auth failure of that upstream.
        with pytest.raises(grpc.aio.AioRpcError) as resolved:
            await service.resolve("r", "library/alpine/manifests/latest")
        attempt = error_details(resolved.value).attempts[0]
        assert attempt.outcome == 3  # ATTEMPT_OUTCOME_AUTH_FAILED
    finally:
        server.stop()  # type: ignore[attr-defined]


async def test_allow_listed_realm_host_is_used(
    service_factory: StartService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    token_server.set_user("carol", "keep-me-secret")
    realm = f"http://localhost:{token_server.port}/token"
    service, server = await _hostile(service_factory, realm, "localhost")
    try:
        reply = await service.auth("up", "public/alpine")
        assert reply.scheme == "bearer"
        assert token_server.records[0].username == "carol"
    finally:
        server.stop()  # type: ignore[attr-defined]


async def test_redirect_loops_are_bounded(service_factory: StartService) -> None:
    # A stand-in token endpoint that redirects forever (no real token server does).
    def script(method: str, path: str) -> Reply:
        if path.startswith("/v2/"):
            return Reply(
                401, headers={"WWW-Authenticate": f'Bearer realm="{server.url}/token",service="s"'}
            )
        return Reply(302, headers={"Location": "/token?again=1"})

    server = start_scripted(script)
    try:
        service = await service_factory(make_config([upstream_entry("up", server.url)]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.auth("up", "library/alpine")
        details = error_details(info.value)
        assert details.reason == "UPSTREAM_PROTOCOL_ERROR"
        assert "more than 3 redirects" in details.message
        assert len([s for s in server.seen if s.path.startswith("/token")]) == 4
    finally:
        server.stop()
