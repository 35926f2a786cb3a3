"""Several server processes on one port (``--workers N``): SO_REUSEPORT, one parent.

One Python process is the throughput ceiling of a grpc.aio server (one core, one
GIL). Past it, grpc's own recipe (``examples/python/multiprocessing``) is to fork
the workers *before any gRPC object exists* and let each build its own server on
the same port with ``grpc.so_reuseport``; the kernel spreads connections over
them. The parent builds nothing: it supervises the workers, forwards SIGTERM and
SIGINT, and restarts a worker that died unless it is crash-looping.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

# A worker that dies sooner than this after its start is crash-looping: give up.
MIN_HEALTHY_SECONDS = 10.0
MAX_RESTARTS = 100
STOP_TIMEOUT_SECONDS = 30.0


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


def reserve_port(listen: str) -> tuple[socket.socket | None, str]:
    """Pin a concrete port for ``HOST:0`` so every worker binds the same one.

    The returned socket (SO_REUSEPORT, bound, never listening) must stay open
    while the workers run; for a fixed port nothing is reserved.
    """
    host, port = split_listen(listen)
    if port != 0:
        return None, listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"{shown}:{port}"


def run_workers(count: int, target: Callable[[int], int], *, grace_seconds: float) -> int:
    """Fork ``count`` processes running ``target(index)``; return when all have stopped.

    Must be called before any gRPC object exists in this process. SIGTERM or
    SIGINT to the parent is forwarded to every worker, which then shuts down
    gracefully; a worker still alive ``grace_seconds`` (+5 s) later is killed.
    """
    context = multiprocessing.get_context("fork")
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in workers.values():
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    def spawn(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker_main, args=(target, index), name=f"vregistry-worker-{index}"
        )
        process.start()
        started[index] = time.monotonic()
        return process

    workers: dict[int, multiprocessing.process.BaseProcess] = {}
    started: dict[int, float] = {}
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    exit_code = 0
    restarts = 0
    try:
        for index in range(count):
            workers[index] = spawn(index)
        log.info("workers started", extra={"workers": count, "pid": os.getpid()})
        while not stopping:
            sentinels = [p.sentinel for p in workers.values()]
            multiprocessing.connection.wait(sentinels, timeout=1.0)
            for index, process in list(workers.items()):
                if stopping or process.is_alive():
                    continue
                lived = time.monotonic() - started[index]
                log.error(
                    "worker exited",
                    extra={"worker": index, "exit_code": process.exitcode, "lived_s": round(lived)},
                )
                if lived < MIN_HEALTHY_SECONDS or restarts >= MAX_RESTARTS:
                    log.error("workers are crash-looping; stopping all of them")
                    exit_code = 1
                    on_signal(signal.SIGTERM, None)
                    break
                restarts += 1
                workers[index] = spawn(index)
        deadline = time.monotonic() + grace_seconds + 5.0
        for process in workers.values():
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(timeout=5.0)
                exit_code = 1
            elif process.exitcode not in (0, -signal.SIGTERM):
                exit_code = exit_code or 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return exit_code


def _worker_main(target: Callable[[int], int], index: int) -> None:
    # The parent's handlers came along with the fork: give the worker the defaults
    # back until its own event loop installs graceful ones.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise SystemExit(target(index))
