"""A small threaded HTTP/1.1 server base, run in a background thread on 127.0.0.1.

Shared by the token server and the proxy. It runs independently of any asyncio loop, so
tests may call it from async code without blocking the loop on the server side.
"""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Protocol, TypeVar, overload

from tests.support.processes import LOCALHOST

MAX_BODY_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


class BodyError(Exception):
    """The request body could not be read (bad chunking, too large)."""


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A cold burst opens hundreds of connections at once; socketserver's default listen
    # backlog of 5 drops their SYNs, and each retransmit costs the client 1, 3, 7 s.
    request_queue_size = 1024
    # Set by BackgroundHTTPServer so handlers can reach their owner.
    owner: Any = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (timeouts, cancelled tests) are normal here; stay quiet.
        return


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler that never logs and can read plain or chunked request bodies."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: with Nagle on, the body waits for the
    # client's delayed ACK (40 ms per request).
    disable_nagle_algorithm = True
    # Idle keep-alive connections are dropped after this many seconds.
    timeout = 30.0

    def log_message(self, format: str, *args: Any) -> None:
        return

    def read_body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """Read the request body, decoding ``Transfer-Encoding: chunked``."""
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in encoding:
            return self._read_chunked(limit)
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
        except ValueError as exc:
            raise BodyError(f"bad Content-Length {length_header!r}") from exc
        if length < 0 or length > limit:
            raise BodyError(f"Content-Length {length} out of range")
        data = self.rfile.read(length)
        if len(data) != length:
            raise BodyError("body shorter than Content-Length")
        return data

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise BodyError("connection closed inside a chunked body")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise BodyError(f"bad chunk size {size_text!r}") from exc
            if size == 0:
                # Trailers, ended by an empty line.
                while True:
                    trailer = self.rfile.readline(8192)
                    if trailer in (b"\r\n", b"\n", b""):
                        break
                return b"".join(parts)
            total += size
            if total > limit:
                raise BodyError("chunked body too large")
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise BodyError("connection closed inside a chunk")
            parts.append(chunk)
            self.rfile.readline(16)  # the CRLF after the chunk

    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        *,
        include_body: bool = True,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if include_body and body:
            self.wfile.write(body)

    def drop_connection(self) -> None:
        """Close the socket without sending anything (a fault the client sees as a reset/EOF)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(2)  # socket.SHUT_RDWR
        with contextlib.suppress(OSError):
            self.connection.close()


class BackgroundHTTPServer:
    """Owns a :class:`QuietServer` bound to 127.0.0.1 (or another loopback address, such as
    127.0.0.2 for a test that needs a second host) on a kernel-chosen port."""

    handler_class: type[QuietHandler] = QuietHandler

    def __init__(self, host: str = LOCALHOST) -> None:
        if not host.startswith("127."):
            raise ValueError(f"test servers listen on loopback addresses only, not {host!r}")
        self._server = QuietServer((host, 0), self.handler_class)
        self._server.owner = self
        self.host = host
        self.port: int = self._server.server_address[1]
        # Set on stop() so that handlers sleeping in a delay wake up at once.
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, wake sleeping handlers and close the listening socket. Idempotent."""
        self.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5.0)
            self._thread = None
        self._server.server_close()

    def sleep(self, seconds: float) -> None:
        """Sleep in a handler; returns early when the server stops."""
        if seconds > 0:
            self.stopping.wait(seconds)


class KnobOwner(Protocol):
    """What :class:`Knob` needs from its owner: a lock and a mutable knobs object."""

    _lock: threading.Lock
    _knobs: Any


class Knob(Generic[T]):
    """A runtime setting stored on the owner's ``_knobs`` object, read and written under its lock.

    Declared on a class as ``delay_seconds: Knob[float] = Knob()``; instances read and
    assign it like a plain attribute, safely from any thread.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Knob[T]: ...

    @overload
    def __get__(self, obj: KnobOwner, objtype: type | None = None) -> T: ...

    def __get__(self, obj: KnobOwner | None, objtype: type | None = None) -> T | Knob[T]:
        if obj is None:
            return self
        with obj._lock:
            value: T = getattr(obj._knobs, self.name)
            return value

    def __set__(self, obj: KnobOwner, value: T) -> None:
        with obj._lock:
            setattr(obj._knobs, self.name, value)
