"""A counting, delaying, fault-injecting HTTP reverse proxy in front of one backend URL.

It forwards method, path, query, headers (Authorization and Host included) and body as they
are; only hop-by-hop headers are dropped and Content-Length is recomputed for bodies it
re-sends. HEAD is forwarded as HEAD and answered without a body but with the backend's
Content-Length. It runs in a background thread, independent of any asyncio loop.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from tests.support.httpserver import BackgroundHTTPServer, BodyError, Knob, QuietHandler

HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass
class ProxyKnobs:
    """Runtime behaviour of the proxy; every field is a :class:`Knob` on :class:`Proxy`."""

    #: Sleep this long before forwarding (interrupted when the proxy stops).
    delay_seconds: float = 0.0
    #: Answer with this status instead of forwarding (e.g. 503, 429, 500).
    fail_with: int | None = None
    #: Body and Content-Type sent with ``fail_with``.
    fail_body: bytes = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by test proxy"}]}'
    fail_content_type: str = "application/json"
    #: A Retry-After header value sent with ``fail_with`` (e.g. "7" with 429).
    retry_after: str | None = None
    #: With ``fail_with``: only the next N faulty requests fail, then they are forwarded
    #: again (``fail_count=1``: one 503, then the backend). None: every one fails.
    fail_count: int | None = None
    #: Drop the connection without answering.
    close_connection: bool = False
    #: Answer 200 text/html instead of forwarding (something that is not a registry).
    non_registry: bool = False
    #: When non-empty, delay and faults apply only to paths starting with one of these.
    fault_paths: tuple[str, ...] = ()
    #: When non-empty, delay and faults apply only to these methods (e.g. ("HEAD",)).
    fault_methods: tuple[str, ...] = ()


@dataclass
class ProxyRequestRecord:
    method: str
    path: str
    query: dict[str, list[str]]
    has_authorization: bool
    #: The status sent to the client; 0 while in flight or when the connection was dropped.
    status: int = 0
    #: Seconds from receiving the request to sending the answer (delay included).
    duration: float = 0.0


class _ProxyHandler(QuietHandler):
    def _owner(self) -> Proxy:
        owner: Proxy = self.server.owner  # type: ignore[attr-defined]
        return owner

    def do_GET(self) -> None:
        self._owner()._handle(self)

    do_HEAD = do_GET
    do_POST = do_GET
    do_PUT = do_GET
    do_PATCH = do_GET
    do_DELETE = do_GET
    do_OPTIONS = do_GET


class Proxy(BackgroundHTTPServer):
    """Start with :func:`start_proxy`; ``.url`` is what clients use instead of the backend's."""

    handler_class = _ProxyHandler

    delay_seconds: Knob[float] = Knob()
    fail_with: Knob[int | None] = Knob()
    fail_body: Knob[bytes] = Knob()
    fail_content_type: Knob[str] = Knob()
    retry_after: Knob[str | None] = Knob()
    fail_count: Knob[int | None] = Knob()
    close_connection: Knob[bool] = Knob()
    non_registry: Knob[bool] = Knob()
    fault_paths: Knob[tuple[str, ...]] = Knob()
    fault_methods: Knob[tuple[str, ...]] = Knob()

    def __init__(self, backend_url: str, *, backend_timeout: float = 30.0) -> None:
        super().__init__()
        backend = urlsplit(backend_url)
        if backend.scheme != "http" or not backend.hostname:
            raise ValueError(f"the test proxy forwards to http:// URLs only, not {backend_url!r}")
        self.backend_url = backend_url.rstrip("/")
        self._backend_host = backend.hostname
        self._backend_port = backend.port or 80
        self._backend_prefix = backend.path.rstrip("/")
        self._backend_timeout = backend_timeout
        self._lock = threading.Lock()
        self._knobs = ProxyKnobs()
        self._records: list[ProxyRequestRecord] = []
        self._counts: Counter[tuple[str, str]] = Counter()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (plus the backend URL's path, if it had one)."""
        return f"{self.base_url}{self._backend_prefix}"

    # ------------------------------------------------------------------ knobs and counters

    def configure(self, **changes: Any) -> None:
        names = {f.name for f in fields(ProxyKnobs)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown proxy knobs: {sorted(unknown)}")
        with self._lock:
            for name, value in changes.items():
                setattr(self._knobs, name, value)

    def reset(self) -> None:
        """Zero counters and records and restore every knob."""
        with self._lock:
            self._knobs = ProxyKnobs()
            self._records.clear()
            self._counts.clear()

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def counts(self) -> dict[tuple[str, str], int]:
        """Requests per (method, path); the path has no query string."""
        with self._lock:
            return dict(self._counts)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (m, p), n in self._counts.items()
                if (method is None or m == method.upper()) and (path is None or p == path)
            )

    @property
    def ping_count(self) -> int:
        """``GET /v2/`` requests (registry pings)."""
        return self.count("GET", f"{self._backend_prefix}/v2/")

    @property
    def records(self) -> list[ProxyRequestRecord]:
        with self._lock:
            return list(self._records)

    # ------------------------------------------------------------------ HTTP

    def _handle(self, handler: _ProxyHandler) -> None:
        started = time.monotonic()
        method = handler.command
        parsed = urlsplit(handler.path)
        record = ProxyRequestRecord(
            method=method,
            path=parsed.path,
            query=parse_qs(parsed.query, keep_blank_values=True),
            has_authorization="Authorization" in handler.headers,
        )
        with self._lock:
            self._records.append(record)
            self._counts[(method, parsed.path)] += 1
            knobs = ProxyKnobs(
                **{f.name: getattr(self._knobs, f.name) for f in fields(self._knobs)}
            )

        try:
            body = handler.read_body()
        except BodyError:
            handler.drop_connection()
            return

        def done(status: int) -> None:
            record.status = status
            record.duration = time.monotonic() - started

        faulty = (not knobs.fault_paths or parsed.path.startswith(knobs.fault_paths)) and (
            not knobs.fault_methods or method in knobs.fault_methods
        )
        if faulty and knobs.fail_with is not None and knobs.fail_count is not None:
            with self._lock:
                remaining = self._knobs.fail_count
                if remaining is not None and remaining > 0:
                    self._knobs.fail_count = remaining - 1
                else:
                    knobs.fail_with = None  # the failures ran out: forward again
        if faulty:
            self.sleep(knobs.delay_seconds)
            if self.stopping.is_set() or knobs.close_connection:
                record.duration = time.monotonic() - started
                handler.drop_connection()
                return
            if knobs.fail_with is not None:
                headers = {"Retry-After": knobs.retry_after} if knobs.retry_after else {}
                done(knobs.fail_with)
                handler.send_bytes(
                    knobs.fail_with,
                    knobs.fail_body,
                    knobs.fail_content_type,
                    headers,
                    include_body=method != "HEAD",
                )
                return
            if knobs.non_registry:
                page = b"<!DOCTYPE html><html><body>Welcome to nginx!</body></html>"
                done(200)
                handler.send_bytes(
                    200, page, "text/html; charset=utf-8", include_body=method != "HEAD"
                )
                return

        conn = http.client.HTTPConnection(
            self._backend_host, self._backend_port, timeout=self._backend_timeout
        )
        try:
            conn.putrequest(method, handler.path, skip_host=True, skip_accept_encoding=True)
            for name, value in handler.headers.items():
                if name.lower() not in HOP_BY_HOP_HEADERS:
                    conn.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            payload = response.read()
            status = response.status
            reason = response.reason
            backend_headers = response.getheaders()
        except (OSError, http.client.HTTPException) as exc:
            done(502)
            message = f'{{"errors":[{{"code":"BAD_GATEWAY","message":"{type(exc).__name__}"}}]}}'
            handler.send_bytes(502, message.encode(), "application/json")
            return
        finally:
            conn.close()

        handler.send_response_only(status, reason)
        backend_length: str | None = None
        for name, value in backend_headers:
            lowered = name.lower()
            if lowered == "content-length":
                backend_length = value
            if lowered not in HOP_BY_HOP_HEADERS:
                handler.send_header(name, value)
        if method == "HEAD" or status in _NO_BODY_STATUSES or 100 <= status < 200:
            if backend_length is not None:
                handler.send_header("Content-Length", backend_length)
            handler.end_headers()
        else:
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        done(status)


class HasUrl(Protocol):
    """Anything with a ``.url`` (a RegistryServer, a TokenServer, another Proxy)."""

    @property
    def url(self) -> str: ...


ProxyFactory = Callable[..., Proxy]
"""The ``proxy_factory`` fixture: ``(backend: str | HasUrl, **knobs) -> Proxy``."""


def start_proxy(backend_url: str, *, backend_timeout: float = 30.0) -> Proxy:
    """Start a proxy in front of ``backend_url``; call ``.stop()`` when done."""
    proxy = Proxy(backend_url, backend_timeout=backend_timeout)
    proxy.start()
    return proxy


__all__ = ["HasUrl", "Proxy", "ProxyFactory", "ProxyKnobs", "ProxyRequestRecord", "start_proxy"]
