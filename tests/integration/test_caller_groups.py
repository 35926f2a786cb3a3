"""Groups as a security boundary, in-process over real gRPC: callers by token and by mTLS
identity (SPIFFE URI SAN, DNS SAN), cross-group PERMISSION_DENIED that does not tell an id of
another group from one that exists nowhere, ``groups/-`` filtered, ALREADY_EXISTS that never
names another group, and the audit of every credential handed out. Real docker-registry
(htpasswd and token auth), the token server fixture, certificates made by the fixtures."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from tests.support.admin import AdminService, CapturedLogs, new_keyring, start_admin_service
from tests.support.certs import Pem, Pki, make_pki
from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.service import ErrorDetails, error_details
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.admin.callers import Callers, hash_token
from vregistry_server.config import build_config
from vregistry_server.model import Config
from vregistry_server.runtime.metrics import REGISTRY
from vregistry_server.runtime.tls import server_credentials

TOKEN_A = "team-a-token-Gv72mLq0"
TOKEN_B = "team-b-token-Rk19sPw4"
TOKEN_OPS = "ops-token-Yt55nHc8"
UNKNOWN_TOKEN = "unknown-token-Qa00zz11"
SPIFFE_A = "spiffe://mesh.local/ns/team-a/sa/puller"
DNS_B = "builder.team-b.test"
PASSWORD_ENV = "CALLER_GROUPS_BASIC_PW"

CALLERS = f"""
# who                          name       roles           groups
{hash_token(TOKEN_A)}          alice-a    resolver,admin  team-a
{hash_token(TOKEN_B)}          bob-b      resolver,admin  team-b
{hash_token(TOKEN_OPS)}        ops        admin,resolver  *
id:{SPIFFE_A}                  puller-a   resolver        team-a
id:dns:{DNS_B}                 builder-b  resolver,admin  team-b
"""
MISSING = "nowhere-1"


def _config(basic: RegistryServer, open_: RegistryServer, token: RegistryServer) -> Config:
    assert basic.credentials is not None
    user, password = basic.credentials

    def entry(upstream_id: str, url: str, group: str, **extra: Any) -> dict[str, Any]:
        return {"id": upstream_id, "name": upstream_id, "url": url, "allow_http": True,
                "group": group, **extra}  # fmt: skip

    document = {
        "upstreams": [
            entry("a-basic", basic.url, "team-a", username=user, password_env=PASSWORD_ENV),
            entry("a-open", open_.url, "team-a"),
            entry("a-token", token.url, "team-a"),
            entry("b-open", open_.url, "team-b"),
        ],
        "registries": [
            {"id": "reg-a", "name": "A", "upstreams": ["a-basic", "a-open"], "group": "team-a"},
            {"id": "reg-b", "name": "B", "upstreams": ["b-open"], "group": "team-b"},
        ],
    }
    return build_config(document, source="caller-groups", env={PASSWORD_ENV: password})


def _md(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


async def _outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, ErrorDetails | None, Any]:
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        details = error_details(exc)
        return details.code, details, None
    return grpc.StatusCode.OK, None, reply


def _basic_value(basic: RegistryServer) -> str:
    assert basic.credentials is not None
    return base64.b64encode(":".join(basic.credentials).encode()).decode()


@pytest.fixture
def captured() -> Iterator[CapturedLogs]:
    handler = CapturedLogs()
    loggers = [logging.getLogger("vregistry_server"), logging.getLogger("vregistry.audit")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


@pytest.fixture
async def service(
    basic_registry: RegistryServer, open_registry: RegistryServer, token_registry: RegistryServer
) -> AsyncIterator[AdminService]:
    running = await start_admin_service(
        _config(basic_registry, open_registry, token_registry),
        keyring=new_keyring()[0],
        callers=Callers.parse(CALLERS),
        seed=True,
    )
    try:
        yield running
    finally:
        await running.close()


# --------------------------------------------------------------------------- UpstreamService

UpstreamCall = Callable[[Any, str, str | None], Awaitable[Any]]
UPSTREAM_CALLS: dict[str, tuple[UpstreamCall, str]] = {
    # method: (the call on an id, an id of team-a that exists)
    "UrlFor": (
        lambda stub, rid, token: stub.UrlFor(
            pb.UrlForRequest(upstream_id=rid, path="library/alpine/manifests/latest"),
            metadata=_md(token),
            timeout=10,
        ),
        "a-open",
    ),
    "GetAuthHeaders": (
        lambda stub, rid, token: stub.GetAuthHeaders(
            pb.GetAuthHeadersRequest(upstream_id=rid, path="team/app/manifests/v1"),
            metadata=_md(token),
            timeout=10,
        ),
        "a-basic",
    ),
    "ResolveUpstream": (
        lambda stub, rid, token: stub.ResolveUpstream(
            pb.ResolveUpstreamRequest(registry_id=rid, path="team/app/manifests/v1"),
            metadata=_md(token),
            timeout=10,
        ),
        "reg-a",
    ),
}


@pytest.mark.parametrize("method", sorted(UPSTREAM_CALLS))
async def test_upstream_service_denies_other_groups_like_missing_ids(
    service: AdminService, method: str
) -> None:
    call, existing = UPSTREAM_CALLS[method]
    stub = service.resolve_stub
    code_other, other, _ = await _outcome(call(stub, existing, TOKEN_B))
    code_missing, missing, _ = await _outcome(call(stub, MISSING, TOKEN_B))
    assert code_other == code_missing == grpc.StatusCode.PERMISSION_DENIED
    assert other is not None and missing is not None
    assert other.reason == missing.reason == "PERMISSION_DENIED"
    # The same message shape: only the id asked for differs, and no group is named.
    assert other.message.replace(existing, "ID") == missing.message.replace(MISSING, "ID")
    assert "team-a" not in other.message and other.metadata == missing.metadata
    # A `*` caller still learns that an id does not exist; team-a's own caller gets through.
    code_ops, ops, _ = await _outcome(call(stub, MISSING, TOKEN_OPS))
    assert code_ops == grpc.StatusCode.NOT_FOUND and ops is not None
    assert ops.reason in {"UPSTREAM_NOT_FOUND", "REGISTRY_NOT_FOUND"}
    assert (await _outcome(call(stub, existing, TOKEN_A)))[0] == grpc.StatusCode.OK
    assert (await _outcome(call(stub, existing, TOKEN_OPS)))[0] == grpc.StatusCode.OK


async def test_basic_credential_of_group_a_never_reaches_group_b(
    service: AdminService, basic_registry: RegistryServer, captured: CapturedLogs
) -> None:
    assert basic_registry.credentials is not None
    password, encoded = basic_registry.credentials[1], _basic_value(basic_registry)
    stub = service.resolve_stub
    before = (
        REGISTRY.get_sample_value(
            "vregistry_credentials_disclosed_total", {"upstream": "a-basic", "scheme": "basic"}
        )
        or 0.0
    )
    for method in ("GetAuthHeaders", "ResolveUpstream"):
        call, existing = UPSTREAM_CALLS[method]
        code, details, reply = await _outcome(call(stub, existing, TOKEN_B))
        assert code == grpc.StatusCode.PERMISSION_DENIED and reply is None
        assert details is not None
        assert password not in repr(details) and encoded not in repr(details)
    # Team A's caller gets its own upstream's header: the audit line and the counter say so.
    reply = await stub.GetAuthHeaders(
        pb.GetAuthHeadersRequest(upstream_id="a-basic", path="team/app/manifests/v1"),
        metadata=_md(TOKEN_A),
        timeout=10,
    )
    assert dict(reply.headers) == {"Authorization": f"Basic {encoded}"}
    resolved = await stub.ResolveUpstream(
        pb.ResolveUpstreamRequest(registry_id="reg-a", path="team/app/manifests/v1"),
        metadata=_md(TOKEN_A),
        timeout=10,
    )
    assert resolved.upstream.id == "a-basic"
    after = REGISTRY.get_sample_value(
        "vregistry_credentials_disclosed_total", {"upstream": "a-basic", "scheme": "basic"}
    )
    assert after == before + 2
    audit = [line for line in captured.lines if '"audit": "credentials_disclosed"' in line]
    assert len(audit) == 2, audit
    for line, method in zip(audit, ("GetAuthHeaders", "ResolveUpstream"), strict=True):
        for needle in (
            '"caller": "alice-a"',
            '"group": "team-a"',
            '"upstream_id": "a-basic"',
            '"scheme": "basic"',
            f'"method": "{method}"',
        ):
            assert needle in line, (needle, line)
    # The raw password, and its Basic form, are in no log line (audit or refusal).
    assert password not in captured.text and encoded not in captured.text
    assert '"caller": "bob-b"' not in "\n".join(audit)


async def test_an_answer_given_again_is_given_only_to_its_caller_and_only_while_allowed(
    service: AdminService, basic_registry: RegistryServer, captured: CapturedLogs
) -> None:
    """Repeats are answered from the gRPC face's answer memo (rpc/answer_memo.py): team-a's
    kept header never reaches team-b's caller, a ``*`` caller gets its own audit line, and
    once an operator deletes the upstream, team-a's next repeat is refused."""
    call, existing = UPSTREAM_CALLS["GetAuthHeaders"]
    stub = service.resolve_stub
    encoded = _basic_value(basic_registry)
    for _ in range(3):
        code, _, reply = await _outcome(call(stub, existing, TOKEN_A))
        assert code == grpc.StatusCode.OK and reply.headers["Authorization"] == f"Basic {encoded}"
    code, details, reply = await _outcome(call(stub, existing, TOKEN_B))
    assert code == grpc.StatusCode.PERMISSION_DENIED and reply is None
    assert details is not None and encoded not in repr(details)
    code, _, reply = await _outcome(call(stub, existing, TOKEN_OPS))
    assert code == grpc.StatusCode.OK
    audit = [line for line in captured.lines if '"audit": "credentials_disclosed"' in line]
    assert [('"caller": "ops"' in line) for line in audit] == [False, False, False, True]

    await service.admin.DeleteUpstream(
        cpb.DeleteUpstreamRequest(name=_upstream("team-a", existing), force=True),
        metadata=_md(TOKEN_OPS),
    )
    code, details, reply = await _outcome(call(stub, existing, TOKEN_A))
    assert code == grpc.StatusCode.PERMISSION_DENIED and reply is None, details


async def test_token_handed_out_is_audited(service: AdminService, captured: CapturedLogs) -> None:
    before = (
        REGISTRY.get_sample_value(
            "vregistry_credentials_disclosed_total", {"upstream": "a-token", "scheme": "bearer"}
        )
        or 0.0
    )
    reply = await service.resolve_stub.GetAuthHeaders(
        pb.GetAuthHeadersRequest(upstream_id="a-token", path="public/alpine/manifests/latest"),
        metadata=_md(TOKEN_A),
        timeout=10,
    )
    assert reply.scheme == "bearer"
    token = reply.headers["Authorization"].removeprefix("Bearer ")
    after = REGISTRY.get_sample_value(
        "vregistry_credentials_disclosed_total", {"upstream": "a-token", "scheme": "bearer"}
    )
    assert after == before + 1
    (line,) = [entry for entry in captured.lines if '"audit": "credentials_disclosed"' in entry]
    assert '"scheme": "bearer"' in line and '"upstream_id": "a-token"' in line
    assert token not in captured.text
    # An anonymous upstream hands out nothing: no audit line, no count.
    captured.lines.clear()
    await service.resolve_stub.GetAuthHeaders(
        pb.GetAuthHeadersRequest(upstream_id="a-open", path="library/alpine/manifests/latest"),
        metadata=_md(TOKEN_A),
        timeout=10,
    )
    assert not [entry for entry in captured.lines if '"audit"' in entry]


# --------------------------------------------------------------------------- ConfigService

ConfigCall = Callable[[Any, str, str, str | None], Awaitable[Any]]


def _upstream(group: str, upstream_id: str) -> str:
    return f"groups/{group}/upstreams/{upstream_id}"


def _registry(group: str, registry_id: str) -> str:
    return f"groups/{group}/registries/{registry_id}"


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


# Each call takes (stub, upstream id, registry id, token) and names resources of team-a.
CONFIG_CALLS: dict[str, ConfigCall] = {
    "GetUpstream": lambda s, u, r, t: s.GetUpstream(
        cpb.GetUpstreamRequest(name=_upstream("team-a", u)), metadata=_md(t), timeout=10
    ),
    "UpdateUpstream": lambda s, u, r, t: s.UpdateUpstream(
        cpb.UpdateUpstreamRequest(
            upstream=cpb.UpstreamConfig(name=_upstream("team-a", u), description="taken over"),
            update_mask=_mask("description"),
        ),
        metadata=_md(t),
        timeout=10,
    ),
    "DeleteUpstream": lambda s, u, r, t: s.DeleteUpstream(
        cpb.DeleteUpstreamRequest(name=_upstream("team-a", u), force=True),
        metadata=_md(t),
        timeout=10,
    ),
    "TestUpstream": lambda s, u, r, t: s.TestUpstream(
        cpb.TestUpstreamRequest(name=_upstream("team-a", u)), metadata=_md(t), timeout=10
    ),
    "GetRegistry": lambda s, u, r, t: s.GetRegistry(
        cpb.GetRegistryRequest(name=_registry("team-a", r)), metadata=_md(t), timeout=10
    ),
    "UpdateRegistry": lambda s, u, r, t: s.UpdateRegistry(
        cpb.UpdateRegistryRequest(
            registry=cpb.RegistryConfig(name=_registry("team-a", r), description="taken over"),
            update_mask=_mask("description"),
        ),
        metadata=_md(t),
        timeout=10,
    ),
    "DeleteRegistry": lambda s, u, r, t: s.DeleteRegistry(
        cpb.DeleteRegistryRequest(name=_registry("team-a", r)), metadata=_md(t), timeout=10
    ),
    "AddUpstream": lambda s, u, r, t: s.AddUpstream(
        cpb.AddUpstreamRequest(registry=_registry("team-a", r), upstream=_upstream("team-a", u)),
        metadata=_md(t),
        timeout=10,
    ),
    "RemoveUpstream": lambda s, u, r, t: s.RemoveUpstream(
        cpb.RemoveUpstreamRequest(registry=_registry("team-a", r), upstream=_upstream("team-a", u)),
        metadata=_md(t),
        timeout=10,
    ),
    "ReorderUpstreams": lambda s, u, r, t: s.ReorderUpstreams(
        cpb.ReorderUpstreamsRequest(
            registry=_registry("team-a", r),
            upstreams=[cpb.RegistryMember(upstream=_upstream("team-a", u), position=1)],
        ),
        metadata=_md(t),
        timeout=10,
    ),
}


@pytest.mark.parametrize("method", sorted(CONFIG_CALLS))
async def test_config_service_denies_other_groups_like_missing_names(
    service: AdminService, method: str
) -> None:
    call, stub = CONFIG_CALLS[method], service.admin
    before = await stub.GetUpstream(
        cpb.GetUpstreamRequest(name=_upstream("team-a", "a-open")), metadata=_md(TOKEN_OPS)
    )
    code_other, other, _ = await _outcome(call(stub, "a-open", "reg-a", TOKEN_B))
    code_missing, missing, _ = await _outcome(call(stub, MISSING, "nowhere-r", TOKEN_B))
    assert code_other == code_missing == grpc.StatusCode.PERMISSION_DENIED, (other, missing)
    assert other is not None and missing is not None
    assert other.reason == missing.reason == "PERMISSION_DENIED"
    shape = other.message.replace("a-open", "ID").replace("reg-a", "ID")
    assert shape == missing.message.replace(MISSING, "ID").replace("nowhere-r", "ID")
    # Nothing of team-a changed; the registry still lists its upstreams.
    after = await stub.GetUpstream(
        cpb.GetUpstreamRequest(name=_upstream("team-a", "a-open")), metadata=_md(TOKEN_OPS)
    )
    assert after.upstream.etag == before.upstream.etag
    registry = await stub.GetRegistry(
        cpb.GetRegistryRequest(name=_registry("team-a", "reg-a")), metadata=_md(TOKEN_OPS)
    )
    assert [m.upstream for m in registry.registry.upstreams] == [
        _upstream("team-a", "a-basic"),
        _upstream("team-a", "a-open"),
    ]


async def test_config_service_own_group_and_star_callers_get_not_found(
    service: AdminService,
) -> None:
    stub = service.admin

    async def get(name: str, token: str) -> ErrorDetails:
        code, details, _ = await _outcome(
            stub.GetUpstream(cpb.GetUpstreamRequest(name=name), metadata=_md(token), timeout=10)
        )
        assert code == grpc.StatusCode.NOT_FOUND and details is not None, (name, code)
        return details

    # Team B asking under its own group for team-a's id and for a missing id: the same answer.
    taken = await get(_upstream("team-b", "a-open"), TOKEN_B)
    missing = await get(_upstream("team-b", MISSING), TOKEN_B)
    assert taken.message.replace("a-open", "ID") == missing.message.replace(MISSING, "ID")
    await get(_upstream("team-a", MISSING), TOKEN_OPS)
    # Create and list in another group are denied; `*` may create anywhere.
    code, _, _ = await _outcome(
        stub.CreateUpstream(
            cpb.CreateUpstreamRequest(
                parent="groups/team-a",
                upstream_id="planted",
                upstream=cpb.UpstreamConfig(display_name="x", url="https://planted.example.com"),
            ),
            metadata=_md(TOKEN_B),
            timeout=10,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _, _ = await _outcome(
        stub.CreateRegistry(
            cpb.CreateRegistryRequest(
                parent="groups/team-a",
                registry_id="planted",
                registry=cpb.RegistryConfig(display_name="x"),
            ),
            metadata=_md(TOKEN_B),
            timeout=10,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    for parent in ("groups/team-a", "groups/nowhere"):
        code, _, _ = await _outcome(
            stub.ListUpstreams(
                cpb.ListUpstreamsRequest(parent=parent), metadata=_md(TOKEN_B), timeout=10
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED, parent


async def test_list_on_all_groups_returns_only_the_callers_groups(service: AdminService) -> None:
    stub = service.admin

    async def names(token: str) -> tuple[list[str], list[str]]:
        ups = await stub.ListUpstreams(
            cpb.ListUpstreamsRequest(parent="groups/-", page_size=1),
            metadata=_md(token),
            timeout=10,
        )
        upstreams = [u.name for u in ups.upstreams]
        while ups.next_page_token:  # paging works on the filtered list too
            ups = await stub.ListUpstreams(
                cpb.ListUpstreamsRequest(
                    parent="groups/-", page_size=1, page_token=ups.next_page_token
                ),
                metadata=_md(token),
                timeout=10,
            )
            upstreams += [u.name for u in ups.upstreams]
        regs = await stub.ListRegistries(
            cpb.ListRegistriesRequest(parent="groups/-"), metadata=_md(token), timeout=10
        )
        return upstreams, [r.name for r in regs.registries]

    assert await names(TOKEN_B) == ([_upstream("team-b", "b-open")], [_registry("team-b", "reg-b")])
    upstreams, registries = await names(TOKEN_A)
    assert upstreams == [_upstream("team-a", u) for u in ("a-basic", "a-open", "a-token")]
    assert registries == [_registry("team-a", "reg-a")]
    upstreams, registries = await names(TOKEN_OPS)
    assert len(upstreams) == 4 and len(registries) == 2


async def test_already_exists_never_names_another_group(service: AdminService) -> None:
    stub = service.admin

    async def create(group: str, upstream_id: str, url: str, token: str) -> ErrorDetails | None:
        _, details, _ = await _outcome(
            stub.CreateUpstream(
                cpb.CreateUpstreamRequest(
                    parent=f"groups/{group}",
                    upstream_id=upstream_id,
                    upstream=cpb.UpstreamConfig(display_name=upstream_id, url=url),
                ),
                metadata=_md(token),
                timeout=10,
            )
        )
        return details

    taken = await create("team-b", "a-open", "https://elsewhere.example.com", TOKEN_B)
    assert taken is not None and taken.code == grpc.StatusCode.ALREADY_EXISTS
    assert "team-a" not in taken.message and "in another group" in taken.message
    own = await create("team-b", "b-open", "https://elsewhere.example.com", TOKEN_B)
    assert own is not None and own.code == grpc.StatusCode.ALREADY_EXISTS
    assert own.message == "upstream groups/team-b/upstreams/b-open already exists"
    _, registry, _ = await _outcome(
        stub.CreateRegistry(
            cpb.CreateRegistryRequest(
                parent="groups/team-b",
                registry_id="reg-a",
                registry=cpb.RegistryConfig(display_name="x"),
            ),
            metadata=_md(TOKEN_B),
            timeout=10,
        )
    )
    assert registry is not None and registry.code == grpc.StatusCode.ALREADY_EXISTS
    assert "team-a" not in registry.message
    # Duplicates (same url, same credentials) are a matter of one group only.
    assert await create("team-a", "a-dup", "https://dup.example.com", TOKEN_A) is None
    assert await create("team-b", "b-dup", "https://dup.example.com", TOKEN_B) is None
    again = await create("team-b", "b-dup2", "https://dup.example.com", TOKEN_B)
    assert again is not None and again.reason == "DUPLICATE_UPSTREAM"
    assert "groups/team-b/upstreams/b-dup" in again.message and "team-a" not in again.message


async def test_header_of_an_id_that_changed_group_during_the_call_is_not_handed_out(
    basic_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    """The group is checked again on the answer: team-a's call on ``racy`` is under way (its
    discovery ping slowed by the proxy) when an operator deletes it and creates ``racy`` in
    team-b; the header computed for the old upstream is not returned."""
    assert basic_registry.credentials is not None
    user, password = basic_registry.credentials
    proxy = proxy_factory(basic_registry, delay_seconds=1.0)
    document = {
        "upstreams": [
            {"id": "racy", "name": "racy", "url": proxy.url, "allow_http": True,
             "group": "team-a", "username": user, "password_env": PASSWORD_ENV},
        ]
    }  # fmt: skip
    config = build_config(document, source="race", env={PASSWORD_ENV: password})
    service = await start_admin_service(
        config, keyring=new_keyring()[0], callers=Callers.parse(CALLERS), seed=True
    )
    try:
        call = asyncio.ensure_future(
            _outcome(
                service.resolve_stub.GetAuthHeaders(
                    pb.GetAuthHeadersRequest(upstream_id="racy", path="team/app/manifests/v1"),
                    metadata=_md(TOKEN_A),
                    timeout=10,
                )
            )
        )
        await asyncio.sleep(0.3)
        assert not call.done()
        await service.admin.DeleteUpstream(
            cpb.DeleteUpstreamRequest(name=_upstream("team-a", "racy"), force=True),
            metadata=_md(TOKEN_OPS),
        )
        await service.admin.CreateUpstream(
            cpb.CreateUpstreamRequest(
                parent="groups/team-b",
                upstream_id="racy",
                upstream=cpb.UpstreamConfig(display_name="B", url="https://racy.example.com"),
            ),
            metadata=_md(TOKEN_OPS),
        )
        code, details, reply = await call
        assert code == grpc.StatusCode.PERMISSION_DENIED and reply is None, details
        assert details is not None and _basic_value(basic_registry) not in repr(details)
        assert proxy.ping_count >= 1, "the call was under way when the group changed"
    finally:
        await service.close()


# --------------------------------------------------------------------------- mTLS identities


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki-groups"))


@pytest.fixture
async def mtls_service(
    pki: Pki,
    basic_registry: RegistryServer,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
) -> AsyncIterator[AdminService]:
    credentials = server_credentials(
        str(pki.server.cert_path), str(pki.server.key_path), str(pki.ca.cert_path)
    )
    running = await start_admin_service(
        _config(basic_registry, open_registry, token_registry),
        keyring=new_keyring()[0],
        callers=Callers.parse(CALLERS),
        credentials=credentials,
        seed=True,
    )
    try:
        yield running
    finally:
        await running.close()


def _stubs(pki: Pki, target: str, client: Pem) -> tuple[grpc.aio.Channel, Any, Any]:
    channel = grpc.aio.secure_channel(
        target,
        grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert, private_key=client.key, certificate_chain=client.cert
        ),
    )
    return channel, pb_grpc.UpstreamServiceStub(channel), cpb_grpc.ConfigServiceStub(channel)


def _auth(stub: Any, upstream_id: str, token: str | None = None) -> Awaitable[Any]:
    return stub.GetAuthHeaders(
        pb.GetAuthHeadersRequest(upstream_id=upstream_id, path="team/app/manifests/v1"),
        metadata=_md(token),
        timeout=10,
    )


async def test_spiffe_and_dns_identities_select_their_callers(
    mtls_service: AdminService, pki: Pki, captured: CapturedLogs
) -> None:
    puller = pki.client_with("puller-a", uris=[SPIFFE_A])
    builder = pki.client_with("builder-b", dns_names=["other.test", DNS_B])
    channel, resolve, admin = _stubs(pki, mtls_service.target, puller)
    async with channel:
        reply = await _auth(resolve, "a-basic")  # no token: the certificate is the caller
        assert reply.scheme == "basic"
        code, details, _ = await _outcome(_auth(resolve, "b-open"))
        assert code == grpc.StatusCode.PERMISSION_DENIED and details is not None
        assert "'puller-a'" in details.message
        code, _, _ = await _outcome(
            admin.ListUpstreams(cpb.ListUpstreamsRequest(parent="groups/-"), timeout=10)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED  # role resolver only
    channel, resolve, admin = _stubs(pki, mtls_service.target, builder)
    async with channel:
        assert (await _outcome(_auth(resolve, "b-open")))[0] == grpc.StatusCode.OK
        assert (await _outcome(_auth(resolve, "a-open")))[0] == grpc.StatusCode.PERMISSION_DENIED
        listed = await admin.ListUpstreams(cpb.ListUpstreamsRequest(parent="groups/-"), timeout=10)
        assert [u.name for u in listed.upstreams] == [_upstream("team-b", "b-open")]
    audit = [line for line in captured.lines if '"audit": "credentials_disclosed"' in line]
    assert len(audit) == 1 and '"caller": "puller-a"' in audit[0]


async def test_certificates_no_line_names_and_conflicting_tokens_are_unauthenticated(
    mtls_service: AdminService, pki: Pki, captured: CapturedLogs
) -> None:
    unnamed = pki.client_with("unnamed", uris=["spiffe://mesh.local/ns/team-c/sa/x"])
    puller = pki.client_with("puller-a2", uris=[SPIFFE_A])
    for client in (unnamed, pki.client):  # a SPIFFE ID no line names, and no SAN at all
        channel, resolve, _ = _stubs(pki, mtls_service.target, client)
        async with channel:
            code, details, _ = await _outcome(_auth(resolve, "a-open"))
            assert code == grpc.StatusCode.UNAUTHENTICATED and details is not None
            assert details.reason == "UNAUTHENTICATED"
            # A token, when sent, identifies the caller (the certificate names no one).
            assert (await _outcome(_auth(resolve, "a-open", TOKEN_OPS)))[0] == grpc.StatusCode.OK
    channel, resolve, _ = _stubs(pki, mtls_service.target, puller)
    async with channel:
        # A token of another caller than the certificate's (even of the same group: no
        # guessing which one is meant), or an unknown token: refused.
        for token in (TOKEN_B, TOKEN_A, UNKNOWN_TOKEN):
            code, _, _ = await _outcome(_auth(resolve, "a-open", token))
            assert code == grpc.StatusCode.UNAUTHENTICATED, token
        assert (await _outcome(_auth(resolve, "a-open")))[0] == grpc.StatusCode.OK
    text = captured.text
    assert '"why": "unknown_certificate"' in text and '"why": "identity_mismatch"' in text
    for token in (TOKEN_A, TOKEN_B, TOKEN_OPS, UNKNOWN_TOKEN):
        assert token not in text
