"""The stores as the real ``vregistry-server`` command runs them: a SQLite store that
survives a restart, refused admin flags, and two processes sharing one Redis (the in-process
stores are in tests/integration/test_admin_persistence.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from tests.support.admin import new_keyring
from tests.support.processes import RedisServer, free_port, stop_process
from tests.support.registry import RegistryServer
from tests.support.server_process import SERVER, server_env, wait_serving
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc

SECRET = "at-rest-pw-never-plain-5813"
SECRET_USER = "at-rest-user-7710"


def _files_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[object]:
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(
        args: list[str], env_extra: dict[str, str] | None = None
    ) -> tuple[str, Path, subprocess.Popen[bytes]]:
        port = free_port()
        log = tmp_path / f"server-{len(started)}.log"
        env = server_env()
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
        stop_process(process, 15)


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
                # The registry is on loopback: upstreams created or changed through the API
                # may reach it only when the operator lists the range (oci/egress.py).
                "settings": {"egress_allow_cidrs": ["127.0.0.0/8"]},
            }
        )
    )
    data = tmp_path / "data"
    args = [
        "--config",
        str(seed),
        "--data-dir",
        str(data),
        "--log-level",
        "debug",
        "--allow-unauthenticated",  # this test is about the store, not caller auth
    ]
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
    env = server_env()
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
        "--allow-unauthenticated",  # this test is about the shared store, not caller auth
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
