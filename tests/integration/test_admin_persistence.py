"""The stores in-process: SQLite survives restarts, migrations, credentials sealed at rest
with a keyring (wrong key, rotation), and Redis shared by replicas that see each other's
changes within a second (the real command: tests/system/test_admin_persistence_process.py)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from tests.support.admin import (
    AdminService,
    new_keyring,
    redis_replicas,
    start_admin_service,
)
from tests.support.processes import RedisServer
from tests.support.waiting import until
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.admin.crypto import DecryptError, Keyring
from vregistry_server.admin.stores.sqlite import DB_FILE, SCHEMA_VERSION

SECRET = "at-rest-pw-never-plain-5813"
SECRET_USER = "at-rest-user-7710"


def _files_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


async def _seed_some(svc: AdminService, url: str = "https://one.example") -> None:
    await svc.create_upstream("u1", url, username=SECRET_USER, password=SECRET)
    await svc.create_upstream("u2", "https://two.example")
    await svc.create_registry("r")
    await svc.add("r", "u2", position=1)
    await svc.add("r", "u1", position=1)


# --------------------------------------------------------------------------- SQLite


async def test_sqlite_survives_restart_and_keeps_credentials_sealed(tmp_path: Path) -> None:
    keyring, _ = new_keyring("k1")
    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=keyring)
    try:
        await _seed_some(svc)
        before = await svc.admin.GetRegistry(cpb.GetRegistryRequest(name="groups/g1/registries/r"))
    finally:
        await svc.close()

    raw = _files_bytes(tmp_path)
    assert raw, "the database file exists"
    assert SECRET.encode() not in raw and SECRET_USER.encode() not in raw

    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=keyring)
    try:
        after = await svc.admin.GetRegistry(cpb.GetRegistryRequest(name="groups/g1/registries/r"))
        assert after.registry == before.registry
        assert [m.upstream for m in after.registry.upstreams] == [
            "groups/g1/upstreams/u1",
            "groups/g1/upstreams/u2",
        ]
        upstream = svc.resolver.config.upstreams["u1"]
        assert upstream.credentials is not None and upstream.credentials.password == SECRET
        assert [m.upstream.id for m in svc.resolver.config.registries["r"].upstreams] == [
            "u1",
            "u2",
        ]
    finally:
        await svc.close()


async def test_sqlite_schema_is_versioned(tmp_path: Path) -> None:
    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=new_keyring()[0])
    await svc.close()
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"upstreams_by_group", "registries_by_group"} <= indexes
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert (tmp_path / DB_FILE).stat().st_mode & 0o077 == 0, "owner-only file"
    with pytest.raises(RuntimeError, match="newer than this server"):
        await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=new_keyring()[0])


async def test_a_wrong_key_cannot_decrypt(tmp_path: Path) -> None:
    right, _ = new_keyring("k1")
    wrong, _ = new_keyring("k1")  # same id, other key material
    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=right)
    await _seed_some(svc)
    await svc.close()
    with pytest.raises(DecryptError, match="wrong key or tampered"):
        await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=wrong)
    other_id, _ = new_keyring("k9")
    with pytest.raises(DecryptError, match="does not hold"):
        await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=other_id)
    # The sealed value is bound to its record: copied onto another record it does not open.
    sealed = right.seal(b"payload", b"record-a")
    assert right.open(sealed, b"record-a") == b"payload"
    with pytest.raises(DecryptError):
        right.open(sealed, b"record-b")
    with pytest.raises(DecryptError):
        wrong.open(sealed, b"record-a")
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(DecryptError):
        right.open(tampered, b"record-a")


async def test_key_rotation_reencrypts_at_start(tmp_path: Path) -> None:
    _, old_text = new_keyring("old")
    old = Keyring.parse(old_text)
    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=old)
    await _seed_some(svc)
    await svc.close()

    def sealed_key_ids() -> set[str]:
        with sqlite3.connect(tmp_path / DB_FILE) as db:
            docs = [json.loads(r[0]) for r in db.execute("SELECT doc FROM upstreams")]
        return {d["credentials"].split(".")[1] for d in docs if d["credentials"]}

    assert sealed_key_ids() == {"old"}
    _, new_text = new_keyring("new")
    rotated = Keyring.parse(new_text + "\n" + old_text)  # the new key first: it encrypts
    svc = await start_admin_service(store="sqlite", data_dir=tmp_path, keyring=rotated)
    await svc.close()
    assert sealed_key_ids() == {"new"}
    # The old key can now go.
    svc = await start_admin_service(
        store="sqlite", data_dir=tmp_path, keyring=Keyring.parse(new_text)
    )
    try:
        credentials = svc.resolver.config.upstreams["u1"].credentials
        assert credentials is not None and credentials.password == SECRET
    finally:
        await svc.close()


# --------------------------------------------------------------------------- Redis


@pytest.fixture
async def replicas(clean_redis: RedisServer) -> AsyncIterator[tuple[AdminService, AdminService]]:
    async with redis_replicas(clean_redis.url) as pair:
        yield pair


async def test_replicas_on_one_redis_see_changes_within_a_second(
    replicas: tuple[AdminService, AdminService], clean_redis: RedisServer
) -> None:
    a, b = replicas
    started = time.monotonic()
    await a.create_upstream("u1", "https://one.example", username=SECRET_USER, password=SECRET)
    await until(lambda: "u1" in b.resolver.config.upstreams)
    lag = time.monotonic() - started  # the write on A and its arrival on B
    await b.create_registry("r")
    await b.add("r", "u1")
    lag = max(
        lag,
        await until(
            lambda: (
                "r" in a.resolver.config.registries
                and len(a.resolver.config.registries["r"].upstreams) == 1
            )
        ),
    )
    # B answers UpstreamService for what A created, and credentials arrived decrypted.
    reply = await b.resolve_stub.UrlFor(pb.UrlForRequest(upstream_id="u1", path=""), timeout=5)
    assert reply.url == "https://one.example/v2/"
    creds = b.resolver.config.upstreams["u1"].credentials
    assert creds is not None and creds.password == SECRET
    await a.update_upstream("groups/g1/upstreams/u1", ["url"], url="https://moved.example")
    lag = max(
        lag, await until(lambda: b.resolver.config.upstreams["u1"].url == "https://moved.example")
    )
    assert b.resolver.config.upstreams["u1"].credentials is None
    await b.admin.DeleteUpstream(
        cpb.DeleteUpstreamRequest(name="groups/g1/upstreams/u1", force=True), timeout=10
    )
    lag = max(lag, await until(lambda: "u1" not in a.resolver.config.upstreams))
    print(f"worst replica lag: {lag * 1000:.1f} ms")
    assert lag < 1.0


async def test_concurrent_writers_on_two_replicas_serialize(
    replicas: tuple[AdminService, AdminService],
) -> None:
    a, b = replicas
    await a.create_registry("r")
    for index in range(6):
        await (a if index % 2 else b).create_upstream(f"u{index}", f"https://h{index}.example")
    results = await asyncio.gather(
        *[(a if index % 2 else b).add("r", f"u{index}") for index in range(6)]
    )
    assert len(results) == 6
    final = await a.admin.GetRegistry(cpb.GetRegistryRequest(name="groups/g1/registries/r"))
    members = [m.upstream.rsplit("/", 1)[1] for m in final.registry.upstreams]
    assert sorted(members) == [f"u{i}" for i in range(6)]
    assert [m.position for m in final.registry.upstreams] == [1, 2, 3, 4, 5, 6]


async def test_redis_holds_no_plain_credentials(
    replicas: tuple[AdminService, AdminService], clean_redis: RedisServer
) -> None:
    a, _ = replicas
    await a.create_upstream("u1", "https://one.example", username=SECRET_USER, password=SECRET)
    client = redis.Redis.from_url(clean_redis.url)
    try:
        dump = b""
        for key in client.scan_iter(match="*"):
            kind = client.type(key)
            if kind == b"hash":
                dump += b"".join(k + v for k, v in client.hgetall(key).items())
            elif kind == b"string":
                dump += client.get(key) or b""
        assert b"one.example" in dump, "the record is there"
        assert SECRET.encode() not in dump and SECRET_USER.encode() not in dump
    finally:
        client.close()


async def test_replica_recovers_after_a_redis_restart(
    replicas: tuple[AdminService, AdminService], clean_redis: RedisServer
) -> None:
    a, b = replicas
    await a.create_upstream("before", "https://before.example")
    await until(lambda: "before" in b.resolver.config.upstreams)
    clean_redis.stop()
    await asyncio.sleep(0.3)
    clean_redis.start()
    # Redis came back empty (no persistence in the fixture): a write after it still reaches B.
    await a.create_upstream("after", "https://after.example")
    await until(lambda: "after" in b.resolver.config.upstreams, limit=8.0)
