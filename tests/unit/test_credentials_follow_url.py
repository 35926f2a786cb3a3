"""Credentials stay with their URL: an update that points an upstream elsewhere (url or
allow_http) clears its stored credentials unless a new password arrives in the same
request, for every update mask (ConfigManager on the memory store, no network)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence

import pytest

from vregistry_server.admin.manager import ConfigManager, UpstreamInput
from vregistry_server.admin.stores.memory import MemoryStore
from vregistry_server.config import build_config
from vregistry_server.errors import InvalidArgument
from vregistry_server.model import Credentials
from vregistry_server.resolver import Resolver

NAME = "groups/g1/upstreams/up"
OLD = Credentials("old-user", "old-password-4411")
NEW_URL = "https://new.example"
# Every field a request may carry here; the mask decides which of them are applied.
FULL_REQUEST = UpstreamInput(
    display_name="Renamed",
    url=NEW_URL,
    allow_http=True,
    username="new-user",
    password="new-password-8822",
)
MASK_FIELDS = ("url", "allow_http", "username", "password", "display_name")
MASKS = [
    list(combo)
    for size in range(1, len(MASK_FIELDS) + 1)
    for combo in itertools.combinations(MASK_FIELDS, size)
]


@pytest.fixture
async def manager() -> AsyncIterator[ConfigManager]:
    config = build_config({}, source="unit")
    manager = ConfigManager(MemoryStore(), Resolver(config), config.settings)
    await manager.start(None)
    await manager.create_upstream(
        "groups/g1",
        "up",
        UpstreamInput(
            display_name="Up",
            url="https://old.example",
            username=OLD.username,
            password=OLD.password,
        ),
    )
    try:
        yield manager
    finally:
        await manager.aclose()
        await manager.resolver.aclose()


def _expected(paths: Sequence[str]) -> Credentials | None:
    moved = "url" in paths or "allow_http" in paths
    if moved and "password" not in paths:
        return None
    if not {"username", "password"} & set(paths):
        return OLD
    return Credentials(
        FULL_REQUEST.username if "username" in paths else OLD.username,
        FULL_REQUEST.password if "password" in paths else OLD.password,
    )


async def _stored(manager: ConfigManager) -> Credentials | None:
    record = await manager.get_upstream(NAME)
    # The resolver serves what the store holds, at once.
    assert manager.resolver.config.upstreams["up"].credentials == record.upstream.credentials
    return record.upstream.credentials


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "+".join(m))
async def test_every_mask_combination(manager: ConfigManager, mask: list[str]) -> None:
    await manager.update_upstream(NAME, "", mask, FULL_REQUEST)
    assert await _stored(manager) == _expected(mask)


async def test_url_and_username_do_not_keep_the_old_password(manager: ConfigManager) -> None:
    """The reported attack: mask [url, username] moved the upstream and kept the password."""
    await manager.update_upstream(
        NAME, "", ["url", "username"], UpstreamInput(url=NEW_URL, username="other")
    )
    record = await manager.get_upstream(NAME)
    assert record.upstream.url == NEW_URL and record.upstream.credentials is None


@pytest.mark.parametrize(
    ("request_", "kept"),
    [
        (UpstreamInput(url=NEW_URL), False),
        (UpstreamInput(allow_http=True), False),
        (UpstreamInput(url=NEW_URL, username="new-user"), False),
        (UpstreamInput(url=NEW_URL, username="new-user", password="new-password-8822"), True),
        (UpstreamInput(display_name="Only the name"), True),
    ],
    ids=["url", "allow_http", "url+username", "url+credentials", "other-field"],
)
async def test_implied_mask(manager: ConfigManager, request_: UpstreamInput, kept: bool) -> None:
    await manager.update_upstream(NAME, "", [], request_)
    credentials = await _stored(manager)
    assert (credentials is not None) == kept
    if request_.password:
        assert credentials == Credentials(request_.username, request_.password)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (FULL_REQUEST, Credentials(FULL_REQUEST.username, FULL_REQUEST.password)),
        (UpstreamInput(display_name="Up", url=NEW_URL), None),
    ],
    ids=["with-password", "without-password"],
)
async def test_star_mask(
    manager: ConfigManager, request_: UpstreamInput, expected: Credentials | None
) -> None:
    await manager.update_upstream(NAME, "", ["*"], request_)
    assert await _stored(manager) == expected


@pytest.mark.parametrize("mask", [["url", "credentials"], ["allow_http", "credentials"]])
async def test_credentials_alias(manager: ConfigManager, mask: list[str]) -> None:
    await manager.update_upstream(NAME, "", mask, FULL_REQUEST)
    assert await _stored(manager) == Credentials(FULL_REQUEST.username, FULL_REQUEST.password)


async def test_the_same_url_written_differently_is_no_move(manager: ConfigManager) -> None:
    await manager.update_upstream(NAME, "", ["url"], UpstreamInput(url="https://old.example/v2/"))
    assert await _stored(manager) == OLD


async def test_a_new_password_without_a_username_keeps_the_old_username(
    manager: ConfigManager,
) -> None:
    await manager.update_upstream(
        NAME, "", ["url", "password"], UpstreamInput(url=NEW_URL, password="rotated-pw-1")
    )
    assert await _stored(manager) == Credentials(OLD.username, "rotated-pw-1")


async def test_a_username_without_a_password_in_the_mask_is_refused(
    manager: ConfigManager,
) -> None:
    with pytest.raises(InvalidArgument, match="field 'password'"):
        await manager.update_upstream(
            NAME, "", ["username", "password"], UpstreamInput(username="new-user")
        )
    assert await _stored(manager) == OLD
