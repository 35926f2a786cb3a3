"""Stand-ins for hostile behaviour no real registry or token server produces, and a way to
observe that the service did not connect at all.

- ``SocketServer``: a listening socket that hands each connection to a function writing
  exact bytes (HTTP shapes no registry happens to send); ``AcceptCounter``, one that only
  counts the connections it accepts (the proof that a refused upstream got no byte: zero
  accepts).
- ``RecordingServer``: an HTTP server that records every request with its body, answering
  from a script (a realm that redirects its POST with 307, the host it points to).
- ``Tarpit``: answers ``/v2/`` at once and then trickles one byte every ``interval``
  seconds of every other response, forever; counts the connections it holds open.
- ``ConnectLog``: patches the wire where it opens sockets (``oci.wire.open_connection``,
  after the egress check) to record every address the service would open a socket to,
  and to refuse, rather than reach, any address outside loopback: a test of a refused
  form can never leave the machine.

Everything listens on 127.0.0.0/8 only.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.httpserver import BackgroundHTTPServer, QuietHandler
from tests.support.processes import LOCALHOST
from vregistry_server.oci import wire

Conversation = Callable[[socket.socket], None]


class SocketServer:
    """Accepts on ``host`` (loopback) and hands every connection to ``conversation`` on
    its own thread, then closes it; counts connections. Bounded: each connection reads
    with a timeout, and the accept loop stops with ``close``."""

    def __init__(
        self,
        conversation: Conversation,
        tls: ssl.SSLContext | None = None,
        host: str = LOCALHOST,
    ) -> None:
        self._sock = socket.create_server((host, 0))
        self._sock.settimeout(0.2)
        self.host = host
        self.port = self._sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self.connections = 0
        self._conversation = conversation
        self._tls = tls
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            self._conversation(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


class AcceptCounter:
    """Listens on ``host`` and counts accepted connections; closes each one at once."""

    def __init__(self, host: str = LOCALHOST) -> None:
        self._server = SocketServer(lambda conn: None, host=host)
        self.host = host
        self.port = self._server.port

    @property
    def accepts(self) -> int:
        return self._server.connections

    def url(self, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}"

    def stop(self) -> None:
        self._server.close()


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _RecordingHandler(QuietHandler):
    def _answer(self) -> None:
        owner: RecordingServer = self.server.owner  # type: ignore[attr-defined]
        body = self.read_body()
        owner.record(Recorded(self.command, self.path, dict(self.headers.items()), body))
        answer = owner.script(self.command, self.path)
        self.send_bytes(
            answer.status,
            answer.body,
            "application/json",
            answer.headers,
            include_body=self.command != "HEAD",
        )

    do_GET = do_POST = do_HEAD = _answer


class RecordingServer(BackgroundHTTPServer):
    handler_class = _RecordingHandler

    def __init__(self, script: Callable[[str, str], Answer], host: str = LOCALHOST) -> None:
        super().__init__(host)
        self.script = script
        self._lock = threading.Lock()
        self._seen: list[Recorded] = []

    def record(self, seen: Recorded) -> None:
        with self._lock:
            self._seen.append(seen)

    @property
    def seen(self) -> list[Recorded]:
        with self._lock:
            return list(self._seen)

    @property
    def url(self) -> str:
        return self.base_url


def start_recording(script: Callable[[str, str], Answer], host: str = LOCALHOST) -> RecordingServer:
    server = RecordingServer(script, host)
    server.start()
    return server


class Tarpit:
    """An upstream that answers its ping and then holds every other request forever."""

    def __init__(self, interval: float = 0.5, host: str = LOCALHOST) -> None:
        self.interval = interval
        self._sock = socket.create_server((host, 0), backlog=128)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._lock = threading.Lock()
        self.open_connections = 0
        self.accepted = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.open_connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                while not self._stop.is_set():
                    head = read_head(conn)
                    if head is None:
                        return
                    if head.split(b" ", 2)[1] == b"/v2/":
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                        continue
                    self._trickle(conn)
                    return
        finally:
            with self._lock:
                self.open_connections -= 1

    def _trickle(self, conn: socket.socket) -> None:
        conn.settimeout(self.interval)
        for byte in _endless(b"HTTP/1.1 200 OK\r\nX-Tarpit: "):
            if self._stop.is_set():
                return
            try:
                conn.sendall(byte)
                # A read that returns b"" means the client closed its end.
                if conn.recv(1) == b"":
                    return
            except TimeoutError:
                continue  # the client is still there, silent: one more byte
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


def _endless(prefix: bytes) -> Iterator[bytes]:
    for value in prefix:
        yield bytes([value])
    while True:
        yield b"x"


def read_head(conn: socket.socket) -> bytes | None:
    """A request's head (up to its blank line), or None when the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data


class ConnectLog:
    """Every (host, port) the service asked the real network backend to connect to."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []

    def to(self, port: int) -> list[tuple[str, int]]:
        return [a for a in self.attempts if a[1] == port]


@contextmanager
def connect_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectLog]:
    log = ConnectLog()
    real = wire.open_connection

    async def recording(factory: Any, address: str, port: int, **kwargs: Any) -> Any:
        log.attempts.append((address, port))
        if not (address.startswith("127.") or address == "::1"):
            # Never leave the machine, whatever the code under test got wrong.
            raise OSError(f"test guard: refusing to reach {(address, port)}")
        return await real(factory, address, port, **kwargs)

    monkeypatch.setattr(wire, "open_connection", recording)
    yield log


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
