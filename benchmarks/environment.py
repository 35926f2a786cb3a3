"""The world the benchmark runs in: real Redis, a real token registry, proxies, processes.

Everything comes from the test suite's fixtures (``tests.support``) and listens on
127.0.0.1 only: redis-server, Debian's docker-registry with token auth, the token
server, and the counting proxy in front of each upstream; the three upstreams "200 ms
away" are ``benchmarks.delay_proxy`` processes (asyncio, a keep-alive pool to the backend),
so that their own tail is not the benchmark process's threads'.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.delay_proxy import DelayProxy, start_delay_proxy  # noqa: E402
from benchmarks.procstat import process_tree  # noqa: E402
from tests.support.httpserver import QuietServer  # noqa: E402
from tests.support.processes import (  # noqa: E402
    ManagedProcess,
    RedisServer,
    free_port,
    start_redis,
)
from tests.support.proxy import Proxy, start_proxy  # noqa: E402
from tests.support.registry import RegistryServer, start_registry  # noqa: E402
from tests.support.token_server import TokenServer, start_token_server  # noqa: E402
from vregistry.v1 import upstream_service_pb2 as pb  # noqa: E402
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc  # noqa: E402

USER = "bob"
PASSWORD = "s3cret-token-pw"
PASSWORD_ENV = "VREG_BENCH_PASSWORD"
RESOLVE_DELAY_SECONDS = 0.2
# The resolve proxies answer 200 ms after the request, the local registry's own time inside
# those 200 ms (``delay_proxy --overlap``): under the cold load's bursts that time reaches
# ~100 ms at p99 on this machine, the registry's CPU and not the upstream's distance. It is
# still reported (``upstream_backend_p99_ms``).
RESOLVE_OVERLAP = True
HOT_PATH = "private/app/manifests/v1"


@dataclass
class Environment:
    redis: RedisServer
    token_server: TokenServer
    registry: RegistryServer  # token auth, holds private/app:v1 and public/alpine:latest
    empty_registry: RegistryServer  # token auth, holds nothing: the first upstream misses
    hot_proxy: Proxy  # counting only, in front of ``registry``
    cold_proxy: Proxy  # counting only: pings of the cold-cache scenarios
    resolve_proxies: list[DelayProxy]  # one process per upstream of "chain", 200 ms each
    workdir: Path

    def config(
        self, name: str, *, near_cache_seconds: float = 5.0, token_ttl_seconds: float = 180.0
    ) -> Path:
        def upstream(upstream_id: str, url: str) -> dict[str, Any]:
            return {
                "id": upstream_id,
                "name": f"Bench {upstream_id}",
                "url": url,
                "allow_http": True,
                "username": USER,
                "password_env": PASSWORD_ENV,
            }

        r1, r2, r3 = self.resolve_proxies
        data = {
            "settings": {
                "redis_url": self.redis.url,
                "token_near_cache_seconds": near_cache_seconds,
                "token_cache_max_ttl_seconds": token_ttl_seconds,
                "shutdown_grace_seconds": 2,
            },
            "upstreams": [
                upstream("hot", self.hot_proxy.url),
                upstream("cold", self.cold_proxy.url),
                upstream("r1", r1.url),
                upstream("r2", r2.url),
                upstream("r3", r3.url),
            ],
            "registries": [{"id": "chain", "name": "Chain", "upstreams": ["r1", "r2", "r3"]}],
        }
        path = self.workdir / f"config-{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def upstream_marks(self) -> list[int]:
        """How many requests each of the resolve proxies has recorded so far."""
        return [proxy.request_count for proxy in self.resolve_proxies]

    def upstream_latency_since(self, marks: list[int]) -> dict[str, float]:
        """The resolve proxies' requests since ``marks`` and the p50/p99 of their own time
        per request: from the request read to the answer written, the 200 ms delay included;
        and of the backend's time (the request forwarded to its answer read).

        The proxies share the machine's cores with the service and the load generator;
        their tail is part of every cold call's tail, and not the service's doing. Empty
        when no request went through them.
        """
        records = [
            record
            for proxy, mark in zip(self.resolve_proxies, marks, strict=True)
            for record in proxy.records_since(mark)
        ]
        done = [record for record in records if record.duration > 0]
        if not done:
            return {}
        durations = sorted(record.duration * 1000 for record in done)
        backend = sorted((record.answered - record.forwarded) * 1000 for record in done)
        return {
            "upstream_proxy_requests": len(records),
            "upstream_proxy_p50_ms": round(durations[len(durations) // 2], 1),
            "upstream_proxy_p99_ms": round(durations[int(len(durations) * 0.99)], 1),
            "upstream_backend_p50_ms": round(backend[len(backend) // 2], 1),
            "upstream_backend_p99_ms": round(backend[int(len(backend) * 0.99)], 1),
        }

    def flush_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis.url)
        try:
            client.flushdb()
        finally:
            client.close()

    def redis_commands(self) -> int:
        """Commands Redis has executed so far (``INFO commandstats``, without INFO itself)."""
        import redis

        client = redis.Redis.from_url(self.redis.url)
        try:
            stats: dict[str, Any] = client.info("commandstats")
        finally:
            client.close()
        return sum(
            int(v["calls"])
            for k, v in stats.items()
            if k not in {"cmdstat_info", "cmdstat_flushdb"}
        )


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does: by an exception in the main thread, so that every
    process started under ``environment`` is stopped on the way out. Python's default for
    SIGTERM kills at once, and the service, the baseline, Redis and the registries stayed
    behind (the delaying proxies alone notice their parent's end)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def environment(workdir: Path) -> Iterator[Environment]:
    with _stopped_by_sigterm():
        yield from _environment(workdir)


def _environment(workdir: Path) -> Iterator[Environment]:
    workdir.mkdir(parents=True, exist_ok=True)
    # socketserver's listen backlog is 5: under load the kernel drops SYNs past it and the
    # client retransmits a second later, which would show up as the proxies' tail latency
    # rather than the service's. The benchmark's own fixtures get a real backlog.
    QuietServer.request_queue_size = 1024
    redis = start_redis()
    token_server = start_token_server(users={USER: PASSWORD}, public_prefixes=("public/",))
    registry: RegistryServer | None = None
    empty: RegistryServer | None = None
    proxies: list[Proxy | DelayProxy] = []
    try:
        registry = start_registry("token", users={USER: PASSWORD}, token_server=token_server)
        registry.push_image("private/app", "v1", kind="docker")
        registry.push_image("public/alpine", "latest", kind="docker")
        empty = start_registry("token", users={USER: PASSWORD}, token_server=token_server)
        hot = start_proxy(registry.url)
        cold = start_proxy(registry.url)
        proxies = [hot, cold]
        resolve: list[DelayProxy] = []
        for backend in (empty, registry, registry):
            resolve.append(
                start_delay_proxy(backend.url, RESOLVE_DELAY_SECONDS, overlap=RESOLVE_OVERLAP)
            )
            proxies.append(resolve[-1])
        token_server.reset()
        yield Environment(redis, token_server, registry, empty, hot, cold, resolve, workdir)
    finally:
        for proxy in proxies:
            proxy.stop()
        for server in (empty, registry):
            if server is not None:
                server.close()
        token_server.close()
        redis.close()


# --------------------------------------------------------------------------- server processes


@dataclass
class ServerProcess:
    """The service or the baseline, run as a subprocess on a fixed port."""

    name: str
    argv: list[str]
    port: int
    workers: int
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: ManagedProcess | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.pid is not None
        return self.process.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def start(self) -> ServerProcess:
        self.process = ManagedProcess(
            self.name,
            self.argv,
            port=self.port,
            log_dir=self.log_dir,
            cwd=ROOT,
            env={**os.environ, **self.env},
        )
        self.process.start(timeout=30.0, ready=self._ready)
        return self

    def _ready(self) -> bool:
        if len(self.pids()) < (self.workers + 1 if self.workers > 1 else 1):
            return False
        try:
            with grpc.insecure_channel(self.target) as channel:
                stub = pb_grpc.UpstreamServiceStub(channel)
                # Every worker must answer: a few fresh connections spread over them.
                stub.UrlFor(pb.UrlForRequest(upstream_id="hot", path=""), timeout=2)
        except grpc.RpcError as exc:
            return exc.code() is not grpc.StatusCode.UNAVAILABLE
        if self.workers > 1:
            time.sleep(1.0)
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10.0)


def service_process(
    config: Path,
    log_dir: Path,
    *,
    name: str = "service",
    workers: int = 1,
    loop: str = "asyncio",
    extra: Sequence[str] = (),
) -> ServerProcess:
    port = free_port()
    server = str(ROOT / ".venv" / "bin" / "vregistry-server")
    if not Path(server).exists():
        server = "vregistry-server"
    argv = [
        server,
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--loop",
        loop,
        "--log-level",
        "info",
        *extra,
    ]
    return ServerProcess(name, argv, port, workers, log_dir, {PASSWORD_ENV: PASSWORD})


def baseline_process(
    log_dir: Path, sizes: dict[str, int], *, workers: int = 1, loop: str = "asyncio"
) -> ServerProcess:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "benchmarks.baseline_server",
        "--listen",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--loop",
        loop,
        "--url-bytes",
        str(sizes["UrlFor"]),
        "--auth-bytes",
        str(sizes["GetAuthHeaders"]),
        "--resolve-bytes",
        str(sizes["ResolveUpstream"]),
    ]
    return ServerProcess(f"baseline-w{workers}-{loop}", argv, port, workers, log_dir)


def response_sizes(target: str) -> dict[str, int]:
    """The real server's response sizes for the benchmark's requests (the baseline mimics them)."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.UpstreamServiceStub(channel)
        url = stub.UrlFor(pb.UrlForRequest(upstream_id="hot", path=HOT_PATH), timeout=10)
        auth = stub.GetAuthHeaders(
            pb.GetAuthHeadersRequest(upstream_id="hot", path=HOT_PATH), timeout=10
        )
        request = pb.ResolveUpstreamRequest(registry_id="chain", path=HOT_PATH)
        stub.ResolveUpstream(request, timeout=10)  # fills the resolution cache
        # The cached answer (URL by digest, cache_hit, checked_at): what the hot scenario gets.
        resolve = stub.ResolveUpstream(request, timeout=10)
    return {
        "UrlFor": url.ByteSize(),
        "GetAuthHeaders": auth.ByteSize(),
        "ResolveUpstream": resolve.ByteSize(),
    }
