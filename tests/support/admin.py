"""Start an in-process vregistry server with the admin features, and talk to it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import config_service_pb2_grpc as cpb_grpc
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.admin.callers import Callers
from vregistry_server.admin.crypto import Keyring, generate_key_line
from vregistry_server.config import build_config
from vregistry_server.model import Config
from vregistry_server.resolver import Resolver
from vregistry_server.runtime.admin_setup import AdminOptions, start_admin
from vregistry_server.runtime.main import RunningServer, start_server
from vregistry_server.runtime.metrics import PROMETHEUS

# The fixtures (registries, token server) all listen on loopback; an upstream created
# through ConfigService reaches only public addresses unless the operator lists the range
# (oci/egress.py), as an operator running everything on one host would.
LOOPBACK_EGRESS = ["127.0.0.0/8"]
FIXTURE_REALM_HOSTS = ("127.0.0.1",)


def empty_config(**settings: Any) -> Config:
    settings.setdefault("egress_allow_cidrs", LOOPBACK_EGRESS)
    return build_config({"settings": settings}, source="test-empty")


def new_keyring(*key_ids: str) -> tuple[Keyring, str]:
    text = "\n".join(generate_key_line(k) for k in (key_ids or ("k1",)))
    return Keyring.parse(text), text


@dataclass
class AdminService:
    running: RunningServer
    channel: grpc.aio.Channel
    admin: Any = field(repr=False)
    resolve_stub: Any = field(repr=False)

    @property
    def resolver(self) -> Resolver:
        return self.running.resolver

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def manager(self) -> Any:
        assert self.running.admin is not None
        return self.running.admin.manager

    async def create_upstream(
        self, upstream_id: str, url: str, group: str = "g1", **fields: Any
    ) -> cpb.UpstreamConfig:
        fields.setdefault("display_name", f"Upstream {upstream_id}")
        # The fixtures' token server is on 127.0.0.1 at another port than the registry: the
        # realm rule compares ports for API upstreams, so the host is allow-listed (any port).
        fields.setdefault("realm_allow_hosts", list(FIXTURE_REALM_HOSTS))
        fields.setdefault("allow_http", url.startswith("http://"))
        reply = await self.admin.CreateUpstream(
            cpb.CreateUpstreamRequest(
                parent=f"groups/{group}",
                upstream_id=upstream_id,
                upstream=cpb.UpstreamConfig(url=url, **fields),
            ),
            timeout=10,
        )
        return reply.upstream

    async def create_registry(self, registry_id: str, group: str = "g1") -> cpb.RegistryConfig:
        reply = await self.admin.CreateRegistry(
            cpb.CreateRegistryRequest(
                parent=f"groups/{group}",
                registry_id=registry_id,
                registry=cpb.RegistryConfig(display_name=f"Registry {registry_id}"),
            ),
            timeout=10,
        )
        return reply.registry

    async def add(
        self, registry: str, upstream: str, position: int = 0, group: str = "g1", etag: str = ""
    ) -> cpb.RegistryConfig:
        reply = await self.admin.AddUpstream(
            cpb.AddUpstreamRequest(
                registry=f"groups/{group}/registries/{registry}",
                upstream=f"groups/{group}/upstreams/{upstream}",
                position=position,
                etag=etag,
            ),
            timeout=10,
        )
        return reply.registry

    async def update_upstream(
        self, name: str, paths: Sequence[str], etag: str = "", **fields: Any
    ) -> cpb.UpstreamConfig:
        reply = await self.admin.UpdateUpstream(
            cpb.UpdateUpstreamRequest(
                upstream=cpb.UpstreamConfig(name=name, etag=etag, **fields),
                update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
            ),
            timeout=10,
        )
        return reply.upstream

    async def close(self) -> None:
        await self.channel.close()
        await self.running.stop(0)


async def start_admin_service(
    config: Config | None = None,
    *,
    store: str = "memory",
    data_dir: Path | None = None,
    redis_url: str | None = None,
    keyring: Keyring | None = None,
    callers: Callers | None = None,
    credentials: Any = None,
    seed: bool = False,
    channel: grpc.aio.Channel | None = None,
    allow_unauthenticated: bool | None = None,
) -> AdminService:
    """ConfigService in-process on 127.0.0.1.

    The server refuses ConfigService without caller authentication
    (admin_setup.check_fail_closed); tests about the admin API itself rather than about
    caller auth run it open with the explicit opt-out, as an operator would with
    ``--allow-unauthenticated``: ``allow_unauthenticated`` defaults to "no callers given".
    """
    config = config or empty_config()
    if allow_unauthenticated is None:
        allow_unauthenticated = callers is None
    options = AdminOptions(
        store=store,
        data_dir=data_dir,
        store_redis_url=redis_url,
        keyring=keyring,
        callers=callers,
        credentials=credentials,
        tls_mode="tls" if credentials is not None else "off",
        seed=seed,
        allow_unauthenticated=allow_unauthenticated,
    )
    resolver = Resolver(config, observer=PROMETHEUS)
    runtime = await start_admin(options, config, resolver)
    running = await start_server(config, "127.0.0.1:0", resolver=resolver, admin=runtime)
    channel = channel or grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return AdminService(
        running, channel, cpb_grpc.ConfigServiceStub(channel), pb_grpc.UpstreamServiceStub(channel)
    )


class CapturedLogs(logging.Handler):
    """Every record formatted with the server's JSON formatter, to search for leaks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        from vregistry_server.runtime.logs import JsonFormatter

        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        # the raw message and args too, before redaction
        self.lines.append(str(record.msg) + " " + repr(record.args) + " " + repr(vars(record)))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.asynccontextmanager
async def redis_replicas(redis_url: str) -> AsyncIterator[tuple[AdminService, AdminService]]:
    """Two admin replicas sharing one ``--store redis`` (one keyring), closed after."""
    keyring, _ = new_keyring("shared")
    a = await start_admin_service(store="redis", redis_url=redis_url, keyring=keyring)
    b = await start_admin_service(store="redis", redis_url=redis_url, keyring=keyring)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
