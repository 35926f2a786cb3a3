"""Consumer projects: each client installed from its package into a project outside the repo.

The registry below maps a language to a function that takes a :class:`ConsumerEnv` (a live
server, the two upstreams to create, a scratch directory, unique ids) and returns the one JSON
line its consumer program printed. ``tests/system/test_client_consumers.py`` runs them all
against one server and compares the answers. The entries live in
``tests/support/consumers_go_py.py`` (Go, Python) and ``tests/support/consumers_ts_java.py``
(TypeScript, Java); each registers itself with :func:`consumer`.

The contract every consumer program follows (sources in ``tests/consumers/<lang>/``):

- input: the path of a JSON file in argv[1], :meth:`ConsumerEnv.input_document`::

    {"target": "127.0.0.1:PORT", "token": "..." | null,
     "tls": null | {"ca": PATH, "cert": PATH | null, "key": PATH | null},
     "group": "g1",
     "upstreams": [{"id": "go-open", "display_name": "...", "url": "http://...",
                    "allow_http": true, "realm_allow_hosts": ["127.0.0.1"],
                    "username": "", "password": ""}, ...two entries...],
     "registry_id": "go-r", "path": "public/alpine/manifests/latest"}

- flow, through the client's ConfigService API: CreateUpstream for both upstreams (parent
  ``groups/<group>``), CreateRegistry, AddUpstream of upstreams[0] at position 1 and of
  upstreams[1] at position 2, then UpstreamService ResolveUpstream(registry_id, path);
- output: exactly one line on stdout, a JSON object (:data:`ANSWER_KEYS`)::

    {"upstream_id": "go-token", "position": 2, "url": "http://.../v2/...",
     "digest": "sha256:...", "media_type": "...", "size": 123,
     "outcomes": [["go-open", "ATTEMPT_OUTCOME_NOT_FOUND"], ["go-token", "ATTEMPT_OUTCOME_FOUND"]]}

  (outcome = the proto enum value name), and exit 0. Anything else goes to stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONSUMER_SOURCES = ROOT / "tests" / "consumers"
CLIENTS = ROOT / "clients"
ANSWER_KEYS = frozenset(
    {"upstream_id", "position", "url", "digest", "media_type", "size", "outcomes"}
)
STEP_TIMEOUT = 600  # seconds; a cold first build downloads modules, packages, artifacts


@dataclass(frozen=True)
class ConsumerUpstream:
    """One upstream the consumer creates (ids already carry the consumer's prefix)."""

    id: str
    url: str
    display_name: str
    allow_http: bool = True
    realm_allow_hosts: tuple[str, ...] = ()
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class ConsumerTls:
    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class ConsumerEnv:
    """What a consumer needs: the server, what to create, and where it may write."""

    target: str
    tmp_dir: Path
    prefix: str
    group: str
    upstreams: tuple[ConsumerUpstream, ConsumerUpstream]
    registry_id: str
    path: str
    token: str | None = field(default=None, repr=False)
    tls: ConsumerTls | None = None
    # Shared, already-built artifacts (a wheel, a tarball, a local Maven repo) keyed by name,
    # so that a runner can build a package once for several consumers.
    cache_dir: Path | None = None

    def input_document(self) -> dict[str, Any]:
        tls = None
        if self.tls is not None:
            tls = {
                "ca": str(self.tls.ca),
                "cert": str(self.tls.cert) if self.tls.cert else None,
                "key": str(self.tls.key) if self.tls.key else None,
            }
        return {
            "target": self.target,
            "token": self.token,
            "tls": tls,
            "group": self.group,
            "upstreams": [
                {
                    "id": u.id,
                    "display_name": u.display_name,
                    "url": u.url,
                    "allow_http": u.allow_http,
                    "realm_allow_hosts": list(u.realm_allow_hosts),
                    "username": u.username,
                    "password": u.password,
                }
                for u in self.upstreams
            ],
            "registry_id": self.registry_id,
            "path": self.path,
        }

    def write_input(self) -> Path:
        """The input file (owner-only: it holds the fixture upstream's password)."""
        path = self.tmp_dir / "consumer-input.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.input_document(), handle)
        return path


Consumer = Callable[[ConsumerEnv], str]
CONSUMERS: dict[str, Consumer] = {}
# Each consumer records the size in bytes of the package it installed ("python wheel", ...);
# the cross-language test prints them (the closing note reports them).
ARTIFACT_SIZES: dict[str, int] = {}


def consumer(lang: str) -> Callable[[Consumer], Consumer]:
    """Register ``function`` as the consumer of ``lang`` (one per language)."""

    def register(function: Consumer) -> Consumer:
        if lang in CONSUMERS:
            raise ValueError(f"consumer {lang!r} registered twice")
        CONSUMERS[lang] = function
        return function

    return register


class ConsumerStepError(AssertionError):
    """A build or run step failed; the message holds its command, exit code and output."""


def run_step(
    argv: Sequence[str],
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    drop_env: Sequence[str] = (),
    timeout: float = STEP_TIMEOUT,
    label: str = "",
) -> str:
    """Run one step with this process's environment plus ``env`` minus ``drop_env``; return its
    stdout; raise :class:`ConsumerStepError` with its output."""
    started = time.monotonic()
    full_env = {k: v for k, v in os.environ.items() if k not in drop_env}
    full_env.update(env or {})
    try:
        result = subprocess.run(
            list(argv),
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as expired:
        raise ConsumerStepError(f"[{label}] {' '.join(argv)} timed out after {timeout}s") from (
            expired
        )
    elapsed = time.monotonic() - started
    print(f"[{label}] {' '.join(argv)}: {elapsed:.1f}s")
    if result.returncode != 0:
        raise ConsumerStepError(
            f"[{label}] {' '.join(argv)} exited {result.returncode} after {elapsed:.1f}s\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result.stdout


def answer_line(stdout: str, label: str) -> str:
    """The consumer's one JSON line (the last non-empty line of its stdout), checked for shape."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ConsumerStepError(f"[{label}] consumer printed nothing")
    line = lines[-1]
    parsed = json.loads(line)
    if not isinstance(parsed, dict) or set(parsed) != ANSWER_KEYS:
        raise ConsumerStepError(f"[{label}] answer keys differ from the contract: {line}")
    return line


def copy_sources(lang: str, destination: Path) -> Path:
    """Copy ``tests/consumers/<lang>/`` into ``destination`` (outside the repository)."""
    source = CONSUMER_SOURCES / lang
    target = destination / f"consumer-{lang}"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("node_modules", "target"))
    return target
