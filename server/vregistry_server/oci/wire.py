"""HTTP/1.1 to upstreams on asyncio's own transports, parsed by llhttp (httptools).

What ``http.send`` needs of a wire and nothing more: one request on a pooled keep-alive
connection, its status, headers and (capped) body. Redirects, budgets, in-flight slots
and hard deadlines stay in ``http.send``; the egress rule is applied here, to every
connection before its socket is opened (``realm_policy.guarded_addresses``: the
addresses of the name the current scope permits, resolved once, and only those dialled).

Why not aiohttp (the wire before this one) or httpx (the one before that): the cold
ResolveUpstream sends three HEADs, and aiohttp's request machinery (sessions, traces,
timers, stream readers, cookie and redirect handling that ``send`` does not use) made each
cost 398 µs of CPU against 300 µs here, syscalls included, and a cold call 4.0 ms of
server CPU against 3.4 ms (benchmarks/RESULTS.md, "A leaner wire").

One pool per upstream (the egress scope's key), as before: a tarpit fills only its own,
and a connection opened under one upstream's rule is never lent to another upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlencode

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from vregistry_server.oci.egress import EgressScope, default_port
from vregistry_server.oci.realm_policy import (
    EgressRefusedError,
    Resolve,
    guarded_addresses,
    system_resolve,
)

# Idle pooled connections are closed after this long (httpx's default was 5 s).
KEEPALIVE_SECONDS = 5.0
MAX_HEADER_BYTES = 64 * 1024
USER_AGENT = "vregistry/0.1 (+https://github.com/vregistry/vregistry)"
Headers = CIMultiDictProxy[str]


class WireError(Exception):
    """A request that got no usable response; ``http.transport_error`` words it."""


class ConnectFailed(WireError):
    """No connection could be opened (refused, unreachable, TLS handshake failed)."""

    def __init__(self, message: str, os_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ConnectionDropped(WireError):
    """The upstream closed the connection before its response was complete."""


class BadResponse(WireError):
    """What came back is not HTTP/1.1 as we speak it."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One response as the wire gives it: ``body`` None when it was larger than the cap
    (the rest is never read, and the connection is dropped)."""

    status: int
    headers: Headers
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: URL
    headers: dict[str, str]
    data: dict[str, str] | None
    read_body: bool
    limit: int


async def open_connection(
    factory: Callable[[], _Connection],
    address: str,
    port: int,
    *,
    tls: ssl.SSLContext | None,
    server_hostname: str | None,
) -> tuple[asyncio.BaseTransport, _Connection]:
    """The one place a socket is opened (tests record and guard every address dialled
    here: looked up at each call, so a patched one is what runs)."""
    loop = asyncio.get_running_loop()
    return await loop.create_connection(
        factory, address, port, ssl=tls, server_hostname=server_hostname
    )


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one exchange at a time."""

    def __init__(self, pool: Pool, origin: tuple[str, str, int]) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.used = False  # has carried a response: a close before the next one may be a race
        self._waiter: asyncio.Future[Reply] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._begin(head=False, read_body=True, limit=0)

    def _begin(self, *, head: bool, read_body: bool, limit: int) -> None:
        """The state of one exchange, fresh (every field the callbacks below read)."""
        self._head = head
        self._read_body = read_body
        self._limit = limit
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._until_eof = False
        self._received = False
        self._pending = 0  # bytes since a complete header line or body bytes (see data_received)
        self._keep = False
        self._status = 0
        self._interim = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        self._received = True
        self._pending += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised (HttpParserCallbackError): unwrap it.
            cause = exc.__context__
            if isinstance(cause, _Oversized):
                self._finish(None)
            elif isinstance(cause, WireError):
                self._fail(cause)
            else:
                self._fail(BadResponse(f"malformed response ({type(exc).__name__})"))
            return
        if self._parser is parser and self._pending > MAX_HEADER_BYTES:
            # No header line completed and no body bytes in all that: httptools keeps a
            # header or trailer line until it ends, and one that never ends must not grow
            # until the deadline (on_header counts only complete lines). Bytes after a
            # callback within one read are not counted: the bound is this plus one read.
            self._fail(BadResponse(f"response headers larger than {MAX_HEADER_BYTES} bytes"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._parser is None:
            return
        if self._until_eof and exc is None:  # a body delimited by the end of the connection
            self._finish(b"".join(self._body))
            return
        error = ConnectionDropped("the upstream closed the connection")
        if exc is not None:
            error.__cause__ = exc
        self._fail(error)

    # -- llhttp callbacks

    def on_message_begin(self) -> None:
        if self._parser is None:  # a second response after ours, in the same bytes
            raise BadResponse("bytes after the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._pending = 0
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise BadResponse(f"response headers larger than {MAX_HEADER_BYTES} bytes")
        if self._status >= 200:
            # Past the final response's head: a chunked body's trailer fields, never the
            # response's headers (a trailer could otherwise name a digest, a Location or a
            # Content-Encoding the head did not).
            return
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        self._status = status = parser.get_status_code()
        if status < 100:
            raise BadResponse(f"invalid status code {status}")
        if status < 200:
            self._interim_response(status)
            return
        if self._head:
            # llhttp is not told the method, so without a length it would wait for the
            # connection's end; a HEAD response has no body whatever its headers say.
            self._keep = _persistent(parser.get_http_version(), self._headers)
            self._finish(b"")
            return
        self._keep = parser.should_keep_alive()
        if status in (204, 304):
            self._finish(b"")
            return
        if not self._read_body:
            # The caller wants only the status: the body is never read, the connection goes.
            self._keep = False
            self._finish(b"")
            return
        unknown = [c for c in _transfer_codings(self._headers) if c not in ("chunked", "identity")]
        if unknown:  # never asked for (we send no TE): the body would reach the caller encoded
            raise BadResponse(f"unsupported Transfer-Encoding {unknown[0]!r}")
        self._until_eof = not self._keep and not _delimited(self._headers)

    def on_body(self, body: bytes) -> None:
        if self._parser is None:  # finished at its head (HEAD, 204, 304): a body is extra
            raise BadResponse("bytes after the response")
        self._pending = 0
        self._body_size += len(body)
        if self._body_size > self._limit:
            raise _Oversized
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._interim:  # the final response follows on the same connection
            self._interim = False
            return
        if self._waiter is not None and not self._waiter.done():
            self._finish(b"".join(self._body))

    def _interim_response(self, status: int) -> None:
        """A 1xx before the final response (100 Continue, 103 Early Hints: RFC 9110
        15.2 says a client must read past them): its headers are dropped. 101 would
        switch protocols, which we never ask for."""
        if status == 101:
            raise BadResponse("the upstream switched protocols unasked (101)")
        self._interim = True
        self._headers = []
        self._header_bytes = 0

    # -- one exchange

    async def exchange(
        self, request: Request, head_bytes: bytes, body: bytes, deadline: float
    ) -> Reply:
        """Send the request and wait for its response until ``deadline`` (loop time): one
        timer on the response's future, not an asyncio.timeout around the whole call."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._begin(head=request.method == "HEAD", read_body=request.read_body, limit=request.limit)
        self._waiter = waiter = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        if body:
            self.transport.writelines((head_bytes, body))
        else:
            self.transport.write(head_bytes)
        timer = loop.call_at(deadline, self._time_out)
        try:
            reply: Reply = await waiter
            return reply
        except BaseException:
            self.close()  # cancelled or failed mid-exchange: the connection's state is unknown
            raise
        finally:
            timer.cancel()
            self._waiter = None

    def _time_out(self) -> None:
        self._fail(TimeoutError("no complete response in time"))

    @property
    def dropped_before_reply(self) -> bool:
        """Closed before any response byte (a reused connection the upstream had just shut:
        the request was most likely never read, so it may be sent again once)."""
        return not self._received

    def _finish(self, body: bytes | None) -> None:
        waiter = self._waiter
        self._parser = None
        self._until_eof = False
        if waiter is None or waiter.done():
            return
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        if body is None or not self._keep:
            self.close()
        if body:
            try:
                body = _decoded(headers, body, self._limit)
            except WireError as exc:
                waiter.set_exception(exc)
                return
        waiter.set_result(Reply(self._status, headers, body))

    def _fail(self, error: WireError | TimeoutError) -> None:
        waiter = self._waiter
        self._parser = None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self.pool.forget(self)


class _Oversized(Exception):
    """Raised inside the parser's callback to stop reading a body past the cap."""


def _delimited(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether the body ends by itself (a Content-Length, or chunked as the last transfer
    coding) rather than with the connection (RFC 9112 6.3, as llhttp reads it)."""
    if any(name.lower() == "content-length" for name, _value in headers):
        return True
    codings = _transfer_codings(headers)
    return bool(codings) and codings[-1] == "chunked"


def _persistent(version: str, headers: Sequence[tuple[str, str]]) -> bool:
    """Whether the connection stays open after a response without a body (RFC 9112
    9.3): on HTTP/1.1 unless ``Connection: close``, on 1.0 only with ``keep-alive``."""
    options = set(_tokens(headers, "connection"))
    if version == "1.1":
        return "close" not in options
    return version == "1.0" and "keep-alive" in options and "close" not in options


def _transfer_codings(headers: Sequence[tuple[str, str]]) -> list[str]:
    return _tokens(headers, "transfer-encoding")


def _tokens(headers: Sequence[tuple[str, str]], wanted: str) -> list[str]:
    """The comma-separated tokens of every ``wanted`` header (lowercase name), in order."""
    values = (value for name, value in headers if name.lower() == wanted)
    return [t.strip().lower() for value in values for t in value.split(",") if t.strip()]


def _decoded(headers: Headers, body: bytes, limit: int) -> bytes | None:
    """The body with its Content-Encoding (gzip, deflate) undone, within the cap: we do
    not ask for compression, but an upstream may send it anyway."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, limit, 16 + zlib.MAX_WBITS, encoding)
    if encoding == "deflate":
        # RFC 9110 means zlib-wrapped; some servers send it raw (as browsers accept).
        wbits = zlib.MAX_WBITS if _zlib_header(body) else -zlib.MAX_WBITS
        return _inflate(body, limit, wbits, encoding)
    raise BadResponse(f"unsupported Content-Encoding {encoding!r}")


def _zlib_header(body: bytes) -> bool:
    """A zlib stream's two header bytes (RFC 1950: deflate, any window, a valid check)."""
    return len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0


def _inflate(body: bytes, limit: int, wbits: int, encoding: str) -> bytes | None:
    """Every member (gzip allows several, one after the other), or None past the cap."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while rest:
        inflater = zlib.decompressobj(wbits)
        try:
            plain = inflater.decompress(rest, limit + 1 - size)
        except zlib.error:
            raise BadResponse(f"body is not valid {encoding}") from None
        size += len(plain)
        if size > limit:
            return None  # a bomb stops at the cap like any oversized body
        if not inflater.eof:  # cut short: what came is not the whole body
            raise BadResponse(f"body is not valid {encoding} (it ends early)")
        parts.append(plain)
        rest = inflater.unused_data
    return b"".join(parts)


# Who waits for a connection, to which origin: handed a connection, or None (try again).
_Waiter = tuple[tuple[str, str, int], "asyncio.Future[_Connection | None]"]


class Pool:
    """The connections of one upstream (egress scope): at most ``scope.max_connections``
    open at once, idle ones reused newest first and closed after KEEPALIVE_SECONDS."""

    def __init__(
        self,
        scope: EgressScope,
        *,
        tls: ssl.SSLContext,
        resolve: Resolve,
        connect_timeout: float,
    ) -> None:
        self.scope = scope
        self._tls = tls
        self._resolve = resolve
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._opening = 0
        self._waiters: deque[_Waiter] = deque()
        self._held = 0  # waiters woken for a freed place, not yet back to claim it
        self._sweep: asyncio.TimerHandle | None = None
        self.busy = 0
        self.closed = False

    @property
    def open_count(self) -> int:
        return len(self._open) + self._opening

    @property
    def in_use(self) -> int:
        idle = sum(len(c) for c in self._idle.values())
        return len(self._open) - idle

    async def acquire(self, origin: tuple[str, str, int], deadline: float) -> _Connection:
        """An idle connection at once, else a new one or the next one freed, by ``deadline``
        (loop time; only these slow paths arm a timer). Waiters are served in order: a
        connection released while some wait is handed to the first of them for its origin,
        and a place freed is held for the waiter woken for it, never left for a newcomer."""
        connection = self._take_idle(origin)
        if connection is not None:
            return connection
        async with asyncio.timeout_at(deadline):
            return await self._acquire_slowly(origin)

    async def _acquire_slowly(self, origin: tuple[str, str, int]) -> _Connection:
        woken = False  # a waiter woken without a connection keeps its place at the front
        while True:
            connection = self._take_idle(origin)
            if connection is not None:
                return connection
            if self._may_open():
                return await self._connect(origin)
            waiter: _Waiter = (origin, asyncio.get_running_loop().create_future())
            if woken:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            handed = await self._wait(waiter)
            if handed is not None and not handed.closed:
                return handed
            woken = True

    def _may_open(self) -> bool:
        # Places held for woken waiters (``_held``) are theirs: a newcomer does not take them.
        if self.open_count + self._held < self.scope.max_connections:
            return True
        return self._close_other_idle()

    async def _wait(self, waiter: _Waiter) -> _Connection | None:
        """A connection handed over, or None: a place opened up, held for us (try again)."""
        future = waiter[1]
        try:
            handed = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                handed = future.result()
                if handed is not None:
                    self.release(handed)  # handed over as it left: to the next in line
                else:
                    self._held -= 1
                    self._wake()  # woken as it left: the turn goes to the next in line
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        if handed is None:
            self._held -= 1
        return handed

    def release(self, connection: _Connection) -> None:
        """Back to the pool if it can carry another request (to the first waiter for its
        origin, if any), else closed."""
        if connection.closed or self.closed or self.scope.max_connections <= 0:
            connection.close()  # its place is freed (and a waiter woken) by forget, once
            return
        connection.used = True
        connection.idle_since = asyncio.get_running_loop().time()
        if self._hand_over(connection):
            return
        self._idle.setdefault(connection.origin, []).append(connection)
        self._arm_sweep()
        self._wake()

    def _hand_over(self, connection: _Connection) -> bool:
        for waiter in self._waiters:
            origin, future = waiter
            if origin == connection.origin and not future.done():
                self._waiters.remove(waiter)
                future.set_result(connection)
                return True
        return False

    def forget(self, connection: _Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            idle = self._idle.get(connection.origin)
            if idle and connection in idle:
                idle.remove(connection)
            self._wake()

    def close(self) -> None:
        """Close every connection (at shutdown, in-flight ones too); nothing is pooled after."""
        self.closed = True
        for connection in list(self._open):
            connection.close()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_SECONDS:
                return connection
            connection.close()
        return None

    def _close_other_idle(self) -> bool:
        """At the limit with idle connections to other origins of this upstream (a
        redirect's storage host, say): close the oldest to make room."""
        for idle in self._idle.values():
            if idle:
                idle.pop(0).close()
                return True
        return False

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        _scheme, host, port = origin
        self._opening += 1
        try:
            addresses = await self._addresses(host, port)
            connection = await self._dial(origin, addresses)
        finally:
            self._opening -= 1
            self._wake()
        self._open.add(connection)
        return connection

    async def _addresses(self, host: str, port: int) -> list[str]:
        """What the egress rule lets this connection reach; a name that does not resolve
        is a connection that cannot be made (the refusal itself goes up as it is)."""
        try:
            return await guarded_addresses(host, port, self._resolve)
        except EgressRefusedError:
            raise
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
            raise ConnectFailed(f"cannot resolve {host}", exc) from exc

    async def _dial(self, origin: tuple[str, str, int], addresses: list[str]) -> _Connection:
        scheme, host, port = origin
        tls = self._tls if scheme == "https" else None
        last: BaseException | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _transport, connection = await open_connection(
                        lambda: _Connection(self, origin),
                        address,
                        port,
                        tls=tls,
                        server_hostname=host if tls is not None else None,
                    )
                return connection
            except (OSError, ssl.SSLError) as exc:
                last = exc
        detail = f" ({last.strerror or type(last).__name__})" if isinstance(last, OSError) else ""
        raise ConnectFailed(f"cannot connect{detail}", last)

    def _wake(self) -> None:
        while self._waiters:
            _origin, future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                self._held += 1
                return

    def _arm_sweep(self) -> None:
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(KEEPALIVE_SECONDS, self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._sweep = None
        now = asyncio.get_running_loop().time()
        for idle in self._idle.values():
            for connection in [c for c in idle if now - c.idle_since >= KEEPALIVE_SECONDS]:
                connection.close()
        if any(self._idle.values()):
            self._arm_sweep()


class Wire:
    """Every upstream's pool, made on first use, the least recently used dropped past
    ``max_pools`` (pools of upstreams gone, or of TestUpstream's unsaved ones)."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        tls: ssl.SSLContext,
        max_pools: int,
        resolve: Resolve = system_resolve,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.tls = tls
        self._max_pools = max_pools
        self._resolve = resolve
        self.pools: OrderedDict[str, Pool] = OrderedDict()

    def pool_for(self, scope: EgressScope) -> Pool:
        pool = self.pools.get(scope.key)
        if pool is None:
            pool = self.pools[scope.key] = Pool(
                scope,
                tls=self.tls,
                resolve=self._resolve,
                connect_timeout=self.connect_timeout,
            )
            self._drop_idle_pools()
        else:
            self.pools.move_to_end(scope.key)
        return pool

    def _drop_idle_pools(self) -> None:
        for key in list(self.pools)[: max(len(self.pools) - self._max_pools, 0)]:
            if self.pools[key].busy:
                continue
            self.pools.pop(key).close()

    async def request(self, request: Request, *, seconds: float, scope: EgressScope) -> Reply:
        """One request, no redirect followed, within ``seconds`` in all (waiting for a
        connection, connecting, the response and its body)."""
        pool = self.pool_for(scope)
        url = request.url
        origin = (url.scheme, url.raw_host or "", url.port or default_port(url.scheme))
        head, body = serialise(request)
        deadline = asyncio.get_running_loop().time() + seconds
        pool.busy += 1
        try:
            return await self._send_on_pool(pool, origin, request, (head, body), deadline)
        finally:
            pool.busy -= 1

    async def _send_on_pool(
        self,
        pool: Pool,
        origin: tuple[str, str, int],
        request: Request,
        wire_bytes: tuple[bytes, bytes],
        deadline: float,
    ) -> Reply:
        for attempt in (1, 2):
            connection = await pool.acquire(origin, deadline)
            reused = connection.used
            try:
                reply = await connection.exchange(request, *wire_bytes, deadline)
            except ConnectionDropped:
                # A pooled connection the upstream closed as we picked it: sent again once,
                # on a new connection (nothing of a response had come back).
                if attempt == 1 and reused and connection.dropped_before_reply:
                    continue
                raise
            pool.release(connection)
            return reply
        raise AssertionError("unreachable")

    def close(self) -> None:
        pools, self.pools = list(self.pools.values()), OrderedDict()
        for pool in pools:
            pool.close()


def serialise(request: Request) -> tuple[bytes, bytes]:
    """The request head and body as bytes; a header with a line break (a token from a
    hostile token server, say) is refused rather than split into two headers."""
    url = request.url
    body = urlencode(request.data).encode() if request.data else b""
    lines = [f"{request.method} {url.raw_path_qs} HTTP/1.1", f"Host: {url.host_port_subcomponent}"]
    names = set()
    for name, value in request.headers.items():
        if _unsafe(name) or _unsafe(value):
            raise BadResponse(f"header {name!r} holds a line break; not sent")
        names.add(name.lower())
        lines.append(f"{name}: {value}")
    if "user-agent" not in names:
        lines.append(f"User-Agent: {USER_AGENT}")
    if body:
        lines.append("Content-Type: application/x-www-form-urlencoded")
        lines.append(f"Content-Length: {len(body)}")
    elif request.method in ("POST", "PUT"):
        lines.append("Content-Length: 0")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body
    except UnicodeEncodeError:
        raise BadResponse("a request header is not latin-1 text; not sent") from None


def _unsafe(text: str) -> bool:
    return "\n" in text or "\r" in text or "\x00" in text
