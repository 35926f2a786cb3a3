"""Run ``vregistry-server`` as an operator would: a real process, a config file, env vars."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import clean_env, free_port, stop_process

SERVER = (
    shutil.which("vregistry-server", path=str(Path(sys.executable).parent)) or "vregistry-server"
)


class ServerProcess:
    def __init__(self, args: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [SERVER, *args], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(
        self, timeout: float = 20, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self._log.flush()
        wait_serving(self.process, self.target, self.log_path, timeout, credentials)

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        code = stop_process(self.process, 15)
        self._log.close()
        assert code is not None
        return code


def wait_serving(
    process: subprocess.Popen[bytes],
    target: str,
    log_path: Path,
    timeout: float = 20,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Poll the gRPC health service until SERVING; fail with the server's log if it dies.

    ``credentials``: a TLS port (with a client certificate for mTLS); plaintext without."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early:\n{log_path.read_text(errors='replace')}")
        channel = (
            grpc.insecure_channel(target)
            if credentials is None
            else grpc.secure_channel(target, credentials)
        )
        with channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    raise AssertionError(
        f"server not serving after {timeout}s:\n{log_path.read_text(errors='replace')}"
    )


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = clean_env(drop_prefixes=("VREGISTRY_",))
    env.update(extra or {})
    return env


def launch(
    workdir: Path,
    document: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    name: str = "server",
) -> ServerProcess:
    """Write ``document`` as the config, start the server on a free port and wait until it serves."""
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(document))
    port = free_port()
    process = ServerProcess(
        ["--config", str(config), "--listen", f"127.0.0.1:{port}", *(args or [])],
        server_env(env),
        port,
        workdir / f"{name}.log",
    )
    try:
        process.wait_serving()
    except AssertionError:
        process.stop()
        raise
    return process
