"""Fail closed: the real server refuses to start open to anyone where that would matter.

ConfigService (``--data-dir``, ``--store``) or a non-loopback listen address without
caller authentication exits with code 2 and says what to add, before any port is bound;
``--allow-unauthenticated`` (or its environment variable) is the operator's explicit
opt-out and is logged as a warning. A plain server on 127.0.0.1 needs no flag.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
import yaml

from tests.support.processes import free_port
from tests.support.server_process import SERVER, launch, server_env
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry_server.admin.callers import hash_token
from vregistry_server.admin.stores.sqlite import DB_FILE

EMPTY: dict[str, object] = {"upstreams": [], "registries": []}
WARNING = "caller authentication is off (--allow-unauthenticated)"


def _refused(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> str:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(EMPTY))
    result = subprocess.run(
        [SERVER, "--config", str(config), *args],
        env=server_env(env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert '"serving"' not in result.stderr, "refused before serving"
    return result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_start_refused_on_a_wildcard_address_without_auth(tmp_path: Path, host: str) -> None:
    port = free_port()
    stderr = _refused(tmp_path, ["--listen", f"{host}:{port}"])
    assert "refusing to start without caller authentication" in stderr
    assert f"listens on {host}:{port}, not a loopback address" in stderr
    assert "--callers-file" in stderr and "--allow-unauthenticated" in stderr


def test_start_refused_with_data_dir_without_auth(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stderr = _refused(tmp_path, ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data)])
    assert "ConfigService is on (--store sqlite)" in stderr
    assert "--callers-file" in stderr and "--allow-unauthenticated" in stderr
    assert not (data / DB_FILE).exists(), "no store was opened"


def test_start_refused_with_the_store_from_the_environment(tmp_path: Path) -> None:
    stderr = _refused(tmp_path, [], {"VREGISTRY_STORE": "memory"})
    assert "ConfigService is on (--store memory)" in stderr


def test_allow_unauthenticated_starts_and_warns(tmp_path: Path) -> None:
    server = launch(
        tmp_path, EMPTY, args=["--data-dir", str(tmp_path / "data"), "--allow-unauthenticated"]
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            reply = cpb_grpc.ConfigServiceStub(channel).ListUpstreams(
                cpb.ListUpstreamsRequest(parent="groups/-"), timeout=10
            )
            assert list(reply.upstreams) == []
        logs = server.logs()
        assert WARNING in logs and "change the configuration" in logs
        assert '"level": "warning"' in next(line for line in logs.splitlines() if WARNING in line)
    finally:
        assert server.stop() == 0


def test_allow_unauthenticated_from_the_environment(tmp_path: Path) -> None:
    server = launch(
        tmp_path,
        EMPTY,
        env={"VREGISTRY_STORE": "memory", "VREGISTRY_ALLOW_UNAUTHENTICATED": "true"},
    )
    try:
        assert WARNING in server.logs()
    finally:
        server.stop()


def test_loopback_without_flags_starts_without_warning(tmp_path: Path) -> None:
    server = launch(tmp_path, EMPTY)
    try:
        assert WARNING not in server.logs()
    finally:
        assert server.stop() == 0


def test_config_service_with_a_callers_file_needs_no_opt_out(tmp_path: Path) -> None:
    callers = tmp_path / "callers"
    callers.write_text(f"{hash_token('ops-token-1')} ops admin,resolver *\n")
    server = launch(
        tmp_path, EMPTY, args=["--data-dir", str(tmp_path / "data"), "--callers-file", str(callers)]
    )
    try:
        assert WARNING not in server.logs()
        with grpc.insecure_channel(server.target) as channel:
            stub = cpb_grpc.ConfigServiceStub(channel)
            request = cpb.ListUpstreamsRequest(parent="groups/-")
            with pytest.raises(grpc.RpcError) as info:
                stub.ListUpstreams(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            stub.ListUpstreams(
                request, metadata=[("authorization", "Bearer ops-token-1")], timeout=10
            )
    finally:
        server.stop()
