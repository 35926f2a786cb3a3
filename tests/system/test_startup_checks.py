"""The real ``vregistry-server`` command at start: flag combinations it refuses (exit code 2),
and ``--version``."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import free_port
from tests.support.server_process import SERVER, server_env


def _run(args: list[str], env_extra: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the command; a server that starts instead of refusing is stopped and reported."""
    env = server_env()
    env.update(env_extra or {})
    argv = [SERVER, "--listen", f"127.0.0.1:{free_port()}", *args]
    process = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the workers go with it
    )
    try:
        _, stderr = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
        pytest.fail(f"{' '.join(args)}: the server started instead of refusing:\n{stderr[-2000:]}")
    return process.returncode, stderr


@pytest.mark.parametrize(
    ("args", "env_extra"),
    [
        (["--store", "memory", "--workers", "2"], {}),
        # An explicit memory store wins over --data-dir (which alone would mean sqlite).
        (["--store", "memory", "--data-dir", "{tmp}", "--workers", "3"], {}),
        ([], {"VREGISTRY_STORE": "memory", "VREGISTRY_WORKERS": "2"}),
    ],
    ids=["flags", "memory-over-data-dir", "environment"],
)
def test_memory_store_with_several_workers_is_refused(
    tmp_path: Path, args: list[str], env_extra: dict[str, str]
) -> None:
    args = [a.replace("{tmp}", str(tmp_path / "data")) for a in args]
    code, stderr = _run(args, env_extra)
    assert code == 2, stderr
    assert "--store memory" in stderr and "--workers" in stderr, stderr
    assert "--store sqlite --data-dir" in stderr and "--store redis" in stderr, stderr
    assert "Traceback" not in stderr


def test_version_prints_the_installed_version() -> None:
    """``vregistry-server --version``: the package's version from its metadata, exit 0."""
    result = subprocess.run(
        [SERVER, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"vregistry-server {importlib.metadata.version('vregistry-server')}"
    )
