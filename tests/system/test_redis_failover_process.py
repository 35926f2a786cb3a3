"""A real ``vregistry-server`` on Redis Sentinel and on Redis Cluster, the master SIGKILLed
under load: every RPC still answers (tokens degrade to process memory), and after the
failover the Redis cache serves again by itself (``vregistry_token_cache_degraded`` back to
0, and a token written into the promoted topology). A bad Redis URL is refused at start with
the field named and the password hidden."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.support.processes import free_port
from tests.support.redis_topologies import ClusterTopology, SentinelTopology
from tests.support.registry import RegistryServer
from tests.support.server_process import SERVER, launch, server_env
from tests.support.token_server import TokenServer
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.admin.crypto import generate_key_line
from vregistry_server.oci.token_cache import KEY_PREFIX

Topology = SentinelTopology | ClusterTopology
TOKEN_PASSWORD = "s3cret-token-pw"
URL_PASSWORD = "url-pw-never-shown-4471"
CALLERS = 4


@pytest.fixture(params=["sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    value: Topology = request.getfixturevalue(f"redis_{request.param}")
    value.flush()
    yield value
    value.restore()


def _document(open_registry: RegistryServer, token_registry: RegistryServer) -> dict[str, Any]:
    return {
        "upstreams": [
            {"id": "open", "name": "Open", "url": open_registry.url, "allow_http": True},
            {
                "id": "token",
                "name": "Token",
                "url": token_registry.url,
                "allow_http": True,
                "username": "bob",
                "password_env": "TOKEN_PW",
            },
        ],
        "registries": [{"id": "r", "name": "R", "upstreams": ["token", "open"]}],
        # No near cache: every GetAuthHeaders goes to Redis, so the failover is met, not hidden.
        "settings": {"token_near_cache_seconds": 0},
    }


def _degraded(metrics_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("vregistry_token_cache_degraded"):
            return float(line.split()[-1])
    raise AssertionError("no vregistry_token_cache_degraded metric")


def _token_keys(topology: Topology) -> int:
    """Token keys held by the topology's masters now (plain clients: no routing to hide it)."""
    if isinstance(topology, ClusterTopology):
        client = topology.cluster_client()
        try:
            return sum(
                1 for _ in client.scan_iter(match=KEY_PREFIX + "*", target_nodes="primaries")
            )
        finally:
            client.close()
    master = topology.master_client()
    try:
        return sum(1 for _ in master.scan_iter(match=KEY_PREFIX + "*"))
    finally:
        master.close()


class Load:
    """CALLERS concurrent loops of GetAuthHeaders + ResolveUpstream until stopped (bounded)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.calls = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()

    async def run(self, limit_seconds: float) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.UpstreamServiceStub(channel)
            await asyncio.wait_for(
                asyncio.gather(*[self._caller(stub, n) for n in range(CALLERS)]), limit_seconds
            )

    async def _caller(self, stub: pb_grpc.UpstreamServiceStub, n: int) -> None:
        while not self._stop.is_set():
            try:
                auth = await stub.GetAuthHeaders(
                    pb.GetAuthHeadersRequest(upstream_id="token", path="private/app"), timeout=10
                )
                assert auth.headers["Authorization"].startswith("Bearer ")
                resolved = await stub.ResolveUpstream(
                    pb.ResolveUpstreamRequest(registry_id="r", path="private/app/manifests/v1"),
                    timeout=10,
                )
                assert resolved.upstream.id == "token"
            except (grpc.aio.AioRpcError, AssertionError, KeyError) as exc:
                self.failures.append(f"caller {n}: {exc!r}"[:300])
            self.calls += 1
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


async def test_master_killed_under_load_no_rpc_fails_and_redis_serves_again(
    tmp_path: Path,
    topology: Topology,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
    token_server: TokenServer,
) -> None:
    metrics_port = free_port()
    server = launch(
        tmp_path,
        _document(open_registry, token_registry),
        env={"TOKEN_PW": TOKEN_PASSWORD},
        args=["--redis-url", topology.url, "--metrics-listen", f"127.0.0.1:{metrics_port}"],
    )
    try:
        load = Load(server.target)
        running = asyncio.create_task(load.run(limit_seconds=90))
        await asyncio.sleep(0.5)
        assert _token_keys(topology) >= 1, "the token reached Redis before the failover"
        calls_before = load.calls

        started = time.monotonic()
        topology.kill_master()
        await asyncio.to_thread(topology.wait_for_failover, 20.0)
        failover_seconds = time.monotonic() - started
        calls_during = load.calls - calls_before

        # Served again by Redis: not degraded, and a fresh token written into the topology.
        await asyncio.to_thread(topology.flush)
        deadline = time.monotonic() + 15
        while _degraded(metrics_port) != 0 or _token_keys(topology) == 0:
            assert time.monotonic() < deadline, "the Redis cache did not serve again"
            await asyncio.sleep(0.2)
        recovered_seconds = time.monotonic() - started

        load.stop()
        await running
        print(
            f"{type(topology).__name__}: {load.calls} calls, failover {failover_seconds:.2f}s "
            f"({calls_during} calls during it), Redis serving again after {recovered_seconds:.2f}s"
        )
        assert load.failures == []
        assert calls_during > 0, "calls kept being answered while no master was there"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--redis-url", f"redis+sentinel://u:{URL_PASSWORD}@h1:26379"], "--redis-url"),
        (
            [
                "--store",
                "redis",
                "--allow-unauthenticated",
                "--store-redis-url",
                f"redis+cluster://:{URL_PASSWORD}@h1:7000/3",
            ],
            "--store-redis-url",
        ),
    ],
)
def test_a_bad_redis_url_is_refused_at_start_naming_the_flag(args: list[str], needle: str) -> None:
    result = subprocess.run(
        [SERVER, *args], env=server_env(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert URL_PASSWORD not in result.stderr


def test_a_bad_redis_url_in_the_environment_is_refused_naming_it() -> None:
    env = server_env({"VREGISTRY_REDIS_URL": f"redis+cluster://:{URL_PASSWORD}@h1:7000/2"})
    result = subprocess.run([SERVER], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "VREGISTRY_REDIS_URL" in result.stderr and "database 0 only" in result.stderr
    assert URL_PASSWORD not in result.stderr


def test_the_store_on_sentinel_with_a_password_in_its_url_never_shows_it(
    tmp_path: Path, redis_sentinel: SentinelTopology
) -> None:
    """The real command on a Sentinel store; the URL's password is in no log line.

    (The fixture's nodes have no ``requirepass``: Redis accepts AUTH for a user without a
    password, so the password travels all the way and must still never be shown.)
    """
    redis_sentinel.flush()
    hosts = redis_sentinel.url.removeprefix("redis+sentinel://")
    key_file = tmp_path / "keys"
    key_file.write_text(generate_key_line("k1") + "\n")
    args = ["--store", "redis", "--store-redis-url", f"redis+sentinel://:{URL_PASSWORD}@{hosts}"]
    args += ["--encryption-key-file", str(key_file), "--allow-unauthenticated"]
    args += ["--log-level", "debug"]
    server = launch(tmp_path, {"upstreams": [], "registries": []}, args=args)
    try:
        master = redis_sentinel.master_client()
        try:
            assert master.exists("{vregistry:config:v1}:generation"), "the store is on the master"
        finally:
            master.close()
    finally:
        server.stop()
    assert URL_PASSWORD not in server.logs()
