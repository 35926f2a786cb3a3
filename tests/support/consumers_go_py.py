"""The Go and Python consumers (tests/consumers/go, tests/consumers/python), each installing its
client the way its users do, in a temporary directory outside the repository.

- Go: the consumer module ``require``s the client module; a ``replace`` points it at
  ``clients/go`` (as for a checkout), then ``go mod tidy``, ``go build`` and run.
- Python: the client's wheel is built from a copy of ``clients/python``, a fresh venv gets it by
  ``pip install`` (its dependencies from the package index pip is configured with), and the
  consumer runs with that venv's python.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.support.consumers import (
    ARTIFACT_SIZES,
    CLIENTS,
    ConsumerEnv,
    ConsumerStepError,
    answer_line,
    consumer,
    copy_sources,
    run_step,
)

GO_CLIENT_MODULE = "github.com/vregistry/vregistry/clients/go"
# What a user's environment would not carry over from this repository's test run.
_PYTHON_DROP = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ConsumerStepError("go is not installed: the Go toolchain is needed for its client")
    return go


def _tree_size(folder: Path, suffix: str) -> int:
    return sum(p.stat().st_size for p in folder.rglob(f"*{suffix}") if p.is_file())


@consumer("go")
def go_consumer(env: ConsumerEnv) -> str:
    go = _go()
    project = copy_sources("go", env.tmp_dir)
    go_env = {"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    replace = f"-replace={GO_CLIENT_MODULE}={CLIENTS / 'go'}"
    run_step([go, "mod", "edit", replace], project, env=go_env, label="go")
    run_step([go, "mod", "tidy"], project, env=go_env, label="go")
    binary = project / "consumer"
    run_step([go, "build", "-o", str(binary), "."], project, env=go_env, label="go")
    # The "package" of a Go module is its source; the binary shows what a user ships.
    ARTIFACT_SIZES["go client module (.go sources)"] = _tree_size(CLIENTS / "go", ".go")
    ARTIFACT_SIZES["go consumer binary"] = binary.stat().st_size
    stdout = run_step([str(binary), str(env.write_input())], project, label="go")
    return answer_line(stdout, "go")


def build_python_wheel(destination: Path) -> Path:
    """The client's wheel, built from a copy of clients/python (the checkout stays untouched:
    no build/ or egg-info, and no race with tests/system/test_clients.py's own install)."""
    source = destination / "vregistry-client-src"
    shutil.copytree(
        CLIENTS / "python",
        source,
        ignore=shutil.ignore_patterns(".venv", "build", "dist", "*.egg-info", "__pycache__"),
    )
    dist = destination / "dist"
    # This interpreter's setuptools (pyproject.toml's build requirement) builds it, offline.
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run_step([*pip_wheel, "-w", str(dist), str(source)], destination, label="python")
    wheels = sorted(dist.glob("vregistry_client-*.whl"))
    if len(wheels) != 1:
        raise ConsumerStepError(f"[python] expected one wheel in {dist}, found {wheels}")
    return wheels[0]


@consumer("python")
def python_consumer(env: ConsumerEnv) -> str:
    project = copy_sources("python", env.tmp_dir)
    wheel = build_python_wheel(env.tmp_dir)
    ARTIFACT_SIZES["python wheel"] = wheel.stat().st_size
    venv = project / ".venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    # --without-pip saves ensurepip's ~15 s; this interpreter's pip installs into the venv
    # (pip --python), resolving the wheel's dependencies as any pip install does.
    venv_argv = [base_python, "-m", "venv", "--without-pip", str(venv)]
    run_step(venv_argv, project, drop_env=_PYTHON_DROP, label="python")
    python = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q"]
    run_step([*pip, str(wheel)], project, drop_env=_PYTHON_DROP, label="python")
    # -I: isolated, so nothing of the checkout (cwd, PYTHONPATH) can stand in for the wheel.
    argv = [python, "-I", str(project / "consumer.py"), str(env.write_input())]
    stdout = run_step(argv, project, drop_env=_PYTHON_DROP, label="python")
    return answer_line(stdout, "python")
