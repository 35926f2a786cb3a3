"""The HTTP plumbing every upstream call shares.

One long-lived httpx.AsyncClient with one connection pool per upstream
(connection reuse matters on the hot path; a slow upstream fills only its own),
every connection checked by the egress policy (oci/egress.py), bodies read with
a cap, redirects followed by hand so that ``Authorization`` and a form body
never travel to another host, at most ``max_in_flight_per_upstream`` exchanges
per upstream, a hard deadline on each, and a time budget that respects both the
configured timeout and the caller's gRPC deadline.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from httpcore._utils import is_socket_readable

from vregistry_server.errors import (
    EgressRefused,
    RealmRefused,
    UpstreamProtocolError,
    UpstreamUnreachable,
)
from vregistry_server.oci.egress import (
    EGRESS_REFUSED,
    STRICT_SCOPE,
    EgressScope,
    current_scope,
    default_port,
    enter_scope,
    literal_addresses,
)
from vregistry_server.oci.realm_policy import GuardedNetworkBackend

MAX_BODY_BYTES = 64 * 1024
MAX_REDIRECTS = 3
DEADLINE_MARGIN_SECONDS = 0.05
MAX_ABANDONED_EXCHANGES = 2000
MAX_POOLS = 1024
USER_AGENT = "vregistry/0.1 (+https://github.com/vregistry/vregistry)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def make_client(*, connect_timeout: float, request_timeout: float) -> httpx.AsyncClient:
    # trust_env=False: no proxy or .netrc from the environment can inject credentials.
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(request_timeout, connect=connect_timeout),
        transport=UpstreamTransports(),
        headers={"User-Agent": USER_AGENT},
    )


def guarded_transport(max_connections: int = 200) -> httpx.AsyncHTTPTransport:
    """httpx's transport, with connections that obey the egress policy (oci/egress.py).

    httpx does not expose httpcore's network_backend, so it is set on the pool
    it built (httpx is pinned; tests/unit/test_realm_policy.py checks this holds).
    """
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=min(max_connections, 50),
        )
    )
    transport._pool._network_backend = PooledNetworkBackend()
    return transport


class PooledNetworkBackend(GuardedNetworkBackend):
    """The guarded backend, whose streams answer httpcore's "is it readable?" cheaply.

    httpcore asks that of every idle connection in the pool each time a request is
    assigned one (``has_expired``), and anyio answers by building its whole table of socket
    attributes first: with 16 idle connections that was most of the pool's CPU per request
    in the cold ResolveUpstream profile (benchmarks/RESULTS.md).
    """

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await super().connect_tcp(host, port, timeout, local_address, socket_options)
        return _ReadableStream(stream)


class _ReadableStream(httpcore.AsyncNetworkStream):
    """A network stream as it is, with the raw socket looked up once (it never changes)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
    ) -> httpcore.AsyncNetworkStream:
        return _ReadableStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # What httpcore's AnyIOStream answers, without rebuilding anyio's attribute table.
            return is_socket_readable(self._socket)
        return self._inner.get_extra_info(info)


class UpstreamTransports(httpx.AsyncBaseTransport):
    """One connection pool per upstream (the key of the request's egress scope).

    A tarpit upstream then fills only its own pool, and a connection opened under one
    upstream's egress rule is never reused by another upstream whose rule is stricter
    (an API upstream on the same origin as an operator one).
    """

    def __init__(self, max_pools: int = MAX_POOLS) -> None:
        self._pools: OrderedDict[str, httpx.AsyncHTTPTransport] = OrderedDict()
        self._max_pools = max_pools
        self._closing: set[asyncio.Future[None]] = set()

    def pool_for(self, scope: EgressScope) -> httpx.AsyncHTTPTransport:
        pool = self._pools.get(scope.key)
        if pool is None:
            pool = self._pools[scope.key] = guarded_transport(scope.max_connections)
            self._drop_idle_pools()
        else:
            self._pools.move_to_end(scope.key)
        return pool

    def _drop_idle_pools(self) -> None:
        # Least recently used first: pools of upstreams gone (or of TestUpstream's unsaved
        # ones) with no request in flight; their idle connections are closed in the background.
        for key in list(self._pools)[: max(len(self._pools) - self._max_pools, 0)]:
            pool = self._pools[key]
            if pool._pool._requests:
                continue
            del self._pools[key]
            closing = asyncio.ensure_future(pool.aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.pool_for(current_scope()).handle_async_request(request)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            await pool.aclose()


@dataclass(frozen=True, slots=True)
class Budget:
    """How long an operation may take: the configured total, cut by the caller's deadline."""

    deadline: float  # time.monotonic() value
    caller_limited: bool = False  # the caller's deadline, not our timeout, sets it

    @classmethod
    def start(cls, total_seconds: float, caller_remaining: float | None = None) -> Budget:
        seconds = total_seconds
        if caller_remaining is not None:
            # Finish a little before the caller's deadline, so it gets our answer (say,
            # "upstream 1 timed out, upstream 2 has it") instead of DEADLINE_EXCEEDED.
            margin = min(DEADLINE_MARGIN_SECONDS, caller_remaining * 0.1)
            seconds = min(total_seconds, caller_remaining - margin)
        limited = caller_remaining is not None and seconds < total_seconds
        return cls(time.monotonic() + max(seconds, 0.0), limited)

    def ran_out_for_the_caller(self) -> bool:
        """Did the caller's own deadline end the work (rather than an upstream failing)?"""
        return self.caller_limited and self.remaining() <= 0.001

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self) -> asyncio.Timeout:
        return asyncio.timeout_at(asyncio.get_running_loop().time() + max(self.remaining(), 0.0))


@dataclass(frozen=True, slots=True)
class Response:
    """A response whose body, if read, is at most MAX_BODY_BYTES."""

    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL

    def header_values(self, name: str) -> list[str]:
        return self.headers.get_list(name)


async def read_capped(
    response: httpx.Response, limit: int = MAX_BODY_BYTES, *, discard_oversized: bool = False
) -> bytes:
    """The body, at most ``limit`` bytes; a larger one raises, or with ``discard_oversized``
    reads as empty (the rest is never read: closing the response drops the connection)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if discard_oversized:
                return b""
            raise UpstreamProtocolError(
                f"response from {_origin(response.url)} is larger than {limit} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


def describe_transport_error(exc: Exception, url: httpx.URL | str) -> str:
    origin = _origin(httpx.URL(str(url)))
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"timed out talking to {origin}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {origin}"
    return f"connection to {origin} failed ({type(exc).__name__})"


@asynccontextmanager
async def transport_errors(url: httpx.URL | str) -> AsyncIterator[None]:
    """Turn connection failures and timeouts into UpstreamUnreachable."""
    try:
        yield
    except (httpx.TransportError, TimeoutError) as exc:
        if isinstance(exc, httpx.ConnectError) and EGRESS_REFUSED in str(exc):
            # The guarded backend refused before opening a socket: nothing was sent.
            raise EgressRefused(f"{exc}; nothing was sent") from None
        raise UpstreamUnreachable(describe_transport_error(exc, url)) from None


# Exchanges whose caller stopped waiting (deadline, or a probe that lost the race):
# held here until they end by httpx's own timeouts, so they are never garbage-collected
# half-way and their errors are always retrieved.
_abandoned: set[asyncio.Task[Response]] = set()
# Per client and upstream (egress scope key): a slot for every exchange not finished yet,
# abandoned ones included. Per client, so that a client (and its event loop) gone takes its
# slots along.
_slots: weakref.WeakKeyDictionary[httpx.AsyncClient, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)

# Called with each redirect target before it is requested (e.g. the realm rule).
RedirectCheck = Callable[[httpx.URL], None]


async def _take_slot(
    client: httpx.AsyncClient, scope: EgressScope, budget: Budget, url: str | httpx.URL
) -> asyncio.Semaphore:
    """Wait, within the budget, until the upstream has fewer than ``max_in_flight``
    exchanges; a tarpit's callers wait for the tarpit, nobody else does."""
    slots = _slots.setdefault(client, {})
    slot = slots.get(scope.key)
    if slot is None:
        slot = slots[scope.key] = asyncio.Semaphore(scope.max_in_flight)
    if not slot.locked():  # a free slot is taken at once: no timer to arm and cancel
        await slot.acquire()
        return slot
    try:
        async with budget.timeout():
            await slot.acquire()
    except TimeoutError:
        raise UpstreamUnreachable(
            f"{scope.max_in_flight} requests to {_origin(httpx.URL(str(url)))} are still in "
            "flight (settings.max_in_flight_per_upstream) and none ended within the time budget"
        ) from None
    return slot


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    budget: Budget,
    headers: dict[str, str] | None = None,
    params: list[tuple[str, str]] | None = None,
    data: dict[str, str] | None = None,
    read_body: bool = True,
    follow_redirects: bool = True,
    discard_oversized_body: bool = False,
    scope: EgressScope = STRICT_SCOPE,
    redirect_check: RedirectCheck | None = None,
) -> Response:
    """Send a request within the budget, following redirects safely.

    Every connection runs under ``scope`` (the upstream's egress rule, pool and
    limits): at most ``scope.max_in_flight`` exchanges per upstream, abandoned ones
    included (more wait for a slot within their own budget, then UNAVAILABLE: a tarpit's
    callers wait for the tarpit, nobody else does), and
    each exchange is cancelled, closing its connection, ``scope.hard_deadline_seconds``
    after it started even when its caller left long ago. ``redirect_check`` vets each
    redirect target; a redirect of a request with a form body to another host is refused
    (the body may hold a password), never replayed there.

    Authorization is dropped as soon as a redirect leaves the original host,
    and an https -> http downgrade is refused. A body is read up to MAX_BODY_BYTES;
    a larger one is an UpstreamProtocolError, or with ``discard_oversized_body`` (for
    callers that only need the status) an empty body.

    The exchange is never cancelled in the middle: httpcore 1.0 can lose a pooled
    connection when a task is cancelled while it connects or closes (encode/httpcore
    #1093, #1115), which under load filled the pool with sockets in CLOSE-WAIT. So
    it runs on its own task, bounded by httpx timeouts set from the budget, and a
    caller that stops waiting (its deadline, or a probe that lost the race) simply
    leaves it to finish.
    """
    if len(_abandoned) >= MAX_ABANDONED_EXCHANGES:
        # Upstreams are not answering and callers keep giving up: shed load rather
        # than queue ever more requests behind them.
        raise UpstreamUnreachable(
            f"too many unanswered upstream requests in flight; not contacting {_origin(httpx.URL(str(url)))}"
        )
    slot = await _take_slot(client, scope, budget, url)
    try:
        exchange = _start_exchange(
            client,
            method,
            url,
            budget=budget,
            headers=headers,
            params=params,
            data=data,
            read_body=read_body,
            follow_redirects=follow_redirects,
            discard_oversized_body=discard_oversized_body,
            scope=scope,
            redirect_check=redirect_check,
        )
    except BaseException:
        slot.release()
        raise
    _bound(exchange, scope, slot)
    try:
        async with budget.timeout():
            return await asyncio.shield(exchange)
    except TimeoutError:
        _abandon(exchange)
        raise UpstreamUnreachable(describe_transport_error(TimeoutError(), url)) from None
    except asyncio.CancelledError:
        _abandon(exchange)
        task = asyncio.current_task()
        if exchange.cancelled() and task is not None and not task.cancelling():
            # The exchange hit its hard deadline while we still waited: a timeout, not
            # our caller cancelling us.
            raise UpstreamUnreachable(describe_transport_error(TimeoutError(), url)) from None
        raise


def _start_exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    budget: Budget,
    headers: dict[str, str] | None,
    params: list[tuple[str, str]] | None,
    data: dict[str, str] | None,
    read_body: bool,
    follow_redirects: bool,
    discard_oversized_body: bool,
    scope: EgressScope,
    redirect_check: RedirectCheck | None,
) -> asyncio.Task[Response]:
    remaining = budget.remaining()
    if remaining <= 0:
        raise UpstreamUnreachable(f"timed out before contacting {_origin(httpx.URL(str(url)))}")
    # No pool timeout: httpcore's own pool-wait timeout is a cancellation and strands
    # the connection it was about to hand over (#1093); the wait is bounded by the
    # budget below instead, and the other timeouts end the exchange soon after.
    timeout = httpx.Timeout(
        remaining, connect=min(remaining, client.timeout.connect or remaining), pool=None
    )
    return asyncio.ensure_future(
        _exchange(
            client,
            method,
            httpx.URL(str(url)),
            http_timeout=timeout,
            headers=dict(headers or {}),
            params=params,
            data=data,
            read_body=read_body,
            follow_redirects=follow_redirects,
            discard_oversized_body=discard_oversized_body,
            scope=scope,
            redirect_check=redirect_check,
        )
    )


def _bound(exchange: asyncio.Task[Response], scope: EgressScope, slot: asyncio.Semaphore) -> None:
    """Hold the upstream's slot until the exchange ends, and end it by the hard deadline.

    The cap is a cancellation of the exchange's own task: httpcore closes the connection
    of a response whose reading is cancelled (a trickling tarpit is cut off here), where
    the per-read timeouts alone would let one byte every few seconds go on forever.
    """
    cap = asyncio.get_running_loop().call_later(scope.hard_deadline_seconds, exchange.cancel)

    def finished(_task: asyncio.Task[Response]) -> None:
        cap.cancel()
        slot.release()

    exchange.add_done_callback(finished)


def _abandon(exchange: asyncio.Task[Response]) -> None:
    if exchange.done():
        if not exchange.cancelled():
            exchange.exception()
        return
    _abandoned.add(exchange)

    def finished(task: asyncio.Task[Response]) -> None:
        _abandoned.discard(task)
        if not task.cancelled():
            task.exception()

    exchange.add_done_callback(finished)


async def _exchange(
    client: httpx.AsyncClient,
    method: str,
    current: httpx.URL,
    *,
    http_timeout: httpx.Timeout,
    headers: dict[str, str],
    params: list[tuple[str, str]] | None,
    data: dict[str, str] | None,
    read_body: bool,
    follow_redirects: bool,
    discard_oversized_body: bool,
    scope: EgressScope,
    redirect_check: RedirectCheck | None,
) -> Response:
    # This task's own context: the scope picks the upstream's pool and rule for every
    # connection of every hop, and does not leak to the caller.
    enter_scope(scope)
    original = current
    async with transport_errors(current):
        for _hop in range(MAX_REDIRECTS + 1):
            await _check_literal(scope, current)
            request = client.build_request(
                method,
                current,
                headers=headers,
                params=tuple(params) if params else None,
                data=data,
                timeout=http_timeout,
            )
            response = await _send_once(client, request)
            try:
                location = response.headers.get("location")
                if follow_redirects and response.status_code in REDIRECT_STATUSES and location:
                    target = current.join(location)
                    check_redirect(current, target)
                    if redirect_check is not None:
                        redirect_check(target)
                    if not same_host(target, original):
                        _refuse_body_elsewhere(response.status_code, data, current, target)
                        headers.pop("Authorization", None)
                        headers.pop("authorization", None)
                    if response.status_code == 303 and method != "HEAD":
                        method, data = "GET", None
                    current, params = target, None
                    continue
                body = b""
                if method == "HEAD":
                    # No body comes, but httpcore returns the connection to the pool only
                    # once it has seen the end of the message: without this read every
                    # probe opened (and shook hands on) a new connection.
                    await response.aread()
                elif read_body:
                    body = await read_capped(response, discard_oversized=discard_oversized_body)
                return Response(response.status_code, response.headers, body, response.url)
            finally:
                await response.aclose()
    raise UpstreamProtocolError(f"more than {MAX_REDIRECTS} redirects from {_origin(current)}")


async def _send_once(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """``client.send(request, stream=True)`` without the parts of it this module never uses.

    No auth flow, redirects or event hooks are set on the client (redirects are followed
    by hand above), and its cookie jar is left out: one client serves every caller, so an
    upstream's Set-Cookie is neither kept nor sent back. What remains is the transport
    (the client's mounts, if any, still choose it); the rest cost CPU on every request
    (benchmarks/RESULTS.md, cold ResolveUpstream). httpx is pinned, and
    tests/unit/test_http_send.py checks the private method this relies on.
    """
    transport = client._transport_for_url(request.url)
    response = await transport.handle_async_request(request)
    response.request = request
    return response


@functools.lru_cache(maxsize=1024)
def _literal(host: str) -> tuple[str, ...] | None:
    """``literal_addresses`` memoised (every hop asks it; an answer never changes)."""
    addresses = literal_addresses(host)
    return None if addresses is None else tuple(addresses)


async def _check_literal(scope: EgressScope, url: httpx.URL) -> None:
    """An IP-literal host is judged before the pool is asked: a pooled connection is
    never reused for an address the scope refuses (names are judged in connect_tcp)."""
    literal = _literal(url.host)
    addresses = None if literal is None else list(literal)
    if addresses is None:
        return
    port = url.port or default_port(url.scheme)
    refusal = scope.refusal(url.host, port, addresses, await scope.classes_for(url.host, port))
    if refusal is not None:
        raise EgressRefused(f"{refusal}; nothing was sent")


def _refuse_body_elsewhere(
    status: int, data: dict[str, str] | None, current: httpx.URL, target: httpx.URL
) -> None:
    """A 307/308 replays the body; to another host that would hand it the OAuth2 form
    (password, refresh token). Refused rather than sent without a body: a body-less token
    POST could only fail, and the redirect itself is the hostile part."""
    if data and status in {307, 308}:
        raise RealmRefused(
            "redirect",
            f"the token server at {_origin(current)} redirected the token request with its form "
            f"to another host ({_origin(target)}); the form and credentials were not sent there",
        )


def same_host(a: httpx.URL, b: httpx.URL) -> bool:
    """Would Authorization meant for ``a`` stay where it belongs at ``b``?"""
    return (a.host, a.port) == (b.host, b.port)


def check_redirect(current: httpx.URL, target: httpx.URL) -> None:
    """A redirect must stay on http(s) and never downgrade https to http."""
    if target.scheme not in {"http", "https"}:
        raise UpstreamProtocolError(f"redirect from {_origin(current)} to a non-http URL")
    if current.scheme == "https" and target.scheme == "http":
        raise UpstreamProtocolError(f"redirect from {_origin(current)} downgrades https to http")


_check_redirect = check_redirect  # the name tests/unit/test_realm_policy.py imports
