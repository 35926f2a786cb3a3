"""The baseline: a bare grpc.aio server for vregistry.v1.UpstreamService.

Each method returns a fixed response of the size the real server answers with
(given on the command line, measured by the benchmark), built per call from
constants: no validation, no cache, no I/O. It has the real server's process
layout (``--workers N`` forks before any gRPC object exists and shares the port
with SO_REUSEPORT; ``--loop uvloop``) and its message-size options, so the
ratio service/baseline is what the service's own work costs.

    python -m benchmarks.baseline_server --listen 127.0.0.1:50099 --auth-bytes 700
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc
from vregistry_server.runtime.workers import reserve_port, run_workers

MAX_MESSAGE_BYTES = 1024 * 1024


def padded(build: Callable[[str], Message], size: int) -> Message:
    """``build(pad)`` with the pad's length chosen so the message is ``size`` bytes."""
    length = 0
    for _ in range(8):
        message = build("x" * length)
        missing = size - message.ByteSize()
        if missing == 0:
            return message
        length = max(0, length + missing)
    return build("x" * length)


class BaselineServicer(pb_grpc.UpstreamServiceServicer):  # type: ignore[misc]
    def __init__(self, url_bytes: int, auth_bytes: int, resolve_bytes: int) -> None:
        url = padded(lambda pad: pb.UrlForResponse(url="https://r.example/v2/" + pad), url_bytes)
        auth = padded(
            lambda pad: pb.GetAuthHeadersResponse(
                headers={"Authorization": "Bearer " + pad}, cache_hit=True, scheme="bearer"
            ),
            auth_bytes,
        )
        resolve = padded(
            lambda pad: pb.ResolveUpstreamResponse(url="https://r.example/v2/" + pad, size=1),
            resolve_bytes,
        )
        # Plain values; each call builds a new message from them, as a real handler would.
        self._url = url.url  # type: ignore[attr-defined]
        self._headers = dict(auth.headers)  # type: ignore[attr-defined]
        self._resolve_url = resolve.url  # type: ignore[attr-defined]

    async def UrlFor(self, request: Any, context: Any) -> Any:
        return pb.UrlForResponse(url=self._url)

    async def GetAuthHeaders(self, request: Any, context: Any) -> Any:
        return pb.GetAuthHeadersResponse(headers=self._headers, cache_hit=True, scheme="bearer")

    async def ResolveUpstream(self, request: Any, context: Any) -> Any:
        return pb.ResolveUpstreamResponse(url=self._resolve_url, size=1)


async def serve(args: argparse.Namespace, listen: str, reuse_port: bool) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
        ]
    )
    servicer = BaselineServicer(args.url_bytes, args.auth_bytes, args.resolve_bytes)
    pb_grpc.add_UpstreamServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def run(args: argparse.Namespace, listen: str, reuse_port: bool) -> int:
    factory = importlib.import_module("uvloop").new_event_loop if args.loop == "uvloop" else None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args, listen, reuse_port))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:50099")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--url-bytes", type=int, default=60)
    parser.add_argument("--auth-bytes", type=int, default=700)
    parser.add_argument("--resolve-bytes", type=int, default=900)
    args = parser.parse_args(argv)
    if args.workers <= 1:
        return run(args, args.listen, reuse_port=False)
    reserved, listen = reserve_port(args.listen)
    try:
        return run_workers(args.workers, lambda _: run(args, listen, True), grace_seconds=1.0)
    finally:
        if reserved is not None:
            reserved.close()


if __name__ == "__main__":
    sys.exit(main())
