"""ConfigService through a real gRPC channel: CRUD, ordering, field masks, etags, paging,
validation, write-only credentials, live reload into UpstreamService, and TestUpstream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2

from tests.conftest import TOKEN_PASSWORD, TOKEN_USER
from tests.support.admin import (
    FIXTURE_REALM_HOSTS,
    AdminService,
    CapturedLogs,
    empty_config,
    start_admin_service,
)
from tests.support.registry import RegistryServer
from tests.support.service import error_details
from tests.support.token_server import TokenServer
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import upstream_service_pb2 as pb

ADMIN_PASSWORD = "adm1n-pw-never-shown-4471"
OTHER_PASSWORD = "0ther-pw-never-shown-9922"
SECRETS = (ADMIN_PASSWORD, OTHER_PASSWORD, TOKEN_PASSWORD)


@pytest.fixture(autouse=True)
def _no_secret_in_logs() -> Iterator[CapturedLogs]:
    """Every log record of the server during each test is searched for the test passwords."""
    captured = CapturedLogs()
    logger = logging.getLogger("vregistry_server")
    previous = logger.level
    logger.addHandler(captured)
    logger.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        logger.removeHandler(captured)
        logger.setLevel(previous)
    for secret in SECRETS:
        assert secret not in captured.text, "a password reached the logs"


@pytest.fixture
async def svc() -> AsyncIterator[AdminService]:
    service = await start_admin_service(
        empty_config(max_registries_per_group=3, max_upstreams_per_registry=3)
    )
    try:
        yield service
    finally:
        await service.close()


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def _expect(code: grpc.StatusCode, call: object, needle: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    details = error_details(info.value)
    assert details.code == code, details.message
    assert needle in details.message, details.message
    for secret in SECRETS:
        assert secret not in details.message
    return details.reason


# --------------------------------------------------------------------------- the seed's flow


async def test_create_add_reorder_update_delete_and_resolve(
    svc: AdminService,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
    token_server: TokenServer,
) -> None:
    openu = await svc.create_upstream("open", open_registry.url)
    token = await svc.create_upstream(
        "token", token_registry.url, username=TOKEN_USER, password=TOKEN_PASSWORD
    )
    assert token.has_credentials and not token.username and not token.password
    assert openu.name == "groups/g1/upstreams/open" and openu.cache_validity_hours == 24
    await svc.create_registry("r")
    await svc.add("r", "open", position=1)
    registry = await svc.add("r", "token", position=2)
    assert [(m.upstream, m.position) for m in registry.upstreams] == [
        ("groups/g1/upstreams/open", 1),
        ("groups/g1/upstreams/token", 2),
    ]
    # The change is live at once on this replica.
    path = "private/app/manifests/v1"
    resolved = await svc.resolve_stub.ResolveUpstream(
        pb.ResolveUpstreamRequest(registry_id="r", path=path), timeout=15
    )
    assert resolved.upstream.id == "token" and resolved.upstream.position == 2
    assert [a.outcome for a in resolved.attempts] == [
        pb.ATTEMPT_OUTCOME_NOT_FOUND,
        pb.ATTEMPT_OUTCOME_FOUND,
    ]

    reordered = await svc.admin.ReorderUpstreams(
        cpb.ReorderUpstreamsRequest(
            registry=registry.name,
            etag=registry.etag,
            upstreams=[
                cpb.RegistryMember(upstream="groups/g1/upstreams/token", position=1),
                cpb.RegistryMember(upstream="groups/g1/upstreams/open", position=2),
            ],
        ),
        timeout=10,
    )
    assert reordered.registry.upstreams[0].upstream.endswith("/token")
    resolved = await svc.resolve_stub.ResolveUpstream(
        pb.ResolveUpstreamRequest(registry_id="r", path=path), timeout=15
    )
    assert resolved.upstream.position == 1
    assert [a.outcome for a in resolved.attempts] == [
        pb.ATTEMPT_OUTCOME_FOUND,
        pb.ATTEMPT_OUTCOME_NOT_CHECKED,
    ]

    # Insert at position 1 shifts the others down.
    await svc.create_upstream(
        "open2",
        open_registry.url + "/v2/",
        description="same host, other creds",
        username="x",
        password=OTHER_PASSWORD,
    )
    inserted = await svc.add("r", "open2", position=1)
    assert [m.upstream.rsplit("/", 1)[1] for m in inserted.upstreams] == ["open2", "token", "open"]

    removed = await svc.admin.RemoveUpstream(
        cpb.RemoveUpstreamRequest(registry=registry.name, upstream="groups/g1/upstreams/token"),
        timeout=10,
    )
    assert [(m.upstream.rsplit("/", 1)[1], m.position) for m in removed.registry.upstreams] == [
        ("open2", 1),
        ("open", 2),
    ]

    renamed = await svc.admin.UpdateRegistry(
        cpb.UpdateRegistryRequest(
            registry=cpb.RegistryConfig(name=registry.name, display_name="Renamed"),
            update_mask=_mask("display_name"),
        ),
        timeout=10,
    )
    assert renamed.registry.display_name == "Renamed"
    got = await svc.admin.GetRegistry(cpb.GetRegistryRequest(name=registry.name), timeout=10)
    assert got.registry == renamed.registry

    await svc.admin.DeleteRegistry(cpb.DeleteRegistryRequest(name=registry.name), timeout=10)
    await _expect(
        grpc.StatusCode.NOT_FOUND,
        svc.resolve_stub.ResolveUpstream(pb.ResolveUpstreamRequest(registry_id="r", path=path)),
    )
    await svc.admin.DeleteUpstream(cpb.DeleteUpstreamRequest(name=token.name), timeout=10)
    await _expect(
        grpc.StatusCode.NOT_FOUND,
        svc.admin.GetUpstream(cpb.GetUpstreamRequest(name=token.name)),
    )
    await _expect(
        grpc.StatusCode.NOT_FOUND,
        svc.resolve_stub.UrlFor(pb.UrlForRequest(upstream_id="token", path="")),
    )


# --------------------------------------------------------------------------- updates


async def test_update_masks_and_credential_rules(svc: AdminService) -> None:
    created = await svc.create_upstream(
        "u", "https://one.example", username="alice", password=ADMIN_PASSWORD
    )
    name = created.name
    # Only the masked field changes.
    updated = await svc.update_upstream(name, ["description"], description="d", display_name="X")
    assert updated.description == "d" and updated.display_name == "Upstream u"
    assert updated.has_credentials and updated.etag != created.etag
    # A new url without new credentials clears them (GitLab's rule).
    moved = await svc.update_upstream(name, ["url"], url="https://two.example/v2")
    assert moved.url == "https://two.example" and not moved.has_credentials
    # A new url with new credentials in the same update keeps those.
    both = await svc.update_upstream(
        name,
        ["url", "credentials"],
        url="https://three.example",
        username="bob",
        password=OTHER_PASSWORD,
    )
    assert both.has_credentials
    # Password alone: the stored username stays.
    again = await svc.update_upstream(name, ["password"], password=ADMIN_PASSWORD)
    assert again.has_credentials
    record = svc.resolver.config.upstreams["u"]
    assert record.credentials is not None and record.credentials.username == "bob"
    assert record.credentials.password == ADMIN_PASSWORD
    # Both empty clears.
    cleared = await svc.update_upstream(name, ["username", "password"])
    assert not cleared.has_credentials and svc.resolver.config.upstreams["u"].credentials is None
    # No mask: every field set in the request.
    implied = await svc.update_upstream(name, [], display_name="Implied", cache_validity_hours=0)
    assert implied.display_name == "Implied" and implied.cache_validity_hours == 0
    assert implied.description == "d"
    # "*" replaces everything: unset fields go back to defaults.
    replaced = await svc.update_upstream(
        name, ["*"], display_name="All", url="https://four.example"
    )
    assert replaced.description == "" and replaced.cache_validity_hours == 24
    assert replaced.token_flow == cpb.TOKEN_FLOW_AUTO
    flows = await svc.update_upstream(name, ["token_flow"], token_flow=cpb.TOKEN_FLOW_OAUTH2)
    assert flows.token_flow == cpb.TOKEN_FLOW_OAUTH2
    assert svc.resolver.config.upstreams["u"].token_flow == "oauth2"


async def test_etags_make_writes_conditional(svc: AdminService) -> None:
    created = await svc.create_upstream("u", "https://one.example")
    fresh = await svc.update_upstream(
        created.name, ["description"], etag=created.etag, description="1"
    )
    reason = await _expect(
        grpc.StatusCode.ABORTED,
        svc.admin.UpdateUpstream(
            cpb.UpdateUpstreamRequest(
                upstream=cpb.UpstreamConfig(name=created.name, etag=created.etag, description="2"),
                update_mask=_mask("description"),
            )
        ),
        "changed since it was read",
    )
    assert reason == "ETAG_MISMATCH"
    await _expect(
        grpc.StatusCode.ABORTED,
        svc.admin.DeleteUpstream(cpb.DeleteUpstreamRequest(name=created.name, etag=created.etag)),
    )
    registry = await svc.create_registry("r")
    await svc.add("r", "u", etag=registry.etag)
    await _expect(grpc.StatusCode.ABORTED, svc.add("r", "u", etag=registry.etag))
    await svc.admin.DeleteUpstream(
        cpb.DeleteUpstreamRequest(name=created.name, etag=fresh.etag, force=True), timeout=10
    )


async def test_delete_of_an_upstream_in_use_needs_force(svc: AdminService) -> None:
    await svc.create_upstream("u", "https://one.example")
    await svc.create_upstream("v", "https://two.example")
    await svc.create_registry("r")
    await svc.add("r", "u")
    await svc.add("r", "v")
    reason = await _expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        svc.admin.DeleteUpstream(cpb.DeleteUpstreamRequest(name="groups/g1/upstreams/u")),
        "groups/g1/registries/r",
    )
    assert reason == "UPSTREAM_IN_USE"
    reply = await svc.admin.DeleteUpstream(
        cpb.DeleteUpstreamRequest(name="groups/g1/upstreams/u", force=True), timeout=10
    )
    assert list(reply.removed_from) == ["groups/g1/registries/r"]
    registry = await svc.admin.GetRegistry(cpb.GetRegistryRequest(name="groups/g1/registries/r"))
    assert [(m.upstream, m.position) for m in registry.registry.upstreams] == [
        ("groups/g1/upstreams/v", 1)
    ]


async def test_list_pages_and_groups(svc: AdminService) -> None:
    for index in range(5):
        await svc.create_upstream(f"u{index}", f"https://h{index}.example")
    await svc.create_upstream("other", "https://h0.example", group="g2")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await svc.admin.ListUpstreams(
            cpb.ListUpstreamsRequest(parent="groups/g1", page_size=2, page_token=token), timeout=10
        )
        seen += [u.name.rsplit("/", 1)[1] for u in reply.upstreams]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert seen == ["u0", "u1", "u2", "u3", "u4"] and pages == 3
    every = await svc.admin.ListUpstreams(cpb.ListUpstreamsRequest(parent="groups/-"), timeout=10)
    assert len(every.upstreams) == 6
    g2 = await svc.admin.ListUpstreams(cpb.ListUpstreamsRequest(parent="groups/g2"), timeout=10)
    assert [u.name for u in g2.upstreams] == ["groups/g2/upstreams/other"]
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.admin.ListUpstreams(cpb.ListUpstreamsRequest(parent="groups/g1", page_token="garbage")),
        "page_token",
    )
    first = await svc.admin.ListUpstreams(
        cpb.ListUpstreamsRequest(parent="groups/g1", page_size=1), timeout=10
    )
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.admin.ListUpstreams(
            cpb.ListUpstreamsRequest(parent="groups/g2", page_token=first.next_page_token)
        ),
        "another parent",
    )
    await svc.create_registry("ra")
    await svc.create_registry("rb")
    regs = await svc.admin.ListRegistries(
        cpb.ListRegistriesRequest(parent="groups/g1", page_size=1), timeout=10
    )
    assert len(regs.registries) == 1 and regs.next_page_token


async def test_group_rules_limits_and_duplicates(svc: AdminService) -> None:
    await svc.create_upstream("a", "https://same.example", username="u", password=ADMIN_PASSWORD)
    # Same url + same credentials in one group: refused, as GitLab does.
    reason = await _expect(
        grpc.StatusCode.ALREADY_EXISTS,
        svc.create_upstream("b", "https://same.example/", username="u", password=ADMIN_PASSWORD),
        "same url and credentials",
    )
    assert reason == "DUPLICATE_UPSTREAM"
    # Other credentials, or another group: fine.
    await svc.create_upstream("b", "https://same.example", username="u", password=OTHER_PASSWORD)
    await svc.create_upstream(
        "c", "https://same.example", group="g2", username="u", password=ADMIN_PASSWORD
    )
    # ... but an update that makes a duplicate is refused too.
    await _expect(
        grpc.StatusCode.ALREADY_EXISTS,
        svc.update_upstream("groups/g1/upstreams/b", ["password"], password=ADMIN_PASSWORD),
    )
    # Ids are unique across groups.
    await _expect(
        grpc.StatusCode.ALREADY_EXISTS,
        svc.create_upstream("a", "https://else.example", group="g2"),
        "already exists",
    )
    # An upstream joins only registries of its own group.
    await svc.create_registry("r1")
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.admin.AddUpstream(
            cpb.AddUpstreamRequest(
                registry="groups/g1/registries/r1", upstream="groups/g2/upstreams/c"
            )
        ),
        "its own group",
    )
    # Limits: 3 registries per group, 3 upstreams per registry (set in the fixture).
    await svc.create_registry("r2")
    await svc.create_registry("r3")
    reason = await _expect(
        grpc.StatusCode.FAILED_PRECONDITION, svc.create_registry("r4"), "at most 3"
    )
    assert reason == "LIMIT_REACHED"
    await svc.create_registry("r4", group="g2")
    await svc.create_upstream("d", "https://d.example")
    for upstream in ("a", "b", "d"):
        await svc.add("r1", upstream)
    await svc.create_upstream("e", "https://e.example")
    await _expect(grpc.StatusCode.FAILED_PRECONDITION, svc.add("r1", "e"), "at most 3")


# --------------------------------------------------------------------------- validation

LONG = "x" * 256


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"url": "ftp://x.example"}, "field 'url': must be an http(s) URL"),
        ({"url": "http://x.example"}, "field 'url': must use https"),
        ({"url": "https://user:pw@x.example"}, "field 'url': must not carry credentials"),
        ({"url": "https://x.example/?a=b"}, "field 'url': must not have a query string"),
        ({"url": "https://"}, "field 'url': has no host"),
        ({"url": "https://x.example:99999"}, "field 'url': has an invalid port"),
        ({"url": ""}, "field 'url': is required"),
        ({"url": "https://x.example/" + "a" * 260}, "field 'url': is 278 characters, at most 255"),
        ({"display_name": ""}, "field 'display_name': is required"),
        ({"display_name": LONG}, "field 'display_name': is 256 characters, at most 255"),
        ({"description": "d" * 1025}, "field 'description': is 1025 characters, at most 1024"),
        ({"username": "alice"}, "field 'password': a username is given without a password"),
        ({"password": ADMIN_PASSWORD}, "field 'username': a password is given without a username"),
        ({"username": LONG, "password": "p"}, "field 'username': is 256 characters"),
        (
            {"cache_validity_hours": -1},
            "field 'cache_validity_hours': -1 is out of range: 0 to 8760",
        ),
        ({"cache_validity_hours": 8761}, "field 'cache_validity_hours': 8761 is out of range"),
        ({"client_id": LONG}, "field 'client_id': is 256 characters"),
    ],
)
async def test_upstream_validation(
    svc: AdminService, fields: dict[str, object], needle: str
) -> None:
    values: dict[str, object] = {"display_name": "U", "url": "https://ok.example", **fields}
    reason = await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.admin.CreateUpstream(
            cpb.CreateUpstreamRequest(
                parent="groups/g1", upstream_id="u", upstream=cpb.UpstreamConfig(**values)
            )
        ),
        needle,
    )
    assert reason == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("parent", "upstream_id", "needle"),
    [
        ("groups/g1", "", "field 'upstream_id': is required"),
        ("groups/g1", "-bad", "field 'upstream_id': '-bad' is not a valid id"),
        ("groups/g1", "a/b", "is not a valid id"),
        ("groups/g1", "x" * 64, "is not a valid id"),
        ("g1", "u", "field 'parent': expected 'groups/{group}'"),
        ("groups/", "u", "field 'parent (group)': is required"),
        ("groups/-", "u", "field 'parent (group)': '-' is not a valid id"),
    ],
)
async def test_id_and_parent_validation(
    svc: AdminService, parent: str, upstream_id: str, needle: str
) -> None:
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.admin.CreateUpstream(
            cpb.CreateUpstreamRequest(
                parent=parent,
                upstream_id=upstream_id,
                upstream=cpb.UpstreamConfig(display_name="U", url="https://ok.example"),
            )
        ),
        needle,
    )


async def test_membership_and_mask_validation(svc: AdminService) -> None:
    for uid in ("a", "b"):
        await svc.create_upstream(uid, f"https://{uid}.example")
    registry = await svc.create_registry("r")
    await svc.add("r", "a")
    await svc.add("r", "b")
    await _expect(grpc.StatusCode.INVALID_ARGUMENT, svc.add("r", "a"), "is already in")
    await svc.create_upstream("c", "https://c.example")
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT, svc.add("r", "c", position=5), "1 to 3 (0 appends"
    )
    await _expect(grpc.StatusCode.INVALID_ARGUMENT, svc.add("r", "c", position=-1), "out of range")

    def reorder(*members: tuple[str, int]) -> object:
        return svc.admin.ReorderUpstreams(
            cpb.ReorderUpstreamsRequest(
                registry=registry.name,
                upstreams=[
                    cpb.RegistryMember(upstream=f"groups/g1/upstreams/{u}", position=p)
                    for u, p in members
                ],
            )
        )

    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT, reorder(("a", 1), ("b", 1)), "positions must be unique"
    )
    await _expect(grpc.StatusCode.INVALID_ARGUMENT, reorder(("a", 1), ("a", 2)), "listed twice")
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT, reorder(("a", 1)), "missing: groups/g1/upstreams/b"
    )
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT, reorder(("a", 1), ("b", 3)), "out of range: 1 to 2"
    )
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT, reorder(("a", 1), ("b", 2), ("c", 3)), "is not in"
    )
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.update_upstream("groups/g1/upstreams/a", ["colour"]),
        "unknown field 'colour'",
    )
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.update_upstream("groups/g1/upstreams/a", ["etag"]),
        "output only",
    )
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.update_upstream("groups/g1/upstreams/a", []),
        "nothing to update",
    )
    await _expect(
        grpc.StatusCode.NOT_FOUND,
        svc.update_upstream("groups/g2/upstreams/a", ["description"], description="x"),
    )
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.admin.GetUpstream(cpb.GetUpstreamRequest(name="upstreams/a")),
        "expected 'groups/{group}/upstreams/{id}'",
    )


# --------------------------------------------------------------------------- credentials


async def test_credentials_are_write_only(svc: AdminService) -> None:
    created = await svc.create_upstream(
        "u", "https://one.example", username="alice", password=ADMIN_PASSWORD
    )
    replies: list[object] = [created]
    replies.append(await svc.admin.GetUpstream(cpb.GetUpstreamRequest(name=created.name)))
    replies.append(await svc.admin.ListUpstreams(cpb.ListUpstreamsRequest(parent="groups/-")))
    replies.append(await svc.update_upstream(created.name, ["password"], password=OTHER_PASSWORD))
    for reply in replies:
        raw = reply.SerializeToString()  # type: ignore[attr-defined]
        assert ADMIN_PASSWORD.encode() not in raw and OTHER_PASSWORD.encode() not in raw
        assert b"alice" not in raw
    # The error for a duplicate does not echo the credentials either (checked in _expect).
    await _expect(
        grpc.StatusCode.ALREADY_EXISTS,
        svc.create_upstream("v", "https://one.example", username="alice", password=OTHER_PASSWORD),
    )


async def test_changed_credentials_invalidate_cached_tokens_at_once(
    svc: AdminService, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    created = await svc.create_upstream(
        "tok", token_registry.url, username=TOKEN_USER, password=TOKEN_PASSWORD
    )
    request = pb.GetAuthHeadersRequest(upstream_id="tok", path="private/app")
    first = await svc.resolve_stub.GetAuthHeaders(request, timeout=15)
    second = await svc.resolve_stub.GetAuthHeaders(request, timeout=15)
    assert second.cache_hit and second.headers == first.headers
    cache = svc.resolver.cache
    assert len(cache) == 1  # type: ignore[arg-type]
    # A wrong password: the cached token and challenge go at once, the next call is refused.
    await svc.update_upstream(created.name, ["password"], password=OTHER_PASSWORD)
    assert len(cache) == 0  # type: ignore[arg-type]
    await _expect(grpc.StatusCode.FAILED_PRECONDITION, svc.resolve_stub.GetAuthHeaders(request))
    # Put the right one back: a fresh token, not a cached one.
    await svc.update_upstream(created.name, ["password"], password=TOKEN_PASSWORD)
    third = await svc.resolve_stub.GetAuthHeaders(request, timeout=15)
    assert not third.cache_hit
    # Changing only the description keeps the cache.
    await svc.update_upstream(created.name, ["description"], description="still valid")
    fourth = await svc.resolve_stub.GetAuthHeaders(request, timeout=15)
    assert fourth.cache_hit


# --------------------------------------------------------------------------- TestUpstream


def _steps(reply: cpb.TestUpstreamResponse) -> list[tuple[int, int, int]]:
    return [(s.kind, s.outcome, s.http_status) for s in reply.steps]


async def test_test_upstream_stored_and_unsaved(
    svc: AdminService,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
    token_server: TokenServer,
) -> None:
    stored = await svc.create_upstream(
        "tok", token_registry.url, username=TOKEN_USER, password=TOKEN_PASSWORD
    )
    reply = await svc.admin.TestUpstream(
        cpb.TestUpstreamRequest(name=stored.name, path="private/app/manifests/v1"), timeout=20
    )
    assert reply.ok and reply.scheme == "bearer"
    assert _steps(reply) == [
        (cpb.TEST_STEP_KIND_PING, cpb.TEST_STEP_OUTCOME_SUCCEEDED, 401),
        (cpb.TEST_STEP_KIND_TOKEN_EXCHANGE, cpb.TEST_STEP_OUTCOME_SUCCEEDED, 200),
        (cpb.TEST_STEP_KIND_HEAD, cpb.TEST_STEP_OUTCOME_SUCCEEDED, 200),
    ]
    assert all(s.latency_ms > 0 for s in reply.steps)
    assert len(svc.resolver.cache) == 0, "a test fills no real cache"  # type: ignore[arg-type]

    # An unsaved upstream, default path library/alpine/manifests/latest: nothing is stored.
    unsaved = await svc.admin.TestUpstream(
        cpb.TestUpstreamRequest(
            upstream=cpb.UpstreamConfig(display_name="Open", url=open_registry.url, allow_http=True)
        ),
        timeout=20,
    )
    assert unsaved.ok and unsaved.scheme == "none"
    assert [s.outcome for s in unsaved.steps] == [
        cpb.TEST_STEP_OUTCOME_SUCCEEDED,
        cpb.TEST_STEP_OUTCOME_SKIPPED,
        cpb.TEST_STEP_OUTCOME_SUCCEEDED,
    ]
    listed = await svc.admin.ListUpstreams(cpb.ListUpstreamsRequest(parent="groups/-"))
    assert [u.name for u in listed.upstreams] == [stored.name]

    wrong = await svc.admin.TestUpstream(
        cpb.TestUpstreamRequest(
            upstream=cpb.UpstreamConfig(
                display_name="Wrong",
                url=token_registry.url,
                allow_http=True,
                username=TOKEN_USER,
                password=OTHER_PASSWORD,
                # its token server is on another port (the realm rule compares ports)
                realm_allow_hosts=list(FIXTURE_REALM_HOSTS),
            ),
            path="private/app/manifests/v1",
        ),
        timeout=20,
    )
    assert not wrong.ok
    assert [s.outcome for s in wrong.steps] == [
        cpb.TEST_STEP_OUTCOME_SUCCEEDED,
        cpb.TEST_STEP_OUTCOME_FAILED,
        cpb.TEST_STEP_OUTCOME_SKIPPED,
    ]
    assert "rejected" in wrong.steps[1].message
    assert OTHER_PASSWORD.encode() not in wrong.SerializeToString()

    missing = await svc.admin.TestUpstream(
        cpb.TestUpstreamRequest(
            upstream=cpb.UpstreamConfig(
                display_name="Open", url=open_registry.url, allow_http=True
            ),
            path="library/nothing/manifests/latest",
        ),
        timeout=20,
    )
    assert not missing.ok and missing.steps[2].http_status == 404

    down = await svc.admin.TestUpstream(
        cpb.TestUpstreamRequest(
            upstream=cpb.UpstreamConfig(
                display_name="Down", url="http://127.0.0.1:9", allow_http=True
            )
        ),
        timeout=30,
    )
    assert not down.ok and down.steps[0].outcome == cpb.TEST_STEP_OUTCOME_FAILED
    assert down.scheme == ""

    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.admin.TestUpstream(
            cpb.TestUpstreamRequest(upstream=cpb.UpstreamConfig(display_name="x", url="ftp://x"))
        ),
        "field 'url'",
    )
    await _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.admin.TestUpstream(cpb.TestUpstreamRequest(name=stored.name, path="../etc")),
        "field 'path'",
    )
    await _expect(
        grpc.StatusCode.NOT_FOUND,
        svc.admin.TestUpstream(cpb.TestUpstreamRequest(name="groups/g1/upstreams/nope")),
    )
