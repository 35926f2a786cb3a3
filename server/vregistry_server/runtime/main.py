"""``vregistry-server``: start the gRPC server.

Flags win over environment variables, which win over the config file's
``settings``. Without a config the embedded default (public Docker Hub, GHCR
and Quay, anonymous, in-memory token cache) is used, so the server starts on a
bare machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import grpc
import yaml
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.config import ConfigError, build_config, load_config
from vregistry_server.model import Config
from vregistry_server.redis_topology import parse_redis_url
from vregistry_server.resolver import Resolver
from vregistry_server.rpc.upstream_servicer import UpstreamServicer
from vregistry_server.runtime import admin_setup
from vregistry_server.runtime.logs import AuditLines, configure_logging
from vregistry_server.runtime.metrics import PROMETHEUS, serve_metrics
from vregistry_server.runtime.reflection import enable_reflection
from vregistry_server.runtime.tracing import TracingUnavailable, enable_tracing
from vregistry_server.runtime.workers import reserve_port, run_workers, split_listen

log = logging.getLogger("vregistry_server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["UpstreamService"].full_name
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024
# The subcommand that validates the configuration without serving.
CHECK_CONFIG = "check-config"


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    resolver: Resolver
    health: health_aio.HealthServicer
    admin: admin_setup.AdminRuntime | None = None

    async def stop(self, grace: float | None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace`` seconds, then close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.admin is not None:
            await self.admin.aclose()
        await self.resolver.aclose()


async def start_server(
    config: Config,
    listen: str,
    *,
    resolver: Resolver | None = None,
    reuse_port: bool = False,
    admin: admin_setup.AdminRuntime | None = None,
) -> RunningServer:
    """Build and start the server; ``listen`` may use port 0 for a free port.

    ``admin`` (see runtime/admin_setup.py) adds ConfigService, the caller-auth
    interceptor and TLS credentials; without it the server is plaintext and open, which
    is refused on a non-loopback ``listen`` (admin_setup.check_fail_closed, before binding).
    """
    admin_setup.check_fail_closed(
        admin.options if admin is not None else admin_setup.AdminOptions(), listen
    )
    resolver = resolver or Resolver(config, observer=PROMETHEUS)
    server = grpc.aio.server(
        interceptors=admin.interceptors if admin is not None else None,
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
            # Request headers past this are refused by gRPC itself (RESOURCE_EXHAUSTED).
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ],
    )
    servicer = UpstreamServicer(resolver, PROMETHEUS, audit_log=AuditLines())
    pb_grpc.add_UpstreamServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    admin_services = admin.register(server) if admin is not None else []
    # Reflection as v1 and v1alpha (runtime/reflection.py adds both reflection services).
    enable_reflection(
        server,
        [SERVICE_NAME, *admin_services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
    )
    if admin is not None and admin.credentials is not None:
        port = server.add_secure_port(listen, admin.credentials)
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health.set("", serving)
    await health.set(SERVICE_NAME, serving)
    for name in admin_services:
        await health.set(name, serving)
    return RunningServer(server, port, resolver, health, admin)


async def serve(
    config: Config,
    listen: str,
    *,
    reuse_port: bool = False,
    admin_options: admin_setup.AdminOptions | None = None,
) -> None:
    resolver = Resolver(config, observer=PROMETHEUS)
    admin = None
    if admin_options is not None:
        try:
            admin = await admin_setup.start_admin(admin_options, config, resolver)
        except Exception as exc:
            log.error("cannot start the admin store", extra={"error": str(exc)[:300]})
            await resolver.aclose()
            raise SystemExit(2) from None
    running = await start_server(
        config, listen, resolver=resolver, reuse_port=reuse_port, admin=admin
    )
    settings = config.settings
    log.info(
        "serving",
        extra={
            "listen": listen,
            "port": running.port,
            "config": config.source,
            "token_cache": running.resolver.cache.name,
            "upstreams": len(running.resolver.config.upstreams),
            "registries": len(running.resolver.config.registries),
            **(admin.describe() if admin is not None else {}),
        },
    )
    # Everything built so far (protobuf descriptors, config, the gRPC server) lives as long
    # as the process: move it out of the collector's way, so full collections stay cheap.
    gc.collect()
    gc.freeze()
    nagging = _warn_if_unauthenticated(admin_options, listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    if nagging is not None:
        nagging.cancel()
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await running.stop(settings.shutdown_grace_seconds)
    log.info("stopped")


def _warn_if_unauthenticated(
    options: admin_setup.AdminOptions | None, listen: str
) -> asyncio.Task[None] | None:
    """With --allow-unauthenticated where it matters: a warning now and every hour."""
    exposures = admin_setup.open_exposures(options or admin_setup.AdminOptions(), listen)
    if not exposures:
        return None
    admin_setup.warn_unauthenticated(exposures)
    return asyncio.create_task(
        admin_setup.keep_warning_unauthenticated(exposures), name="unauthenticated-warning"
    )


def _version() -> str:
    """The installed distribution's version (pyproject.toml is its one definition)."""
    try:
        return importlib.metadata.version("vregistry-server")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def parse_args(
    argv: Sequence[str] | None = None, prog: str = "vregistry-server"
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="gRPC service that resolves container-registry upstreams for a virtual registry.",
        epilog=f"vregistry-server {CHECK_CONFIG} [the same flags]: check the configuration "
        "(and the callers file, TLS files and flags) as at start, print a summary and exit "
        "0, or print the reason and exit 2, without serving.",
    )
    env = os.environ
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--config",
        default=env.get("VREGISTRY_CONFIG"),
        help="YAML config file (env VREGISTRY_CONFIG); default: the embedded example",
    )
    parser.add_argument(
        "--listen",
        default=env.get("VREGISTRY_LISTEN"),
        help="HOST:PORT to listen on (env VREGISTRY_LISTEN; default 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--redis-url",
        default=env.get("VREGISTRY_REDIS_URL"),
        help="Redis URL for the shared token cache (env VREGISTRY_REDIS_URL); default: in memory",
    )
    parser.add_argument(
        "--metrics-listen",
        default=env.get("VREGISTRY_METRICS_LISTEN"),
        help="HOST:PORT for the Prometheus /metrics endpoint (env VREGISTRY_METRICS_LISTEN); default: off",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(env.get("VREGISTRY_WORKERS", "1")),
        help="server processes sharing the port with SO_REUSEPORT (env VREGISTRY_WORKERS; "
        "default 1); with --metrics-listen, worker i serves metrics on that port + i",
    )
    parser.add_argument(
        "--loop",
        default=env.get("VREGISTRY_LOOP", "asyncio"),
        choices=["asyncio", "uvloop"],
        help="event loop (env VREGISTRY_LOOP; default asyncio); uvloop needs the "
        "'uvloop' extra installed",
    )
    parser.add_argument(
        "--otel",
        default=env.get("VREGISTRY_OTEL", "off"),
        choices=["off", "console", "otlp"],
        help="OpenTelemetry tracing of every RPC (env VREGISTRY_OTEL; default off); needs the "
        "'otel' extra",
    )
    parser.add_argument(
        "--log-level",
        default=env.get("VREGISTRY_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log level (env VREGISTRY_LOG_LEVEL)",
    )
    admin_setup.add_arguments(parser, env)
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> Config:
    if args.config:
        config = load_config(args.config)
    else:
        text = resources.files("vregistry_server").joinpath("default_config.yaml").read_text()
        config = build_config(yaml.safe_load(text), source="<embedded default config>")
    if args.redis_url:
        try:
            parse_redis_url(args.redis_url)  # the file's settings.redis_url: config.py checks it
        except ValueError as exc:
            raise ConfigError(f"--redis-url (env VREGISTRY_REDIS_URL): {exc}") from None
    settings = dataclasses.replace(
        config.settings,
        listen=args.listen or config.settings.listen,
        redis_url=args.redis_url or config.settings.redis_url,
    )
    return dataclasses.replace(config, settings=settings)


class StartupError(Exception):
    """The server cannot start as asked (exit code 2); the message says why."""


def prepare(args: argparse.Namespace) -> tuple[Config, admin_setup.AdminOptions]:
    """Every check made at start before anything is served: the config, the callers file, the
    admin and TLS flags, workers, fail-closed. ``main`` and ``check-config`` both run it, so
    both refuse the same things with the same messages."""
    try:
        config = load(args)
    except ConfigError as exc:
        raise StartupError(f"invalid configuration:\n{exc}") from None
    try:
        admin_options = admin_setup.options_from_args(args, config)
    except admin_setup.AdminSetupError as exc:
        raise StartupError(str(exc)) from None
    if args.workers < 1:
        raise StartupError("--workers must be at least 1")
    if args.workers > 1 and admin_options.store == "memory":
        # Each worker is its own process with its own MemoryStore: a ConfigService write
        # would reach the one worker that took the call, and the others keep serving the
        # old configuration.
        raise StartupError(
            f"--store memory cannot be used with --workers {args.workers}: "
            "every worker would keep its own configuration and a ConfigService change would "
            "reach only one of them; use --store sqlite --data-dir DIR or --store redis "
            "(shared by all workers), or --workers 1"
        )
    try:
        # Before any port is bound or any worker forked.
        admin_setup.check_fail_closed(admin_options, config.settings.listen)
    except admin_setup.AdminSetupError as exc:
        raise StartupError(str(exc)) from None
    if args.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise StartupError("--loop uvloop needs the uvloop package")
    return config, admin_options


def check_config(argv: Sequence[str]) -> int:
    """``vregistry-server check-config [flags]``: the start-up checks (``prepare``) with the
    same flags and environment, then exit: 0 with a summary on stdout, 2 with the message
    start-up would print. Nothing is served and no port is opened (like ``nginx -t``)."""
    args = parse_args(argv, prog=f"vregistry-server {CHECK_CONFIG}")
    configure_logging(args.log_level)
    try:
        config, admin_options = prepare(args)
    except StartupError as exc:
        print(f"vregistry-server: {exc}", file=sys.stderr)
        return 2
    # --otel needs its extra, as at start (nothing is exported: no span is ever made here).
    # --metrics-listen is not bound: binding it is the only check start-up makes of it.
    if not _start_tracing(args.otel):
        return 2
    callers = admin_options.callers
    print(
        f"vregistry-server: configuration OK: {config.source}: "
        f"upstreams {len(config.upstreams)}, registries {len(config.registries)}; "
        f"listen {config.settings.listen}; "
        f"token cache {'redis' if config.settings.redis_url else 'memory'}; "
        f"store {admin_options.store or 'off'}; tls {admin_options.tls_mode}; "
        f"callers {f'{args.callers_file} ({len(callers)})' if callers is not None else 'off'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == [CHECK_CONFIG]:
        return check_config(arguments[1:])
    args = parse_args(arguments)
    configure_logging(args.log_level)
    try:
        config, admin_options = prepare(args)
    except StartupError as exc:
        print(f"vregistry-server: {exc}", file=sys.stderr)
        return 2
    if args.workers == 1:
        if not _start_metrics(args.metrics_listen, 0) or not _start_tracing(args.otel):
            return 2
        _run(serve(config, config.settings.listen, admin_options=admin_options), args.loop)
        return 0
    # Fork before any gRPC object (or metrics thread) exists; each worker builds its own.
    try:
        reserved, listen = reserve_port(config.settings.listen)
    except (OSError, ValueError) as exc:
        print(
            f"vregistry-server: cannot listen on {config.settings.listen}: {exc}", file=sys.stderr
        )
        return 2

    def worker(index: int) -> int:
        if not _start_metrics(args.metrics_listen, index) or not _start_tracing(args.otel):
            return 2
        _run(serve(config, listen, reuse_port=True, admin_options=admin_options), args.loop)
        return 0

    try:
        return run_workers(
            args.workers, worker, grace_seconds=config.settings.shutdown_grace_seconds
        )
    finally:
        if reserved is not None:
            reserved.close()


def _start_tracing(exporter: str) -> bool:
    if exporter == "off":
        return True
    try:
        enable_tracing(exporter)
    except TracingUnavailable as exc:
        print(f"vregistry-server: {exc}", file=sys.stderr)
        return False
    log.info("tracing enabled", extra={"exporter": exporter})
    return True


def _start_metrics(metrics_listen: str | None, offset: int) -> bool:
    if not metrics_listen:
        return True
    if offset:
        host, port = split_listen(metrics_listen)
        metrics_listen = f"{host}:{port + offset}"
    try:
        port = serve_metrics(metrics_listen)
    except (OSError, ValueError) as exc:
        print(f"vregistry-server: cannot serve metrics on {metrics_listen}: {exc}", file=sys.stderr)
        return False
    log.info("serving metrics", extra={"listen": metrics_listen, "port": port})
    return True


def _run(coro: Coroutine[Any, Any, None], loop: str) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        factory = importlib.import_module("uvloop").new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


if __name__ == "__main__":
    sys.exit(main())
