"""A delaying HTTP/1.1 reverse proxy in its own process: an upstream "200 ms away".

    python -m benchmarks.delay_proxy --backend http://127.0.0.1:5000 --delay 0.2 \
        --listen 127.0.0.1:0

prints one JSON line (``{"port": ..., "url": ..., "pid": ...}``) once it listens, then waits
``--delay`` seconds before forwarding each request to the backend (method, path, query,
headers and body as they are, hop-by-hop headers dropped) and relays the backend's status,
headers and body (HEAD: no body, the backend's Content-Length; redirects are relayed, not
followed). The backend is reached over one keep-alive pool, so the proxy's own time is the
delay plus one loopback exchange, not a new connection per request.

``--overlap``: forward at once and send the answer ``delay`` after the request came (or when
the backend answers, if later). The backend's own time is then inside the delay instead of
added to it: a local docker-registry on a shared 2-core machine answers a burst of HEADs in
up to ~100 ms at p99 (it spends ~2.6 ms of CPU per token-authenticated HEAD), which says
nothing about an upstream's distance (benchmarks/RESULTS.md, "A delaying proxy process").

Why a process and asyncio: the cold ResolveUpstream benchmark's proxies were Python threads
of the benchmark process with a new backend connection per request; their own p99 (291-673 ms)
was most of the calls' p99 (benchmarks/RESULTS.md, "Hot path and cold CPU, third pass").

Every request is recorded (method, path, status; ``start``, ``forwarded``, ``answered`` by the
backend and ``end``, in ``time.monotonic``, one clock for every process on Linux):
``GET /_delay_proxy/records?since=N`` answers
``{"total": T, "records": [...]}`` with the records from index N on, undelayed and unrecorded.
Loopback only. It exits on SIGTERM/SIGINT and when its parent process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import hdrs, web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict
from yarl import URL

from tests.support.processes import stop_process
from tests.support.proxy import HOP_BY_HOP_HEADERS

ROOT = Path(__file__).resolve().parent.parent
STATS_PATH = "/_delay_proxy/records"
# Headers aiohttp's client adds by itself: skipped unless the caller sent them, so the
# backend sees what the caller sent.
_AUTO_HEADERS = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)
# At most this many records are kept (the oldest go first); indices stay absolute.
MAX_RECORDS = 200_000
PARENT_POLL_SECONDS = 0.5
BACKEND_TIMEOUT_SECONDS = 30.0


@dataclass
class DelayRecord:
    method: str
    path: str
    #: The status sent to the client; 0 while in flight, 502 when the backend failed.
    status: int = 0
    start: float = 0.0  # time.monotonic() when the request's head had been read
    forwarded: float = 0.0  # when the delay was over and the request went to the backend
    answered: float = 0.0  # when the backend's answer had been read
    end: float = 0.0  # time.monotonic() when the answer had been written; 0 in flight

    @property
    def duration(self) -> float:
        """Seconds from the request to the answer written (the delay included); 0 in flight."""
        return self.end - self.start if self.end else 0.0


def loopback_host(host: str | None, what: str) -> str:
    """``host`` if it is a loopback address (127.0.0.0/8), else ValueError naming ``what``."""
    try:
        if host is not None and ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"{what} must be a 127.0.0.0/8 address, not {host!r}")


# --------------------------------------------------------------------------- the proxy process


class DelayProxyServer:
    """The aiohttp low-level handler: delay, forward over one pool, relay, record."""

    def __init__(
        self, backend: str, delay: float, session: aiohttp.ClientSession, *, overlap: bool
    ) -> None:
        self.backend = backend.rstrip("/")
        self.delay = delay
        self.overlap = overlap
        self.session = session
        self.records: list[DelayRecord] = []
        self.dropped = 0  # records dropped from the front of ``records`` (MAX_RECORDS)

    async def handle(self, request: BaseRequest) -> web.StreamResponse:
        if request.path == STATS_PATH:
            return self.stats(request)
        record = DelayRecord(request.method, request.path, start=time.monotonic())
        self.keep(record)
        body = await request.read()
        if self.overlap:
            # The answer leaves ``delay`` after the request came, the backend's own time
            # inside the delay rather than added to it.
            record.forwarded = time.monotonic()
            response = await self.forward(request, body)
            record.answered = time.monotonic()
            await asyncio.sleep(max(0.0, record.start + self.delay - record.answered))
        else:
            await asyncio.sleep(self.delay)
            record.forwarded = time.monotonic()
            response = await self.forward(request, body)
            record.answered = time.monotonic()
        await response.prepare(request)
        await response.write_eof()
        record.status = response.status
        record.end = time.monotonic()
        return response

    def keep(self, record: DelayRecord) -> None:
        self.records.append(record)
        if len(self.records) > MAX_RECORDS:
            excess = len(self.records) - MAX_RECORDS
            del self.records[:excess]
            self.dropped += excess

    async def forward(self, request: BaseRequest, body: bytes) -> web.Response:
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP_HEADERS
        )
        skip = [name for name in _AUTO_HEADERS if name not in headers]
        try:
            async with self.session.request(
                request.method,
                # Path and query as the caller sent them, not re-quoted.
                URL(self.backend + request.raw_path, encoded=True),
                headers=headers,
                data=body or None,
                skip_auto_headers=skip,
                allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                relayed = CIMultiDict(
                    (name, value)
                    for name, value in answer.headers.items()
                    if name.lower() not in HOP_BY_HOP_HEADERS
                )
                if request.method == hdrs.METH_HEAD and hdrs.CONTENT_LENGTH in answer.headers:
                    # No body to count: the backend's length is the answer.
                    relayed[hdrs.CONTENT_LENGTH] = answer.headers[hdrs.CONTENT_LENGTH]
                return web.Response(
                    status=answer.status,
                    reason=answer.reason,
                    headers=relayed,
                    body=payload or None,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            message = {"errors": [{"code": "BAD_GATEWAY", "message": type(exc).__name__}]}
            return web.json_response(message, status=502)

    def stats(self, request: BaseRequest) -> web.Response:
        try:
            since = max(int(request.query.get("since", "0")), 0)
        except ValueError:
            return web.json_response({"error": "since must be an integer"}, status=400)
        start = max(since - self.dropped, 0)
        records = [
            {
                "method": r.method,
                "path": r.path,
                "status": r.status,
                "start": r.start,
                "forwarded": r.forwarded,
                "answered": r.answered,
                "end": r.end,
            }
            for r in self.records[start:]
        ]
        return web.json_response({"total": self.dropped + len(self.records), "records": records})


async def wait_for_stop(stop: asyncio.Event, parent: int) -> None:
    """Until SIGTERM/SIGINT set ``stop`` or the parent process is gone (we are re-parented)."""
    while os.getppid() == parent:
        try:
            await asyncio.wait_for(stop.wait(), PARENT_POLL_SECONDS)
            return
        except TimeoutError:
            continue


async def serve(backend: str, delay: float, host: str, port: int, *, overlap: bool) -> None:
    parent = os.getppid()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60.0)
    timeout = aiohttp.ClientTimeout(total=BACKEND_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        proxy = DelayProxyServer(backend, delay, session, overlap=overlap)
        server = web.Server(proxy.handle, access_log=None)
        # A real backlog: a dropped SYN would come back as a 1 s retransmit in the tail.
        listener = await loop.create_server(server, host, port, backlog=1024)
        bound = listener.sockets[0].getsockname()[1]
        line = {"port": bound, "url": f"http://{host}:{bound}", "pid": os.getpid()}
        print(json.dumps(line), flush=True)
        try:
            await wait_for_stop(stop, parent)
        finally:
            listener.close()
            await server.shutdown(1.0)
            await listener.wait_closed()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="a delaying HTTP/1.1 reverse proxy (loopback)")
    parser.add_argument("--backend", required=True, help="http://127.0.0.1:PORT[/prefix]")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds before forwarding")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="forward at once and answer `delay` after the request (the backend's time "
        "hidden in the delay) instead of waiting `delay` before forwarding",
    )
    args = parser.parse_args(argv)
    backend = urlsplit(args.backend)
    host, _, port = args.listen.rpartition(":")
    try:
        if backend.scheme != "http":
            raise ValueError(f"--backend must be an http:// URL, not {args.backend!r}")
        loopback_host(backend.hostname, "--backend's host")
        args.host = loopback_host(host, "--listen's host")
        args.port = int(port)
        if not 0 <= args.delay <= 60:
            raise ValueError(f"--delay must be between 0 and 60 seconds, not {args.delay}")
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(serve(args.backend, args.delay, args.host, args.port, overlap=args.overlap))
    return 0


# --------------------------------------------------------------------------- the parent's handle


class DelayProxy:
    """A running proxy process, seen from the benchmark: its URL, its records, ``stop()``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _stats(self, since: int) -> dict[str, Any]:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=10.0)
        try:
            conn.request("GET", f"{STATS_PATH}?since={since}")
            answer = conn.getresponse()
            data: dict[str, Any] = json.loads(answer.read())
        finally:
            conn.close()
        return data

    @property
    def request_count(self) -> int:
        """Requests received so far (the stats requests not included)."""
        total: int = self._stats(1 << 62)["total"]
        return total

    def records_since(self, mark: int) -> list[DelayRecord]:
        """The records from index ``mark`` on (a ``request_count`` taken earlier)."""
        return [DelayRecord(**r) for r in self._stats(mark)["records"]]

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_delay_proxy(
    backend_url: str,
    delay: float,
    *,
    overlap: bool = False,
    timeout: float = 15.0,
) -> DelayProxy:
    """Start ``python -m benchmarks.delay_proxy`` in front of ``backend_url``; wait for its port."""
    argv = [sys.executable, "-m", "benchmarks.delay_proxy", "--backend", backend_url]
    argv += ["--delay", str(delay), "--listen", "127.0.0.1:0"]
    argv += ["--overlap"] if overlap else []
    process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    proxy = DelayProxy(process, 0)
    try:
        proxy.port = int(json.loads(_first_line(process, timeout))["port"])
    except BaseException:
        proxy.stop()
        raise
    return proxy


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The process's first stdout line, within ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"the delay proxy printed no port within {timeout} s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the delay proxy exited with status {process.wait(timeout)}")
    return line


if __name__ == "__main__":
    sys.exit(main())
