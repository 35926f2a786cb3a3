"""The ``vregistry-server`` command as an operator runs it: config, env, health, logs, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from tests.support.processes import free_port
from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.server_process import SERVER, ServerProcess, launch, server_env
from tests.support.token_server import TokenServer
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc

WRONG_PASSWORD = "wrong-pw-must-not-leak-7731"


@pytest.fixture
def config_file(
    tmp_path: Path, open_registry: RegistryServer, token_registry: RegistryServer
) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
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
                    {
                        "id": "wrong",
                        "name": "Wrong",
                        "url": token_registry.url,
                        "allow_http": True,
                        "username": "bob",
                        "password_env": "WRONG_PW",
                    },
                ],
                "registries": [{"id": "r", "name": "R", "upstreams": ["wrong", "open", "token"]}],
                "settings": {"shutdown_grace_seconds": 5},
            }
        )
    )
    return path


@pytest.fixture
def run_server(tmp_path: Path) -> Iterator[object]:
    started: list[ServerProcess] = []

    def run(args: list[str], extra_env: dict[str, str] | None = None) -> ServerProcess:
        port = free_port()
        env = server_env()
        env.update({"TOKEN_PW": "s3cret-token-pw", "WRONG_PW": WRONG_PASSWORD, **(extra_env or {})})
        if "VREGISTRY_LISTEN" not in env and "--listen" not in args:
            args = [*args, "--listen", f"127.0.0.1:{port}"]
        elif "VREGISTRY_LISTEN" in env:
            port = int(env["VREGISTRY_LISTEN"].rsplit(":", 1)[1])
        process = ServerProcess(args, env, port, tmp_path / f"server-{len(started)}.log")
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serves_all_three_rpcs_and_stops_on_sigterm(
    config_file: Path, run_server, token_server: TokenServer, loop: str
) -> None:  # type: ignore[no-untyped-def]
    # On both event loops (``--loop uvloop``: its transports carry the upstream wire too).
    server = run_server(["--config", str(config_file), "--log-level", "debug", "--loop", loop])
    server.wait_serving()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.UpstreamServiceStub(channel)
        url = stub.UrlFor(
            pb.UrlForRequest(upstream_id="open", path="library/alpine/manifests/latest"), timeout=5
        )
        assert url.url.endswith("/v2/library/alpine/manifests/latest")
        auth = stub.GetAuthHeaders(
            pb.GetAuthHeadersRequest(upstream_id="token", path="private/app"), timeout=10
        )
        token = auth.headers["Authorization"].removeprefix("Bearer ")
        resolved = stub.ResolveUpstream(
            pb.ResolveUpstreamRequest(registry_id="r", path="private/app/manifests/v1"), timeout=10
        )
        assert resolved.upstream.id == "token"
        assert [a.outcome for a in resolved.attempts] == [
            pb.ATTEMPT_OUTCOME_AUTH_FAILED,
            pb.ATTEMPT_OUTCOME_NOT_FOUND,
            pb.ATTEMPT_OUTCOME_FOUND,
        ]
        with pytest.raises(grpc.RpcError) as info:
            stub.GetAuthHeaders(
                pb.GetAuthHeadersRequest(upstream_id="wrong", path="private/app"), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert server.stop() == 0
    logs = server.logs()
    assert '"msg": "serving"' in logs and '"msg": "stopped"' in logs
    assert '"upstream": "Token"' in logs, "logs name the upstream"
    for secret in ("s3cret-token-pw", WRONG_PASSWORD, token, token.split(".")[2]):
        assert secret not in logs


async def test_sigterm_lets_in_flight_rpcs_finish(
    tmp_path: Path,
    open_registry: RegistryServer,
    proxy_factory: ProxyFactory,
    run_server,  # type: ignore[no-untyped-def]
) -> None:
    slow = proxy_factory(open_registry, delay_seconds=1.0, fault_methods=("HEAD",))
    path = tmp_path / "slow.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "upstreams": [{"id": "slow", "name": "Slow", "url": slow.url, "allow_http": True}],
                "registries": [{"id": "r", "name": "R", "upstreams": ["slow"]}],
                "settings": {"shutdown_grace_seconds": 5},
            }
        )
    )
    server = run_server(["--config", str(path)])
    await asyncio.to_thread(server.wait_serving)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.UpstreamServiceStub(channel)
        request = pb.ResolveUpstreamRequest(registry_id="r", path="library/alpine/manifests/latest")
        in_flight = asyncio.ensure_future(stub.ResolveUpstream(request, timeout=10))
        await asyncio.sleep(0.4)
        server.process.send_signal(signal.SIGTERM)
        reply = await in_flight
        assert reply.upstream.id == "slow"
    code = await asyncio.to_thread(server.process.wait, 10)
    assert code == 0
    async with grpc.aio.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.UpstreamServiceStub(channel).UrlFor(
                pb.UrlForRequest(upstream_id="slow", path=""), timeout=1
            )
        assert info.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def test_environment_variables_configure_the_server(config_file: Path, run_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = run_server(
        [], {"VREGISTRY_CONFIG": str(config_file), "VREGISTRY_LISTEN": f"127.0.0.1:{port}"}
    )
    server.wait_serving()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = pb_grpc.UpstreamServiceStub(channel).UrlFor(
            pb.UrlForRequest(upstream_id="token", path=""), timeout=5
        )
    assert reply.url.endswith("/v2/")


def test_embedded_default_config_starts_without_anything(run_server) -> None:  # type: ignore[no-untyped-def]
    server = run_server([])
    server.wait_serving()
    with grpc.insecure_channel(server.target) as channel:
        reply = pb_grpc.UpstreamServiceStub(channel).UrlFor(
            pb.UrlForRequest(upstream_id="dockerhub", path="library/alpine/manifests/latest"),
            timeout=5,
        )
    assert reply.url == "https://registry-1.docker.io/v2/library/alpine/manifests/latest"
    assert '"token_cache": "memory"' in server.logs()


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        (
            {"upstreams": [{"id": "u", "name": "U", "url": "http://x.example"}]},
            "upstreams[0] (id 'u'): field 'url': must use https",
        ),
        (
            {
                "upstreams": [
                    {
                        "id": "u",
                        "name": "U",
                        "url": "https://x.example",
                        "username": "a",
                        "password_env": "NOPE_UNSET",
                    }
                ]
            },
            "field 'password_env': environment variable NOPE_UNSET is not set",
        ),
        (
            {"registries": [{"id": "r", "name": "R", "upstreams": ["ghost"]}]},
            "registries[0] (id 'r'): field 'upstreams': unknown upstream 'ghost'",
        ),
    ],
)
def test_invalid_config_is_refused_at_start(
    tmp_path: Path, document: dict[str, object], needle: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    env = server_env()
    result = subprocess.run(
        [SERVER, "--config", str(path)], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert needle in result.stderr


def test_healthcheck_module(config_file: Path, run_server) -> None:  # type: ignore[no-untyped-def]
    server = run_server(["--config", str(config_file)])
    server.wait_serving()
    ok = subprocess.run(
        [sys.executable, "-m", "vregistry_server.healthcheck", server.target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    server.stop()
    down = subprocess.run(
        [sys.executable, "-m", "vregistry_server.healthcheck", server.target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1


async def test_sigterm_under_load_finishes_every_in_flight_rpc(
    tmp_path: Path, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    slow = proxy_factory(open_registry, delay_seconds=0.8, fault_methods=("HEAD",))
    document = {
        "upstreams": [{"id": "slow", "name": "Slow", "url": slow.url, "allow_http": True}],
        "registries": [{"id": "r", "name": "R", "upstreams": ["slow"]}],
        "settings": {"shutdown_grace_seconds": 5, "probe_concurrency": 1},
    }
    server = await asyncio.to_thread(launch, tmp_path, document)
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.UpstreamServiceStub(channel)
            request = pb.ResolveUpstreamRequest(
                registry_id="r", path="library/alpine/manifests/latest"
            )
            in_flight = [
                asyncio.ensure_future(stub.ResolveUpstream(request, timeout=10)) for _ in range(40)
            ]
            # SIGTERM once every call is in flight at the upstream (its HEAD arrived), not
            # after a fixed sleep: on a loaded machine some calls were not sent yet.
            await asyncio.sleep(0.3)
            for _ in range(50):  # bounded: at most 5 s more
                if slow.count("HEAD") >= len(in_flight):
                    break
                await asyncio.sleep(0.1)
            server.process.send_signal(signal.SIGTERM)
            replies = await asyncio.gather(*in_flight, return_exceptions=True)
            failures = [r for r in replies if isinstance(r, BaseException)]
            assert not failures, failures[:3]
            assert all(r.upstream.id == "slow" for r in replies)  # type: ignore[union-attr]
        assert await asyncio.to_thread(server.process.wait, 10) == 0
    finally:
        server.stop()
