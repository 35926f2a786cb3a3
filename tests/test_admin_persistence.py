"""The stores: SQLite survives restarts (in-process and as the real command), migrations,
credentials sealed at rest with a keyring (wrong key, rotation), and Redis shared by
replicas that see each other's changes within a second."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis
import yaml

from tests.support.admin import AdminService, new_keyring, start_admin_service
from tests.support.processes import RedisServer, free_port
from tests.support.registry import RegistryServer
from tests.support.server_process import wait_serving
from tests.test_server_process import SERVER
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.admin.crypto import DecryptError, Keyring
from vregistry_server.admin.stores.redis import PREFIX
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


# --------------------------------------------------------------------------- the real command


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[object]:
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(
        args: list[str], env_extra: dict[str, str] | None = None
    ) -> tuple[str, Path, subprocess.Popen[bytes]]:
        port = free_port()
        log = tmp_path / f"server-{len(started)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VREGISTRY_")}
        env.update(env_extra or {})
        process = subprocess.Popen(
            [SERVER, *args, "--listen", f"127.0.0.1:{port}"],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append((process, log))
        target = f"127.0.0.1:{port}"
        wait_serving(process, target, log)
        return target, log, process

    yield run
    for process, _ in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_server_process_seeds_once_and_finds_everything_after_restart(
    tmp_path: Path,
    open_registry: RegistryServer,
    spawn,  # type: ignore[no-untyped-def]
) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        yaml.safe_dump(
            {
                "upstreams": [
                    {
                        "id": "open",
                        "name": "Open",
                        "url": open_registry.url,
                        "allow_http": True,
                        "username": SECRET_USER,
                        "password_env": "SEED_PW",
                    }
                ],
                "registries": [{"id": "seeded", "name": "Seeded", "upstreams": ["open"]}],
            }
        )
    )
    data = tmp_path / "data"
    args = ["--config", str(seed), "--data-dir", str(data), "--log-level", "debug"]
    target, log, first = spawn(args, {"SEED_PW": SECRET})
    with grpc.insecure_channel(target) as channel:
        admin = cpb_grpc.ConfigServiceStub(channel)
        resolve = pb_grpc.UpstreamServiceStub(channel)
        seeded = admin.GetUpstream(cpb.GetUpstreamRequest(name="groups/default/upstreams/open"))
        assert seeded.upstream.has_credentials
        # A runtime change to a seeded upstream, and new resources.
        admin.UpdateUpstream(
            cpb.UpdateUpstreamRequest(
                upstream=cpb.UpstreamConfig(name=seeded.upstream.name, display_name="Changed"),
            )
        )
        admin.CreateUpstream(
            cpb.CreateUpstreamRequest(
                parent="groups/default",
                upstream_id="again",
                upstream=cpb.UpstreamConfig(
                    display_name="Again", url=open_registry.url + "/v2", allow_http=True
                ),
            )
        )
        admin.AddUpstream(
            cpb.AddUpstreamRequest(
                registry="groups/default/registries/seeded",
                upstream="groups/default/upstreams/again",
                position=1,
            )
        )
        hit = resolve.ResolveUpstream(
            pb.ResolveUpstreamRequest(registry_id="seeded", path="library/alpine/manifests/latest"),
            timeout=15,
        )
        assert hit.upstream.id == "again"
    # SIGTERM and start again with the same seed: the store wins, the seed does not overwrite.
    first.terminate()
    assert first.wait(timeout=15) == 0
    target2, log2, _ = spawn(args, {"SEED_PW": SECRET})
    with grpc.insecure_channel(target2) as channel:
        admin = cpb_grpc.ConfigServiceStub(channel)
        found = admin.GetUpstream(cpb.GetUpstreamRequest(name="groups/default/upstreams/open"))
        assert found.upstream.display_name == "Changed"
        registry = admin.GetRegistry(
            cpb.GetRegistryRequest(name="groups/default/registries/seeded")
        )
        assert [m.upstream.rsplit("/", 1)[1] for m in registry.registry.upstreams] == [
            "again",
            "open",
        ]
    for path in (log, log2):
        text = path.read_text()
        assert SECRET not in text and SECRET_USER not in text
        assert '"store": "sqlite store' in text
    raw = _files_bytes(data)
    assert SECRET.encode() not in raw and SECRET_USER.encode() not in raw
    assert (data / "encryption.keys").stat().st_mode & 0o077 == 0


def test_server_refuses_bad_admin_flags(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VREGISTRY_")}
    bad_key = tmp_path / "bad.keys"
    bad_key.write_text("k1:not-base64!!\n")
    cases = [
        (["--store", "sqlite"], "--store sqlite needs --data-dir"),
        (["--store", "redis"], "--store redis needs --store-redis-url"),
        (
            ["--store", "redis", "--store-redis-url", "redis://127.0.0.1:1/0"],
            "needs an encryption key",
        ),
        (["--data-dir", str(tmp_path), "--encryption-key-file", str(bad_key)], "not valid base64"),
        (["--tls-cert", "x.crt"], "TLS needs both --tls-cert and --tls-key"),
        (["--callers-file", str(tmp_path / "missing")], "cannot read callers file"),
    ]
    for args, needle in cases:
        result = subprocess.run(
            [SERVER, *args], env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, (args, result.stderr)
        assert needle in result.stderr, (args, result.stderr)


# --------------------------------------------------------------------------- Redis


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    def wipe() -> None:
        client = redis.Redis.from_url(redis_server.url)
        keys = list(client.scan_iter(match=PREFIX + "*"))
        if keys:
            client.delete(*keys)
        client.close()

    wipe()
    yield redis_server
    wipe()


@pytest.fixture
async def replicas(clean_redis: RedisServer) -> AsyncIterator[tuple[AdminService, AdminService]]:
    keyring, _ = new_keyring("shared")
    a = await start_admin_service(store="redis", redis_url=clean_redis.url, keyring=keyring)
    b = await start_admin_service(store="redis", redis_url=clean_redis.url, keyring=keyring)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def _until(predicate: object, limit: float = 1.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    raise AssertionError(f"not seen within {limit}s")


async def test_replicas_on_one_redis_see_changes_within_a_second(
    replicas: tuple[AdminService, AdminService], clean_redis: RedisServer
) -> None:
    a, b = replicas
    started = time.monotonic()
    await a.create_upstream("u1", "https://one.example", username=SECRET_USER, password=SECRET)
    await _until(lambda: "u1" in b.resolver.config.upstreams)
    lag = time.monotonic() - started  # the write on A and its arrival on B
    await b.create_registry("r")
    await b.add("r", "u1")
    lag = max(
        lag,
        await _until(
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
        lag, await _until(lambda: b.resolver.config.upstreams["u1"].url == "https://moved.example")
    )
    assert b.resolver.config.upstreams["u1"].credentials is None
    await b.admin.DeleteUpstream(
        cpb.DeleteUpstreamRequest(name="groups/g1/upstreams/u1", force=True), timeout=10
    )
    lag = max(lag, await _until(lambda: "u1" not in a.resolver.config.upstreams))
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
    await _until(lambda: "before" in b.resolver.config.upstreams)
    clean_redis.stop()
    await asyncio.sleep(0.3)
    clean_redis.start()
    # Redis came back empty (no persistence in the fixture): a write after it still reaches B.
    await a.create_upstream("after", "https://after.example")
    await _until(lambda: "after" in b.resolver.config.upstreams, limit=8.0)


def test_two_server_processes_on_one_redis(
    tmp_path: Path,
    clean_redis: RedisServer,
    spawn,  # type: ignore[no-untyped-def]
) -> None:
    _, key_text = new_keyring("shared")
    env = {"VREGISTRY_ENCRYPTION_KEYS": key_text}
    args = [
        "--store",
        "redis",
        "--store-redis-url",
        clean_redis.url,
        "--config",
        str(_empty_seed(tmp_path)),
    ]
    target_a, _, _ = spawn(args, env)
    target_b, _, _ = spawn(args, env)
    with grpc.insecure_channel(target_a) as ca, grpc.insecure_channel(target_b) as cb:
        cpb_grpc.ConfigServiceStub(ca).CreateUpstream(
            cpb.CreateUpstreamRequest(
                parent="groups/g1",
                upstream_id="shared",
                upstream=cpb.UpstreamConfig(display_name="Shared", url="https://shared.example"),
            ),
            timeout=10,
        )
        created = time.monotonic()
        stub_b = pb_grpc.UpstreamServiceStub(cb)
        while True:
            try:
                reply = stub_b.UrlFor(pb.UrlForRequest(upstream_id="shared", path=""), timeout=2)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                assert time.monotonic() - created < 1.0, "B did not see A's change within 1 s"
                time.sleep(0.01)
        assert reply.url == "https://shared.example/v2/"
        print(
            f"process B saw process A's change after {(time.monotonic() - created) * 1000:.1f} ms"
        )


def _empty_seed(tmp_path: Path) -> Path:
    path = tmp_path / "empty.yaml"
    path.write_text("upstreams: []\n")
    return path
