"""Run Debian's ``docker-registry`` (distribution 2.8.2) on 127.0.0.1 with a generated config.

Three auth modes: ``"none"`` (open), ``"htpasswd"`` (bcrypt file, Basic challenge) and
``"token"`` (``auth.token`` trusting a :class:`~tests.support.token_server.TokenServer`).
Each registry has its own filesystem storage in a temporary directory, deletes enabled.
"""

from __future__ import annotations

import http.client
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml

from tests.support.images import ManifestKind, PushedImage, RegistryPusher
from tests.support.processes import (
    LOCALHOST,
    ManagedProcess,
    clean_env,
    port_answers,
    start_with_port_retry,
)
from tests.support.token_server import TokenServer

AuthMode = Literal["none", "htpasswd", "token"]
REGISTRY_BINARY = "docker-registry"


def _v2_answers(port: int) -> bool:
    """True when ``GET /v2/`` answers 200 (open) or 401 (auth required)."""
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=1.0)
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
        return response.status in (200, 401)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def write_htpasswd(path: Path, users: Mapping[str, str], *, rounds: int = 4) -> None:
    """A bcrypt htpasswd file (docker-registry accepts bcrypt only). Cost 4 keeps auth fast."""
    lines = [
        f"{name}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()}"
        for name, password in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")


class RegistryServer:
    """One docker-registry process. ``stop()``/``start()`` keep the port and the stored images."""

    def __init__(
        self,
        port: int,
        workdir: Path,
        *,
        auth: AuthMode = "none",
        users: Mapping[str, str] | None = None,
        token_server: TokenServer | None = None,
        log_level: str = "error",
    ) -> None:
        if auth == "token" and token_server is None:
            raise ValueError("auth='token' needs a token_server")
        if auth == "htpasswd" and not users:
            raise ValueError("auth='htpasswd' needs users")
        self.port = port
        self.host = LOCALHOST
        self.workdir = workdir
        self.auth: AuthMode = auth
        self.users: dict[str, str] = dict(users or {})
        self.token_server = token_server if auth == "token" else None
        self.storage_dir = workdir / "storage"
        self.config_path = workdir / f"config-{port}.yml"
        #: Images pushed through this object, keyed by "repository:tag" (or "repository@digest").
        self.images: dict[str, PushedImage] = {}
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self._config(log_level), sort_keys=False))
        self.process = ManagedProcess(
            f"docker-registry-{port}",
            [shutil.which(REGISTRY_BINARY) or REGISTRY_BINARY, "serve", str(self.config_path)],
            port=port,
            log_dir=workdir,
            cwd=workdir,
            # REGISTRY_* variables would override the generated config.
            env=clean_env(drop_prefixes=("REGISTRY_",)),
        )

    # ------------------------------------------------------------------ identity

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash, no /v2)."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOCALHOST}:{self.port}"

    @property
    def username(self) -> str | None:
        """The first configured user (htpasswd: from ``users``; token: the token server's)."""
        return next(iter(self.users), None)

    @property
    def password(self) -> str | None:
        name = self.username
        return self.users[name] if name is not None else None

    @property
    def credentials(self) -> tuple[str, str] | None:
        name, password = self.username, self.password
        return (name, password) if name is not None and password is not None else None

    @property
    def realm(self) -> str | None:
        if self.auth == "token":
            assert self.token_server is not None
            return self.token_server.url
        if self.auth == "htpasswd":
            return "vregistry-basic"
        return None

    @property
    def service(self) -> str | None:
        return self.token_server.service if self.token_server is not None else None

    def _config(self, log_level: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": log_level, "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"{LOCALHOST}:{self.port}",
                "secret": secrets.token_hex(16),
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.auth == "htpasswd":
            htpasswd = self.workdir / "htpasswd"
            write_htpasswd(htpasswd, self.users)
            config["auth"] = {"htpasswd": {"realm": "vregistry-basic", "path": str(htpasswd)}}
        elif self.auth == "token":
            assert self.token_server is not None
            config["auth"] = {
                "token": {
                    "realm": self.token_server.url,
                    "service": self.token_server.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.ca_bundle_path),
                }
            }
        return config

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self.process.running

    def start(self, timeout: float = 15.0) -> None:
        self.process.start(timeout=timeout, ready=lambda: _v2_answers(self.port))

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        deadline = time.monotonic() + timeout
        while port_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.start(timeout=max(0.5, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop for good and delete storage, config and logs."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ pushing

    def pusher(self) -> RegistryPusher:
        """A pusher with this registry's credentials (or push tokens from its token server)."""
        minter = self.token_server.push_token if self.token_server is not None else None
        basic = self.credentials if self.auth == "htpasswd" else None
        return RegistryPusher(self.url, basic=basic, token_minter=minter)

    def push_image(
        self,
        repository: str,
        tag: str | None,
        *,
        kind: ManifestKind = "docker",
        layers: int = 1,
        layer_size: int = 256,
    ) -> PushedImage:
        with self.pusher() as pusher:
            image = pusher.push_image(
                repository, tag, kind=kind, layers=layers, layer_size=layer_size
            )
        self.images[image.reference] = image
        return image

    def push_index(
        self,
        repository: str,
        tag: str | None,
        *,
        architectures: tuple[str, ...] = ("amd64", "arm64"),
    ) -> PushedImage:
        with self.pusher() as pusher:
            image = pusher.push_index(repository, tag, architectures=architectures)
        self.images[image.reference] = image
        return image

    def __repr__(self) -> str:
        return f"RegistryServer(url={self.url!r}, auth={self.auth!r})"


def start_registry(
    auth: AuthMode = "none",
    *,
    users: Mapping[str, str] | None = None,
    token_server: TokenServer | None = None,
    log_level: str = "error",
    timeout: float = 15.0,
) -> RegistryServer:
    """Start docker-registry on a free port; call ``.close()`` when done.

    ``users`` are the htpasswd users (auth="htpasswd") or, for auth="token", just recorded on
    the object as the credentials tests should use (the token server holds the real table).
    """
    workdir = Path(tempfile.mkdtemp(prefix="vreg-registry-"))

    def attempt(port: int) -> RegistryServer:
        server = RegistryServer(
            port, workdir, auth=auth, users=users, token_server=token_server, log_level=log_level
        )
        server.start(timeout=timeout)
        return server

    try:
        return start_with_port_retry(attempt)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
