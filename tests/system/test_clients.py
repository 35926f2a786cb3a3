"""The four clients (Go, Python, TypeScript, Java), each run by its native test runner against a
real ``vregistry-server`` process, then compared with each other.

A module fixture starts the server with upstreams ``open`` (the ``open_registry`` fixture) and
``token`` (``token_registry``, credentials bob via password_env), registry ``r`` = [open, token],
and writes the stack file (the contract in clients/README.md). Each runner gets
``VREGISTRY_STACK=<stack file>`` and ``VREGISTRY_ANSWERS_DIR=<dir>``; its suite writes
``<dir>/<lang>.json``, and the last test checks the four answer files agree.

The runners are subprocesses (``subprocess.run`` is fine here: the server is another process,
so nothing in this event loop has to keep serving while they run).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import free_port, stop_process
from tests.support.registry import RegistryServer
from tests.support.server_process import server_env, wait_serving

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"
SERVER = (
    shutil.which("vregistry-server", path=str(Path(sys.executable).parent)) or "vregistry-server"
)
RUNNER_TIMEOUT = 600  # seconds; a first run downloads Go modules, npm packages, Maven artifacts
LANGUAGES = ("go", "python", "typescript", "java")
# Fields that may legitimately differ between languages (none in the contract today; a
# language that adds e.g. latency_ms for debugging does not break the comparison).
VOLATILE_FIELDS = frozenset({"latency_ms", "expires_at", "token"})

pytestmark = pytest.mark.timeout(RUNNER_TIMEOUT + 300)


@dataclass
class Stack:
    path: Path
    answers_dir: Path
    data: dict[str, Any]
    server_log: Path


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
) -> Iterator[Stack]:
    """A real vregistry-server process and the stack file that describes it."""
    workdir = tmp_path_factory.mktemp("clients")
    config = workdir / "config.yaml"
    config.write_text(
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
                        "password_env": "VREG_CLIENTS_TOKEN_PW",
                    },
                ],
                "registries": [{"id": "r", "name": "R", "upstreams": ["open", "token"]}],
                # ConfigService is on (--data-dir) so the clients' admin APIs are tested too;
                # upstreams created through it may reach the loopback fixtures.
                "settings": {"shutdown_grace_seconds": 2, "egress_allow_cidrs": ["127.0.0.0/8"]},
            }
        )
    )
    port = free_port()
    target = f"127.0.0.1:{port}"
    env = server_env()
    assert token_registry.password is not None
    env["VREG_CLIENTS_TOKEN_PW"] = token_registry.password
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(SERVER, "--config", str(config), "--listen", target),
                *("--data-dir", str(workdir / "data"), "--allow-unauthenticated"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(process, target, log_path)
        hit = token_registry.images["public/alpine:latest"]
        data: dict[str, Any] = {
            "target": target,
            "url_for": {
                "upstream_id": "open",
                "path": "library/alpine/manifests/latest",
                "expected_url": f"{open_registry.url}/v2/library/alpine/manifests/latest",
            },
            "auth": {"upstream_id": "token", "path": "private/app/manifests/v1"},
            "resolve_hit": {
                "registry_id": "r",
                "path": "public/alpine/manifests/latest",
                "expected_upstream_id": "token",
                "expected_position": 2,
                "expected_digest": hit.digest,
            },
            "resolve_miss": {"registry_id": "r", "path": "public/missing/manifests/latest"},
            "invalid": {"upstream_id": "open", "path": "Library/Alpine/manifests/latest"},
            # For each client's ConfigService test: ids prefixed by the language, in this group.
            "config": {
                "group": "clients",
                "open_url": open_registry.url,
                "token_url": token_registry.url,
                "realm_allow_hosts": ["127.0.0.1"],
                "hit_path": "public/alpine/manifests/latest",
                "hit_digest": hit.digest,
            },
        }
        stack_path = workdir / "stack.json"
        stack_path.write_text(json.dumps(data, indent=2) + "\n")
        answers = workdir / "answers"
        answers.mkdir()
        yield Stack(stack_path, answers, data, log_path)
    finally:
        stop_process(process, 15)


def run_step(
    stack: Stack,
    lang: str,
    argv: list[str],
    cwd: Path,
    extra_env: Mapping[str, str] | None = None,
    drop_env: tuple[str, ...] = (),
) -> None:
    """Run one step of a language's runner; fail with its output (and the server's log)."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    env.update(VREGISTRY_STACK=str(stack.path), VREGISTRY_ANSWERS_DIR=str(stack.answers_dir))
    env.update(extra_env or {})
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUNNER_TIMEOUT,
        )
    except subprocess.TimeoutExpired as timeout:
        output = _text(timeout.stdout) + _text(timeout.stderr)
        pytest.fail(f"[{lang}] {' '.join(argv)} timed out after {RUNNER_TIMEOUT}s:\n{output}")
    elapsed = time.monotonic() - started
    print(f"[{lang}] {' '.join(argv)} (in {cwd.relative_to(ROOT)}): {elapsed:.1f}s")
    if result.returncode != 0:
        pytest.fail(
            f"[{lang}] {' '.join(argv)} exited {result.returncode} after {elapsed:.1f}s\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n"
            f"--- vregistry-server log (tail) ---\n{stack.server_log.read_text()[-4000:]}",
            pytrace=False,
        )


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def require_client(lang: str) -> Path:
    folder = CLIENTS / lang
    if not folder.is_dir():
        pytest.fail(f"clients/{lang}/ does not exist yet: the {lang} client is missing")
    return folder


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: the {name} toolchain is needed for its client")
    return path


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """One runner per client folder at a time on this machine: two checkouts' test runs (or two
    people in one checkout) must not `npm ci` or `pip install` into the same folder at once."""
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"vregistry-client-{key}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def answers_written(stack: Stack, lang: str) -> None:
    path = stack.answers_dir / f"{lang}.json"
    assert path.is_file(), f"the {lang} suite passed but wrote no {path.name} (tests skipped?)"


def _tree_digest(folder: Path, patterns: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            if path.is_file() and ".venv" not in path.parts and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_go_client(stack: Stack) -> None:
    folder = require_client("go")
    go = require_tool("go")
    env = {"GOTOOLCHAIN": "local"}
    with exclusive(folder):
        run_step(stack, "go", [go, "mod", "download"], folder, env)
        run_step(stack, "go", [go, "vet", "./..."], folder, env)
        run_step(stack, "go", [go, "test", "-count=1", "-v", "./..."], folder, env)
    answers_written(stack, "go")


def test_python_client(stack: Stack) -> None:
    """A separate venv (clients/python/.venv), the package installed from its folder as a user
    would (not editable), then mypy --strict and pytest there."""
    folder = require_client("python")
    venv = folder / ".venv"
    python = venv / "bin" / "python"
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    with exclusive(folder):
        if not python.exists():
            run_step(
                stack, "python", [sys.executable, "-m", "venv", str(venv)], folder, drop_env=drop
            )
        # Reinstall only when the package's files changed since the last install.
        stamp = venv / ".vregistry-client-installed"
        digest = _tree_digest(folder, ("pyproject.toml", "README.md", "src/**/*"))
        if not stamp.exists() or stamp.read_text() != digest:
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            run_step(stack, "python", [*pip, ".[test]"], folder, drop_env=drop)
            stamp.write_text(digest)
        run_step(stack, "python", [str(python), "-m", "mypy"], folder, drop_env=drop)
        pytest_argv = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        run_step(stack, "python", pytest_argv, folder, drop_env=drop)
    answers_written(stack, "python")


def test_typescript_client(stack: Stack) -> None:
    folder = require_client("typescript")
    npm = require_tool("npm")
    with exclusive(folder):
        run_step(stack, "typescript", [npm, "ci", "--no-audit", "--no-fund"], folder)
        run_step(stack, "typescript", [npm, "test"], folder)
    answers_written(stack, "typescript")


def test_java_client(stack: Stack) -> None:
    folder = require_client("java")
    mvn = require_tool("mvn")
    with exclusive(folder):
        run_step(stack, "java", [mvn, "-q", "-B", "test"], folder)
    answers_written(stack, "java")


def _normalized(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items() if k not in VOLATILE_FIELDS}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def test_all_clients_give_the_same_answers(stack: Stack) -> None:
    missing = [lang for lang in LANGUAGES if not (stack.answers_dir / f"{lang}.json").is_file()]
    assert not missing, f"no answers from {missing}: their runner tests failed or did not run"
    answers = {
        lang: _normalized(json.loads((stack.answers_dir / f"{lang}.json").read_text()))
        for lang in LANGUAGES
    }
    reference = answers["python"]
    # The answers match the stack's expectations, not only each other.
    assert reference["url_for"] == stack.data["url_for"]["expected_url"]
    assert reference["resolve_hit"]["digest"] == stack.data["resolve_hit"]["expected_digest"]
    assert reference["resolve_hit"]["outcomes"] == [
        ["open", "ATTEMPT_OUTCOME_NOT_FOUND"],
        ["token", "ATTEMPT_OUTCOME_FOUND"],
    ]
    assert reference["auth"] == {
        "scheme": "bearer",
        "authorization_prefix": "Bearer",
        "cache_hit_second_call": True,
    }
    assert reference["resolve_miss"] == {
        "code": "NOT_FOUND",
        "reason": "NOT_FOUND_ON_UPSTREAMS",
        "outcomes": [["open", "ATTEMPT_OUTCOME_NOT_FOUND"], ["token", "ATTEMPT_OUTCOME_NOT_FOUND"]],
    }
    assert reference["invalid"] == {"code": "INVALID_ARGUMENT", "reason": "INVALID_PATH"}
    differing = {
        lang: json.dumps(answer, sort_keys=True)
        for lang, answer in answers.items()
        if answer != reference
    }
    assert not differing, (
        "clients disagree with python:\n"
        f"python: {json.dumps(reference, sort_keys=True)}\n"
        + "\n".join(f"{lang}: {text}" for lang, text in differing.items())
    )


def test_python_client_stubs_coexist_with_the_servers() -> None:
    """Both packages in one process: same proto path and bytes, so one descriptor, no clash."""
    code = (
        "from vregistry.v1 import upstream_service_pb2 as server\n"
        "from vregistry_client.v1 import upstream_service_pb2 as client\n"
        "import vregistry_client\n"
        "assert client.DESCRIPTOR is server.DESCRIPTOR\n"
        "assert client.ResolveUpstreamFailure is server.ResolveUpstreamFailure\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CLIENTS / "python" / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
