"""Flags and wiring for the admin features; none of them is on unless asked for.

With none of these flags the server is exactly the file-configured one: no
ConfigService, no caller tokens, plaintext gRPC. ``--data-dir`` (or
``--store``) turns on ConfigService with a store, seeded from ``--config``;
``--callers-file`` turns on bearer tokens and roles; ``--tls-cert`` and
``--tls-key`` turn on TLS, and ``--tls-client-ca`` makes it mutual.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from vregistry_server.admin.callers import Callers, CallersError
from vregistry_server.admin.crypto import Keyring, KeyringError, generate_key_line
from vregistry_server.admin.manager import ConfigManager
from vregistry_server.admin.stores.base import Store
from vregistry_server.admin.stores.memory import MemoryStore
from vregistry_server.admin.stores.redis import RedisStore
from vregistry_server.admin.stores.sqlite import SqliteStore
from vregistry_server.model import Config
from vregistry_server.redis_topology import parse_redis_url
from vregistry_server.rpc.config_servicer import SERVICE_NAME as CONFIG_SERVICE_NAME
from vregistry_server.rpc.config_servicer import ConfigServicer
from vregistry_server.rpc.interceptors import CallerAuthInterceptor
from vregistry_server.runtime.metrics import PROMETHEUS
from vregistry_server.runtime.tls import TlsError, server_credentials
from vregistry_server.runtime.workers import split_listen

log = logging.getLogger(__name__)

GENERATED_KEY_FILE = "encryption.keys"
STORES = ("memory", "sqlite", "redis")


class AdminSetupError(Exception):
    """An admin flag cannot be honoured; the message says which and why."""


@dataclass(frozen=True)
class AdminOptions:
    store: str | None = None
    data_dir: Path | None = None
    store_redis_url: str | None = None
    redis_ca_file: str | None = None  # settings.redis_ca_file, for a rediss:// store
    keyring: Keyring | None = None
    callers: Callers | None = None
    credentials: Any = None
    tls_mode: str = "off"  # off | tls | mtls
    seed: bool = False
    # The operator's explicit choice to run without caller authentication where the
    # server would otherwise refuse to start (see open_exposures).
    allow_unauthenticated: bool = False


@dataclass
class AdminRuntime:
    options: AdminOptions
    manager: ConfigManager | None = None
    interceptors: list[Any] = field(default_factory=list)

    @property
    def credentials(self) -> Any:
        return self.options.credentials

    def register(self, server: grpc.aio.Server) -> list[str]:
        """Add ConfigService to the server (when a store is on); the service names added."""
        if self.manager is None:
            return []
        from vregistry.v1 import config_service_pb2_grpc as cpb_grpc

        cpb_grpc.add_ConfigServiceServicer_to_server(
            ConfigServicer(self.manager, PROMETHEUS), server
        )
        return [CONFIG_SERVICE_NAME]

    def describe(self) -> dict[str, Any]:
        return {
            "store": self.manager.source if self.manager else "off",
            "caller_auth": f"{len(self.options.callers)} callers"
            if self.options.callers
            else "off",
            "tls": self.options.tls_mode,
        }

    async def aclose(self) -> None:
        if self.manager is not None:
            await self.manager.aclose()


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    group = parser.add_argument_group("admin API, persistence and caller authentication")
    group.add_argument(
        "--data-dir",
        default=env.get("VREGISTRY_DATA_DIR"),
        help="directory of the embedded SQLite store (env VREGISTRY_DATA_DIR); turns on "
        "ConfigService, seeded from --config",
    )
    group.add_argument(
        "--store",
        default=env.get("VREGISTRY_STORE"),
        choices=STORES,
        help="where ConfigService keeps upstreams and registries (env VREGISTRY_STORE); "
        "default: sqlite with --data-dir, else off; memory is one process's own (refused "
        "with --workers above 1)",
    )
    group.add_argument(
        "--store-redis-url",
        default=env.get("VREGISTRY_STORE_REDIS_URL"),
        help="Redis URL of the shared store (env VREGISTRY_STORE_REDIS_URL); default --redis-url",
    )
    group.add_argument(
        "--encryption-key-file",
        default=env.get("VREGISTRY_ENCRYPTION_KEY_FILE"),
        help="keyring for credentials at rest, lines KEY_ID:BASE64, the first encrypts (env "
        "VREGISTRY_ENCRYPTION_KEY_FILE, or the keys themselves in VREGISTRY_ENCRYPTION_KEYS)",
    )
    group.add_argument(
        "--callers-file",
        default=env.get("VREGISTRY_CALLERS_FILE"),
        help="hashed caller tokens with roles (env VREGISTRY_CALLERS_FILE); default: no caller auth",
    )
    group.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=env.get("VREGISTRY_ALLOW_UNAUTHENTICATED", "").lower() == "true",
        help="start without caller authentication even with ConfigService on or on a "
        "non-loopback address (env VREGISTRY_ALLOW_UNAUTHENTICATED=true); anyone who reaches "
        "the port can then read credentials' headers and change the configuration",
    )
    group.add_argument(
        "--tls-cert", default=env.get("VREGISTRY_TLS_CERT"), help="PEM server certificate"
    )
    group.add_argument("--tls-key", default=env.get("VREGISTRY_TLS_KEY"), help="PEM server key")
    group.add_argument(
        "--tls-client-ca",
        default=env.get("VREGISTRY_TLS_CLIENT_CA"),
        help="PEM CA bundle; clients must present a certificate it signed (mTLS)",
    )


def options_from_args(
    args: argparse.Namespace, config: Config, env: Mapping[str, str] | None = None
) -> AdminOptions:
    environ = os.environ if env is None else env
    store = args.store or ("sqlite" if args.data_dir else None)
    data_dir = Path(args.data_dir) if args.data_dir else None
    if store == "sqlite" and data_dir is None:
        raise AdminSetupError("--store sqlite needs --data-dir")
    if args.store_redis_url:
        try:
            parse_redis_url(args.store_redis_url)
        except ValueError as exc:
            raise AdminSetupError(
                f"--store-redis-url (env VREGISTRY_STORE_REDIS_URL): {exc}"
            ) from None
    redis_url = args.store_redis_url or config.settings.redis_url
    if store == "redis" and not redis_url:
        raise AdminSetupError("--store redis needs --store-redis-url or --redis-url")
    try:
        keyring = Keyring.load(args.encryption_key_file, environ.get("VREGISTRY_ENCRYPTION_KEYS"))
    except KeyringError as exc:
        raise AdminSetupError(str(exc)) from None
    if keyring is None and store == "sqlite" and data_dir is not None:
        keyring = _generated_keyring(data_dir)
    if keyring is None and store == "redis":
        raise AdminSetupError(
            "--store redis needs an encryption key shared by every replica: "
            "--encryption-key-file or VREGISTRY_ENCRYPTION_KEYS"
        )
    callers = None
    if args.callers_file:
        try:
            callers = Callers.load(args.callers_file)
        except CallersError as exc:
            raise AdminSetupError(str(exc)) from None
        if callers.has_identities and not args.tls_client_ca:
            # An id: line can only match a certificate the TLS layer verified.
            raise AdminSetupError(
                f"{args.callers_file}: 'id:' lines name client certificates; they need"
                " --tls-client-ca (with --tls-cert and --tls-key)"
            )
    credentials = None
    tls_mode = "off"
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise AdminSetupError("TLS needs both --tls-cert and --tls-key")
        try:
            credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
        except TlsError as exc:
            raise AdminSetupError(str(exc)) from None
        tls_mode = "mtls" if args.tls_client_ca else "tls"
    elif args.tls_client_ca:
        raise AdminSetupError("--tls-client-ca needs --tls-cert and --tls-key")
    return AdminOptions(
        store=store,
        data_dir=data_dir,
        store_redis_url=redis_url,
        redis_ca_file=config.settings.redis_ca_file,
        keyring=keyring,
        callers=callers,
        credentials=credentials,
        tls_mode=tls_mode,
        seed=bool(getattr(args, "config", None)),
        allow_unauthenticated=bool(getattr(args, "allow_unauthenticated", False)),
    )


# --------------------------------------------------------------------------- fail closed

# How often the warning of an unauthenticated server is repeated in the log.
UNAUTHENTICATED_WARNING_SECONDS = 3600.0


def open_exposures(options: AdminOptions, listen: str) -> list[str]:
    """What anyone reaching the port could do without caller authentication (empty: nothing
    beyond a loopback-only, read-only service, or callers are authenticated)."""
    if options.callers is not None:
        return []
    exposures = []
    if options.store is not None:
        exposures.append(f"ConfigService is on (--store {options.store})")
    if not is_loopback_listen(listen):
        exposures.append(f"the server listens on {listen}, not a loopback address")
    return exposures


def check_fail_closed(options: AdminOptions, listen: str) -> list[str]:
    """Refuse an open server unless the operator opted out; the exposures accepted.

    Checked before any port is bound: an unauthenticated ConfigService, or an
    UpstreamService reachable from the network, hands stored credentials (as Basic
    headers and tokens) and the configuration to whoever connects.
    """
    exposures = open_exposures(options, listen)
    if exposures and not options.allow_unauthenticated:
        raise AdminSetupError(
            "refusing to start without caller authentication: "
            + " and ".join(exposures)
            + ". Add --callers-file FILE (env VREGISTRY_CALLERS_FILE): hashed caller tokens or "
            "mTLS identities with roles and groups, one line each (python -m "
            "vregistry_server.admin.callers new NAME ROLES GROUPS prints one); or listen on "
            "127.0.0.1 without ConfigService; or, to run open on purpose, add "
            "--allow-unauthenticated (env VREGISTRY_ALLOW_UNAUTHENTICATED=true)"
        )
    return exposures


def is_loopback_listen(listen: str) -> bool:
    """True for HOST:PORT on a loopback address (127.0.0.0/8, ::1, localhost); anything
    else, a host name or a wildcard like 0.0.0.0 and [::], may be reachable from outside."""
    try:
        host, _ = split_listen(listen)
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_unauthenticated(exposures: Sequence[str]) -> None:
    log.warning(
        "caller authentication is off (--allow-unauthenticated): anyone who reaches the port "
        "can get upstream credentials' headers and tokens"
        + (" and change the configuration" if any("ConfigService" in e for e in exposures) else "")
        + "; add --callers-file",
        extra={"exposures": "; ".join(exposures)},
    )


async def keep_warning_unauthenticated(
    exposures: Sequence[str], interval: float = UNAUTHENTICATED_WARNING_SECONDS
) -> None:
    """Repeat the warning while the server runs, so it is not lost in a long log."""
    while True:
        await asyncio.sleep(interval)
        warn_unauthenticated(exposures)


def _generated_keyring(data_dir: Path) -> Keyring:
    """Without a configured key, one kept beside the database (owner-only): better than none."""
    path = data_dir / GENERATED_KEY_FILE
    try:
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("# generated by vregistry-server; the first key encrypts\n")
                handle.write(generate_key_line("k1") + "\n")
            log.warning(
                "no encryption key configured: generated one beside the data; keep the key "
                "elsewhere with --encryption-key-file",
                extra={"key_file": str(path)},
            )
        keyring = Keyring.load(path, None)
    except (OSError, KeyringError) as exc:
        raise AdminSetupError(f"{path}: cannot create or read the generated key: {exc}") from None
    assert keyring is not None
    return keyring


def make_store(options: AdminOptions) -> Store | None:
    if options.store == "memory":
        return MemoryStore()
    if options.store == "sqlite":
        assert options.data_dir is not None
        return SqliteStore(options.data_dir, options.keyring)
    if options.store == "redis":
        assert options.store_redis_url is not None
        return RedisStore(options.store_redis_url, options.keyring, ca_file=options.redis_ca_file)
    return None


async def start_admin(options: AdminOptions, config: Config, resolver: Any) -> AdminRuntime:
    """Open the store, re-encrypt, apply the seed, and make the store the live configuration."""
    runtime = AdminRuntime(options)
    if options.callers is not None:
        runtime.interceptors.append(CallerAuthInterceptor(options.callers))
    store = make_store(options)
    if store is not None:
        manager = ConfigManager(store, resolver, config.settings)
        try:
            await manager.start(config if options.seed else None)
        except BaseException:
            await store.aclose()
            raise
        runtime.manager = manager
    return runtime
