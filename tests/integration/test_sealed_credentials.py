"""Sealed credentials are bound to their record: id, group, url and allow_http.

Whoever can write the SQLite file or Redis but lacks the key can change an upstream's
url or group, but its credentials then no longer open: that upstream is refused with
FAILED_PRECONDITION / CREDENTIALS_UNREADABLE and nothing is sent, while every other
upstream keeps working. Stores written in the old format (associated data bound to the
id only) are re-sealed at start. Real SQLite files, the real Redis, a real htpasswd
registry behind a counting proxy that stands for the attacker's host.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from tests.support.admin import AdminService, empty_config, new_keyring, start_admin_service
from tests.support.processes import RedisServer
from tests.support.proxy import Proxy
from tests.support.registry import RegistryServer
from tests.support.service import error_details
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.admin.crypto import DecryptError, Keyring
from vregistry_server.admin.records import (
    credentials_aad,
    legacy_credentials_aad,
    upstream_from_doc,
)
from vregistry_server.admin.stores.redis import UPSTREAMS
from vregistry_server.admin.stores.sqlite import DB_FILE

PATH = "team/app/manifests/v1"
# The registries of these tests run on loopback; API-created upstreams may reach it only so.
LOOPBACK = empty_config(egress_allow_cidrs=["127.0.0.0/8"])

Docs = dict[str, dict[str, Any]]


# --------------------------------------------------------------------------- store access


def _sqlite_docs(data_dir: Path) -> Docs:
    with sqlite3.connect(data_dir / DB_FILE) as db:
        return {row[0]: json.loads(row[1]) for row in db.execute("SELECT id, doc FROM upstreams")}


def _sqlite_write(data_dir: Path, docs: Docs) -> None:
    with sqlite3.connect(data_dir / DB_FILE) as db:
        for upstream_id, doc in docs.items():
            db.execute("UPDATE upstreams SET doc = ? WHERE id = ?", (json.dumps(doc), upstream_id))


@pytest.fixture
def redis_client(clean_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(clean_redis.url)
    try:
        yield client
    finally:
        client.close()


def _redis_docs(client: redis.Redis) -> Docs:
    return {k.decode(): json.loads(v) for k, v in client.hgetall(UPSTREAMS).items()}


def _redis_write(client: redis.Redis, docs: Docs) -> None:
    client.hset(UPSTREAMS, mapping={k: json.dumps(v) for k, v in docs.items()})


def _opens_with(keyring: Keyring, doc: dict[str, Any], associated: bytes) -> bool:
    try:
        keyring.open(doc["credentials"], associated)
    except DecryptError:
        return False
    return True


def _bound(keyring: Keyring, doc: dict[str, Any]) -> bytes:
    return credentials_aad(upstream_from_doc(doc, keyring).upstream)


# --------------------------------------------------------------------------- tampering


async def _seed(svc: AdminService, registry: RegistryServer) -> None:
    user, password = registry.credentials
    await svc.create_upstream("victim", registry.url, username=user, password=password)
    # The same registry and credentials in another group: must keep working throughout.
    await svc.create_upstream("other", registry.url, group="g2", username=user, password=password)
    await svc.create_registry("r")
    await svc.add("r", "victim")


async def _assert_unusable(svc: AdminService, name: str) -> None:
    for call in (
        svc.resolve_stub.GetAuthHeaders(
            pb.GetAuthHeadersRequest(upstream_id="victim", path="team/app"), timeout=10
        ),
        svc.resolve_stub.ResolveUpstream(
            pb.ResolveUpstreamRequest(registry_id="r", path=PATH), timeout=10
        ),
        svc.admin.TestUpstream(cpb.TestUpstreamRequest(name=name), timeout=10),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        details = error_details(info.value)
        assert details.code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.reason == "CREDENTIALS_UNREADABLE"
        assert details.metadata["upstream_id"] == "victim"
    shown = (await svc.admin.GetUpstream(cpb.GetUpstreamRequest(name=name), timeout=10)).upstream
    assert shown.has_credentials and shown.credentials_unreadable


async def _assert_other_works(svc: AdminService, registry: RegistryServer) -> None:
    reply = await svc.resolve_stub.GetAuthHeaders(
        pb.GetAuthHeadersRequest(upstream_id="other", path="team/app"), timeout=10
    )
    assert reply.scheme == "basic"
    shown = await svc.admin.GetUpstream(
        cpb.GetUpstreamRequest(name="groups/g2/upstreams/other"), timeout=10
    )
    assert shown.upstream.has_credentials and not shown.upstream.credentials_unreadable


Tamper = Callable[[dict[str, Any], Proxy], str]


def _move_url(doc: dict[str, Any], attacker: Proxy) -> str:
    doc["url"] = attacker.url
    return "groups/g1/upstreams/victim"


def _move_group(doc: dict[str, Any], attacker: Proxy) -> str:
    doc["group"] = "g2"
    return "groups/g2/upstreams/victim"


TAMPERS = [pytest.param(_move_url, id="url"), pytest.param(_move_group, id="group")]


@pytest.mark.parametrize("tamper", TAMPERS)
async def test_a_record_edited_in_sqlite_without_the_key_is_unusable(
    tmp_path: Path, basic_registry: RegistryServer, proxy_factory: Any, tamper: Tamper
) -> None:
    keyring, _ = new_keyring("k1")
    attacker = proxy_factory(basic_registry)  # the host the attacker wants the password sent to
    svc = await start_admin_service(LOOPBACK, store="sqlite", data_dir=tmp_path, keyring=keyring)
    await _seed(svc, basic_registry)
    await svc.close()

    docs = _sqlite_docs(tmp_path)
    name = tamper(docs["victim"], attacker)
    _sqlite_write(tmp_path, {"victim": docs["victim"]})

    svc = await start_admin_service(LOOPBACK, store="sqlite", data_dir=tmp_path, keyring=keyring)
    try:
        await _assert_unusable(svc, name)
        await _assert_other_works(svc, basic_registry)
        assert attacker.request_count == 0, "nothing reached the new url"
        # New credentials make it usable again (sealed for its current url and group).
        updated = await svc.update_upstream(
            name, ["username", "password"], username="fresh-user", password="fresh-pw-5150"
        )
        assert updated.has_credentials and not updated.credentials_unreadable
    finally:
        await svc.close()


async def test_a_record_edited_at_runtime_is_unusable_and_the_reload_goes_on(
    tmp_path: Path, basic_registry: RegistryServer, proxy_factory: Any
) -> None:
    """The live reload (not only the start) meets the tampered record and keeps the rest."""
    keyring, _ = new_keyring("k1")
    attacker = proxy_factory(basic_registry)
    svc = await start_admin_service(LOOPBACK, store="sqlite", data_dir=tmp_path, keyring=keyring)
    try:
        await _seed(svc, basic_registry)
        docs = _sqlite_docs(tmp_path)
        name = _move_url(docs["victim"], attacker)
        _sqlite_write(tmp_path, {"victim": docs["victim"]})
        # Any write bumps the generation; the reload it causes reads the edited record too.
        await svc.create_upstream("later", "https://later.example")
        await _assert_unusable(svc, name)
        await _assert_other_works(svc, basic_registry)
        assert attacker.request_count == 0
    finally:
        await svc.close()


async def test_a_record_edited_in_redis_without_the_key_is_unusable(
    clean_redis: RedisServer,
    redis_client: redis.Redis,
    basic_registry: RegistryServer,
    proxy_factory: Any,
) -> None:
    keyring, _ = new_keyring("shared")
    attacker = proxy_factory(basic_registry)
    svc = await start_admin_service(
        LOOPBACK, store="redis", redis_url=clean_redis.url, keyring=keyring
    )
    await _seed(svc, basic_registry)
    await svc.close()

    docs = _redis_docs(redis_client)
    name = _move_url(docs["victim"], attacker)
    _redis_write(redis_client, {"victim": docs["victim"]})

    svc = await start_admin_service(
        LOOPBACK, store="redis", redis_url=clean_redis.url, keyring=keyring
    )
    try:
        await _assert_unusable(svc, name)
        await _assert_other_works(svc, basic_registry)
        assert attacker.request_count == 0
    finally:
        await svc.close()


async def test_a_sealed_value_copied_onto_another_record_does_not_open(
    tmp_path: Path, basic_registry: RegistryServer
) -> None:
    keyring, _ = new_keyring("k1")
    svc = await start_admin_service(LOOPBACK, store="sqlite", data_dir=tmp_path, keyring=keyring)
    await _seed(svc, basic_registry)
    await svc.create_upstream("plain", "https://plain.example")
    await svc.close()
    docs = _sqlite_docs(tmp_path)
    docs["plain"]["credentials"] = docs["victim"]["credentials"]
    _sqlite_write(tmp_path, {"plain": docs["plain"]})
    svc = await start_admin_service(LOOPBACK, store="sqlite", data_dir=tmp_path, keyring=keyring)
    try:
        credentials = svc.resolver.config.upstreams["plain"].credentials
        assert credentials is not None and credentials.unreadable
        assert repr(credentials) == "Credentials(unreadable)"
        await _assert_other_works(svc, basic_registry)
    finally:
        await svc.close()


# --------------------------------------------------------------------------- migration


SECRET_PASSWORD = "migrated-pw-2719"


async def _create_two(svc: AdminService) -> None:
    await svc.create_upstream(
        "u1", "https://one.example", username="u-one", password=SECRET_PASSWORD
    )
    await svc.create_upstream(
        "u2", "https://two.example", group="g2", username="u-two", password=SECRET_PASSWORD
    )
    await svc.create_upstream("u3", "https://three.example")


def _to_old_format(keyring: Keyring, docs: Docs, users: dict[str, str]) -> Docs:
    """Each credentialed document sealed as the previous release did (bound to the id only)."""
    old: Docs = {}
    for upstream_id, doc in docs.items():
        if doc["credentials"]:
            plain = json.dumps({"u": users[upstream_id], "p": SECRET_PASSWORD}).encode()
            doc = {**doc, "credentials": keyring.seal(plain, legacy_credentials_aad(upstream_id))}
            assert not _opens_with(keyring, doc, _bound(keyring, doc))
        old[upstream_id] = doc
    return old


def _assert_migrated(svc: AdminService, keyring: Keyring, docs: Docs, before: Docs) -> None:
    for upstream_id in ("u1", "u2"):
        credentials = svc.resolver.config.upstreams[upstream_id].credentials
        assert credentials is not None and credentials.password == SECRET_PASSWORD
        doc = docs[upstream_id]
        assert _opens_with(keyring, doc, _bound(keyring, doc)), "re-sealed with the new binding"
        assert not _opens_with(keyring, doc, legacy_credentials_aad(upstream_id))
        assert {k: v for k, v in doc.items() if k != "credentials"} == {
            k: v for k, v in before[upstream_id].items() if k != "credentials"
        }
    assert docs["u3"] == before["u3"] and docs["u3"]["credentials"] is None


USERS = {"u1": "u-one", "u2": "u-two"}


async def test_an_old_sqlite_store_is_resealed_at_start(tmp_path: Path) -> None:
    keyring, _ = new_keyring("k1")
    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=keyring)
    await _create_two(svc)
    await svc.close()
    old = _to_old_format(keyring, _sqlite_docs(tmp_path), USERS)
    _sqlite_write(tmp_path, old)

    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=keyring)
    try:
        migrated = _sqlite_docs(tmp_path)
        _assert_migrated(svc, keyring, migrated, old)
    finally:
        await svc.close()
    # A second start has nothing left to migrate.
    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=keyring)
    await svc.close()
    assert _sqlite_docs(tmp_path) == migrated


async def test_an_old_redis_store_is_resealed_at_start(
    clean_redis: RedisServer, redis_client: redis.Redis
) -> None:
    keyring, _ = new_keyring("shared")
    svc = await start_admin_service(store="redis", redis_url=clean_redis.url, keyring=keyring)
    await _create_two(svc)
    await svc.close()
    old = _to_old_format(keyring, _redis_docs(redis_client), USERS)
    _redis_write(redis_client, old)

    svc = await start_admin_service(store="redis", redis_url=clean_redis.url, keyring=keyring)
    try:
        _assert_migrated(svc, keyring, _redis_docs(redis_client), old)
    finally:
        await svc.close()


async def test_migration_and_key_rotation_in_one_start(tmp_path: Path) -> None:
    _, old_text = new_keyring("old")
    old_keyring = Keyring.parse(old_text)
    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=old_keyring)
    await _create_two(svc)
    await svc.close()
    old = _to_old_format(old_keyring, _sqlite_docs(tmp_path), USERS)
    _sqlite_write(tmp_path, old)
    _, new_text = new_keyring("new")
    rotated = Keyring.parse(new_text + "\n" + old_text)
    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=rotated)
    try:
        docs = _sqlite_docs(tmp_path)
        _assert_migrated(svc, rotated, docs, old)
        assert {d["credentials"].split(".")[1] for d in docs.values() if d["credentials"]} == {
            "new"
        }
    finally:
        await svc.close()
