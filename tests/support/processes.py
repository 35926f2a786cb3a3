"""Start local server processes on free ports, wait for them, and stop them.

Every wait is bounded; a process that dies while we wait for it raises
:class:`ProcessStartError` with the tail of its stderr. Processes still alive when the
interpreter exits (a crashed test run) are killed by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

LOCALHOST = "127.0.0.1"

T = TypeVar("T")

_live_lock = threading.Lock()
_live: set[ManagedProcess] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (another process may race us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(port: int, host: str = LOCALHOST, timeout: float = 0.2) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ProcessStartError(RuntimeError):
    """A server process died or did not become ready in time."""


class ManagedProcess:
    """A subprocess whose stdout/stderr go to files, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        log_dir: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_dir = log_dir
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(
        self,
        *,
        timeout: float = 10.0,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """Start the process and wait until its port answers (and ``ready()`` is true)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        # Append so that a restart keeps the earlier run's output for diagnosis.
        with (
            self.stdout_path.open("ab") as out,
            self.stderr_path.open("ab") as err,
        ):
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        with _live_lock:
            _live.add(self)
        try:
            self._wait_ready(timeout, ready)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float, ready: Callable[[], bool] | None) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            assert self._popen is not None
            code = self._popen.poll()
            if code is not None:
                raise ProcessStartError(
                    f"{self.name} exited with code {code} before answering on port {self.port}; "
                    f"argv={self.argv!r}\nstderr:\n{self.stderr_tail()}\nstdout:\n{self.stdout_tail()}"
                )
            if port_answers(self.port) and (ready is None or ready()):
                return
            if time.monotonic() >= deadline:
                raise ProcessStartError(
                    f"{self.name} did not answer on port {self.port} within {timeout:.1f}s; "
                    f"argv={self.argv!r}\nstderr:\n{self.stderr_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def stop(self, *, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Idempotent."""
        popen = self._popen
        if popen is None:
            return
        stop_process(popen, timeout)
        with _live_lock:
            _live.discard(self)

    def kill(self) -> None:
        """SIGKILL at once (a crash, as far as clients can tell)."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            popen.wait(timeout=5.0)
        with _live_lock:
            _live.discard(self)

    def stderr_tail(self, max_bytes: int = 4000) -> str:
        return _tail(self.stderr_path, max_bytes)

    def stdout_tail(self, max_bytes: int = 2000) -> str:
        return _tail(self.stdout_path, max_bytes)


def _tail(path: Path, max_bytes: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no output>"
    return data[-max_bytes:].decode("utf-8", "replace") or "<empty>"


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for proc in leftovers:
        with contextlib.suppress(Exception):
            proc.kill()


def start_with_port_retry(start: Callable[[int], T], attempts: int = 3) -> T:
    """Call ``start(port)`` with a fresh free port, retrying if another process stole the port."""
    last: ProcessStartError | None = None
    for _ in range(attempts):
        try:
            return start(free_port())
        except ProcessStartError as exc:
            last = exc
    assert last is not None
    raise last


def stop_process(popen: subprocess.Popen[Any], timeout: float) -> int | None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL (and wait as long again); the exit
    code. Does nothing to a process that has already ended."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            popen.wait(timeout=timeout)
    return popen.returncode


def clean_env(drop_prefixes: Sequence[str] = ()) -> dict[str, str]:
    """The current environment without variables whose names start with one of the prefixes."""
    return {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop_prefixes))}


# --------------------------------------------------------------------------- redis


class RedisServer:
    """A throw-away ``redis-server`` (no persistence) on 127.0.0.1.

    ``stop()`` then ``start()`` (or ``restart()``) brings it back on the same port, empty.
    """

    def __init__(self, port: int, workdir: Path, *, owns_workdir: bool = True) -> None:
        self.port = port
        self.host = LOCALHOST
        self.workdir = workdir
        self._owns_workdir = owns_workdir
        self.process = ManagedProcess(
            "redis",
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(port),
                "--bind",
                LOCALHOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
                "--logfile",
                "",
            ],
            port=port,
            log_dir=workdir,
            cwd=workdir,
        )

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process.running

    def _ping(self) -> bool:
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> None:
        self.process.start(timeout=timeout, ready=self._ping)

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port (all data is lost: there is no persistence)."""
        self.stop()
        deadline = time.monotonic() + timeout
        while port_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.start(timeout=max(0.5, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop for good and remove the working directory."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(timeout: float = 10.0) -> RedisServer:
    """Start ``redis-server`` on a free port; call ``.close()`` (or ``.stop()``) when done."""
    workdir = Path(tempfile.mkdtemp(prefix="vreg-redis-"))

    def attempt(port: int) -> RedisServer:
        server = RedisServer(port, workdir)
        server.start(timeout=timeout)
        return server

    try:
        return start_with_port_retry(attempt)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
