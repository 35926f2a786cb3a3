"""The floor of a cold ResolveUpstream in Python on this machine, beside the service.

The issue-11 target for a cold ResolveUpstream (three upstreams 200 ms away, 16 calls in
flight) is at most 2 ms of server CPU per call. Whether any Python gRPC server can do that
here is a question of this machine as much as of our code: on a VM every wake-up is dear
(``benchmarks/idle_penalty.py``). So this measures the least such a server can do: a bare
grpc.aio server (``serve`` below) whose ResolveUpstream sends the same three HEADs as the
service, with the same Accept and a bearer token fetched once at start, over keep-alive
connections (an ``asyncio.Protocol`` and llhttp, nothing else), checks that the first upstream
misses and the second has the manifest, and answers a constant response of the service's size;
``floor+redis`` also writes one Redis SET per call (raw RESP on one connection), as the
service writes each answer to the resolution cache. No validation, no retries, no budgets, no
egress checks, no metrics, no audit line, no circuit breakers: the protocol work alone.

The service, the floors and the bare baseline (whose ResolveUpstream answers at once) run in
the benchmark's environment (``benchmarks/environment.py``) under the cold scenario's load,
in interleaved rounds (``benchmarks.ab``'s measurement: server CPU per call from /proc);
``--variant NAME=DIR`` adds copies of ``vregistry_server`` (as ``benchmarks.ab``'s), e.g. with
one layer taken out, to see what each layer costs against the floor.

    .venv/bin/python -m benchmarks.cold_floor [--rounds 4 --calls 800] [--variant NAME=DIR]

Results: every round and the medians on stdout, ``benchmarks/out/cold-floor-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import grpc
import httptools
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import ab  # noqa: E402
from benchmarks.baseline_server import padded  # noqa: E402
from benchmarks.environment import (  # noqa: E402
    HOT_PATH,
    PASSWORD,
    USER,
    Environment,
    ServerProcess,
    baseline_process,
    environment,
    response_sizes,
    service_process,
)
from tests.support.processes import free_port  # noqa: E402
from vregistry.v1 import upstream_service_pb2 as pb  # noqa: E402
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc  # noqa: E402
from vregistry_server.oci.probe import MANIFEST_ACCEPT  # noqa: E402

SCOPE = "repository:" + HOT_PATH.split("/manifests/")[0] + ":pull"


# --------------------------------------------------------------------------- the floor server


class _HeadConnection(asyncio.Protocol):
    """One keep-alive connection answering HEADs: the status of each, nothing else."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.pool: list[_HeadConnection] = []  # the idle connections it returns to

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        # llhttp is not told the method: a HEAD answer ends at its head, whatever its length.
        status = self.parser.get_status_code()
        self.parser = httptools.HttpResponseParser(self)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:  # closed while idle (the proxy's keep-alive timeout)
            self.pool.remove(self)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("upstream closed the connection"))


class _Upstream:
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self.netloc = parts.netloc
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = self._request(_bearer_token(url))
        self.idle: list[_HeadConnection] = []

    def _request(self, token: str) -> bytes:
        return (
            f"HEAD /v2/{HOT_PATH} HTTP/1.1\r\nHost: {self.netloc}\r\n"
            f"Accept: {MANIFEST_ACCEPT}\r\nAuthorization: Bearer {token}\r\n"
            "User-Agent: cold-floor\r\n\r\n"
        ).encode()

    async def head(self) -> int:
        status = await self._head()
        if status == 401:  # the token expired (the token server's tokens last 300 s): renew
            self.request = self._request(await asyncio.to_thread(_bearer_token, self.url))
            status = await self._head()
        return status

    async def _head(self) -> int:
        loop = asyncio.get_running_loop()
        if self.idle:
            connection = self.idle.pop()
        else:
            _, connection = await loop.create_connection(_HeadConnection, self.host, self.port)
            connection.pool = self.idle
        connection.waiter = loop.create_future()
        assert connection.transport is not None
        connection.transport.write(self.request)
        status = await connection.waiter
        self.idle.append(connection)
        return status


class _RedisSet:
    """SET key value EX 3600 on one connection, one command at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.lock = asyncio.Lock()

    async def set(self, key: bytes, value: bytes) -> None:
        async with self.lock:
            if self.streams is None:
                self.streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self.streams
            writer.write(
                b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nEX\r\n$4\r\n3600\r\n"
                % (len(key), key, len(value), value)
            )
            reply = await reader.readline()
            if not reply.startswith(b"+OK"):
                raise RuntimeError(f"redis answered {reply!r}")


class FloorServicer(pb_grpc.UpstreamServiceServicer):  # type: ignore[misc]
    def __init__(self, upstreams: list[_Upstream], size: int, redis: _RedisSet | None) -> None:
        self._upstreams = upstreams
        self._redis = redis
        answer = padded(
            lambda pad: pb.ResolveUpstreamResponse(url="https://r.example/v2/" + pad, size=1),
            size,
        )
        self._url: str = answer.url  # type: ignore[attr-defined]
        self._value = answer.SerializeToString()  # an answer's worth of bytes for Redis

    async def ResolveUpstream(
        self, request: pb.ResolveUpstreamRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveUpstreamResponse:
        statuses = await asyncio.gather(*(upstream.head() for upstream in self._upstreams))
        if statuses[:2] != [404, 200]:
            raise RuntimeError(
                f"expected the first upstream to miss, the second to hit: {statuses}"
            )
        if self._redis is not None:
            await self._redis.set(b"floor:" + request.path.encode(), self._value)
        return pb.ResolveUpstreamResponse(url=self._url, size=1)


def _bearer_token(url: str) -> str:
    """A pull token for ``SCOPE`` from the realm the upstream's challenge names."""
    challenge = httpx.get(f"{url}/v2/").headers["www-authenticate"]
    params = dict(
        part.split("=", 1) for part in challenge.split(" ", 1)[1].replace('"', "").split(",")
    )
    reply = httpx.get(
        params["realm"],
        params={"service": params["service"], "scope": SCOPE},
        auth=(USER, PASSWORD),
    )
    reply.raise_for_status()
    return str(reply.json()["token"])


async def _serve(args: argparse.Namespace) -> None:
    upstreams = [_Upstream(url) for url in args.upstream]
    redis = None
    if args.redis:
        host, _, port = args.redis.rpartition(":")
        redis = _RedisSet(host, int(port))
    server = grpc.aio.server()
    servicer = FloorServicer(upstreams, args.resolve_bytes, redis)
    pb_grpc.add_UpstreamServiceServicer_to_server(servicer, server)
    server.add_insecure_port(args.listen)
    await server.start()
    gc.collect()
    gc.freeze()  # as the service does after its start
    await server.wait_for_termination()


# --------------------------------------------------------------------------- the comparison


def _floor_process(env: Environment, logs: Path, size: int, *, redis: bool) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.cold_floor", "serve",
            "--listen", f"127.0.0.1:{port}", "--resolve-bytes", str(size)]  # fmt: skip
    for proxy in env.resolve_proxies:
        argv += ["--upstream", proxy.url]
    if redis:
        argv += ["--redis", urllib.parse.urlsplit(env.redis.url).netloc.rsplit("@", 1)[-1]]
    name = "floor-redis" if redis else "floor"
    return ServerProcess(name, argv, port, 1, logs)


def _compare(args: argparse.Namespace) -> int:
    measure = argparse.Namespace(scenario="cold", calls=args.calls, rps=None, in_flight=None)
    work = ab.OUT / "cold-floor"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rounds: dict[str, list[dict[str, float]]] = {}
    with environment(work) as env:
        servers: dict[str, ServerProcess] = {}
        try:
            servers["service"] = service_process(env.config("floor"), logs).start()
            for name, start in ab.variant_starters(args, env.config("floor"), logs).items():
                servers[name] = start()
            sizes = response_sizes(servers["service"].target)
            size = sizes["ResolveUpstream"]
            starters: dict[str, Callable[[], ServerProcess]] = {
                "floor": lambda: _floor_process(env, logs, size, redis=False).start(),
                "floor+redis": lambda: _floor_process(env, logs, size, redis=True).start(),
                "baseline": lambda: baseline_process(logs, sizes).start(),
            }
            for name, start in starters.items():
                servers[name] = start()
            for number in range(args.rounds):
                order = list(servers) if number % 2 == 0 else list(reversed(servers))
                for name in order:
                    row = ab.measure_round(servers[name], measure, work)
                    rounds.setdefault(name, []).append(row)
                    print(f"round {number + 1} {name}: {row['us_per_call']:.0f} µs/call, "
                          f"{row['rps']:.0f} req/s, p99 {row['p99_ms']:.1f} ms, "
                          f"errors {row['errors']:.0f}", flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
    for name, rows in rounds.items():
        cpu = [round(r["us_per_call"]) for r in rows]
        p99 = [round(r["p99_ms"], 1) for r in rows]
        print(f"{name}: median {statistics.median(cpu):.0f} µs/call (rounds {cpu}), p99 ms {p99}")
    path = ab.OUT / f"cold-floor-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "rounds": rounds}, indent=1))
    print(f"wrote {path}")
    errors = sum(r["errors"] for rows in rounds.values() for r in rows)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=800, help="measured calls per round")
    parser.add_argument(
        "--variant", action="append", default=[],
        help="NAME=DIR: also a copy of vregistry_server from DIR (as benchmarks.ab's)",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the floor server (started by the comparison)")
    serve.add_argument("--listen", required=True)
    serve.add_argument("--upstream", action="append", required=True)
    serve.add_argument("--resolve-bytes", type=int, required=True)
    serve.add_argument("--redis", default="", help="HOST:PORT: one SET per call")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args))
        return 0
    return _compare(args)


if __name__ == "__main__":
    sys.exit(main())
