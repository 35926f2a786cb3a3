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
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import grpc
import yaml
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.config import Config, ConfigError, build_config, load_config
from vregistry_server.logs import configure_logging
from vregistry_server.resolver import Resolver
from vregistry_server.servicer import UpstreamServicer

log = logging.getLogger("vregistry_server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["UpstreamService"].full_name
MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    resolver: Resolver
    health: health_aio.HealthServicer

    async def stop(self, grace: float | None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace`` seconds, then close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.resolver.aclose()


async def start_server(
    config: Config, listen: str, *, resolver: Resolver | None = None, reuse_port: bool = False
) -> RunningServer:
    """Build and start the server; ``listen`` may use port 0 for a free port."""
    resolver = resolver or Resolver(config)
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
        ]
    )
    pb_grpc.add_UpstreamServiceServicer_to_server(UpstreamServicer(resolver), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health.set("", serving)
    await health.set(SERVICE_NAME, serving)
    return RunningServer(server, port, resolver, health)


async def serve(config: Config, listen: str) -> None:
    running = await start_server(config, listen)
    settings = config.settings
    log.info(
        "serving",
        extra={
            "listen": listen,
            "port": running.port,
            "config": config.source,
            "token_cache": running.resolver.cache.name,
            "upstreams": len(config.upstreams),
            "registries": len(config.registries),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await running.stop(settings.shutdown_grace_seconds)
    log.info("stopped")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vregistry-server",
        description="gRPC service that resolves container-registry upstreams for a virtual registry.",
    )
    env = os.environ
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
        "--log-level",
        default=env.get("VREGISTRY_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log level (env VREGISTRY_LOG_LEVEL)",
    )
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> Config:
    if args.config:
        config = load_config(args.config)
    else:
        text = resources.files("vregistry_server").joinpath("default_config.yaml").read_text()
        config = build_config(yaml.safe_load(text), source="<embedded default config>")
    settings = dataclasses.replace(
        config.settings,
        listen=args.listen or config.settings.listen,
        redis_url=args.redis_url or config.settings.redis_url,
    )
    return dataclasses.replace(config, settings=settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"vregistry-server: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, config.settings.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
