"""The HTTP plumbing every upstream call shares.

One long-lived client with one connection pool per upstream (connection reuse matters on
the hot path; a slow upstream fills only its own), every connection checked by the
egress policy before its socket is opened, bodies read with a cap, redirects followed by
hand so that ``Authorization`` and a form body never travel to another host, at most
``max_in_flight_per_upstream`` exchanges per upstream, a hard deadline on each, and a
time budget that respects both the configured timeout and the caller's gRPC deadline.

The wire itself is oci/wire.py (asyncio transports and llhttp): httpx before it cost
several times its CPU per request and aiohttp a third more (benchmarks/RESULTS.md, issue
11, "HTTP clients" and "A leaner wire"). httpx.URL is still the URL type callers pass
around; only the wire moved.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import certifi
import httpx
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from vregistry_server.errors import (
    EgressRefused,
    RealmRefused,
    UpstreamProtocolError,
    UpstreamUnreachable,
)
from vregistry_server.oci.egress import (
    STRICT_SCOPE,
    EgressScope,
    default_port,
    enter_scope,
    literal_addresses,
)
from vregistry_server.oci.realm_policy import EgressRefusedError, Resolve, system_resolve
from vregistry_server.oci.wire import USER_AGENT as USER_AGENT  # what send's callers see
from vregistry_server.oci.wire import ConnectFailed, Headers, Request, Wire, WireError
from vregistry_server.oci.wire import Reply as Reply

MAX_BODY_BYTES = 64 * 1024
MAX_REDIRECTS = 3
DEADLINE_MARGIN_SECONDS = 0.05
MAX_ABANDONED_EXCHANGES = 2000
MAX_POOLS = 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class HttpClient(Protocol):
    """What ``send`` needs of a client: UpstreamClient, or a mock in the unit tests."""

    connect_timeout: float

    async def fetch(
        self,
        method: str,
        url: URL,
        *,
        headers: dict[str, str],
        data: dict[str, str] | None,
        seconds: float,
        scope: EgressScope,
        read_body: bool,
        limit: int,
    ) -> Reply: ...

    async def aclose(self) -> None: ...


def make_client(*, connect_timeout: float, request_timeout: float) -> UpstreamClient:
    return UpstreamClient(connect_timeout=connect_timeout, request_timeout=request_timeout)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The CAs upstream certificates are checked against: certifi's bundle, as httpx used.

    One context per process, loaded when the first client is made (before the server
    serves): loading the bundle takes ~25 ms of CPU, which on first use inside a cold burst
    stalled the event loop for every caller at once (benchmarks/RESULTS.md, "first burst").
    """
    return ssl.create_default_context(cafile=certifi.where())


class UpstreamClient:
    """One connection pool per upstream (the key of the request's egress scope).

    A tarpit upstream then fills only its own pool, and a connection opened under one
    upstream's egress rule is never reused by another upstream whose rule is stricter
    (an API upstream on the same origin as an operator one). No cookie is kept or sent
    (one client serves every caller), nothing comes from the environment (no proxy or
    .netrc can inject credentials), and no redirect is followed here (``send`` does it).
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        request_timeout: float,
        max_pools: int = MAX_POOLS,
        resolve: Resolve = system_resolve,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.wire = Wire(
            connect_timeout=connect_timeout, tls=tls_context(), max_pools=max_pools, resolve=resolve
        )

    async def fetch(
        self,
        method: str,
        url: URL,
        *,
        headers: dict[str, str],
        data: dict[str, str] | None,
        seconds: float,
        scope: EgressScope,
        read_body: bool,
        limit: int,
    ) -> Reply:
        """One request, no redirect followed. A HEAD's response or a body read to its end
        gives the connection back to the pool; a body left unread (or cut at the cap)
        closes it."""
        request = Request(method, url, headers, data, read_body, limit)
        return await self.wire.request(
            request, seconds=min(seconds, self.request_timeout), scope=scope
        )

    async def aclose(self) -> None:
        self.wire.close()

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def make_headers(items: Any = ()) -> Headers:
    """A read-only case-insensitive header map (what Response.headers is), from a mapping
    or (name, value) pairs: for mocks and tests."""
    return CIMultiDictProxy(CIMultiDict(items))


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
    headers: Headers
    body: bytes
    url: URL

    def header_values(self, name: str) -> list[str]:
        return self.headers.getall(name, [])


def _origin(url: object) -> str:
    """scheme://host[:port] of a URL (for messages: never its path, query or userinfo)."""
    parsed = httpx.URL(str(url))
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii', 'replace')}"


def describe_transport_error(exc: BaseException, url: object) -> str:
    origin = _origin(url)
    if isinstance(exc, TimeoutError):
        return f"timed out talking to {origin}"
    if isinstance(exc, ConnectFailed):
        return f"cannot connect to {origin}"
    if isinstance(exc, WireError):
        return f"connection to {origin} failed ({exc})"
    return f"connection to {origin} failed ({type(exc).__name__})"


def transport_error(
    exc: WireError | OSError | TimeoutError, url: object
) -> EgressRefused | UpstreamUnreachable:
    """The error a connection failure or a timeout is reported as (an except clause in
    ``_exchange``, not a context manager: one generator less per request)."""
    if isinstance(exc, EgressRefusedError):
        # The egress rule refused before a socket was opened: nothing was sent.
        return EgressRefused(f"{exc}; nothing was sent")
    return UpstreamUnreachable(describe_transport_error(exc, url))


# Exchanges whose caller stopped waiting (deadline, or a probe that lost the race):
# held here until they end by their own timeouts, so they are never garbage-collected
# half-way and their errors are always retrieved.
_abandoned: set[asyncio.Task[Response]] = set()
# Per client and upstream (egress scope key): a slot for every exchange not finished yet,
# abandoned ones included. Per client, so that a client (and its event loop) gone takes its
# slots along.
_slots: weakref.WeakKeyDictionary[HttpClient, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)

# Called with each redirect target before it is requested (e.g. the realm rule).
RedirectCheck = Callable[[httpx.URL], None]


async def _take_slot(
    client: HttpClient, scope: EgressScope, budget: Budget, url: object
) -> asyncio.Semaphore:
    """Wait, within the budget, until the upstream has fewer than ``max_in_flight``
    exchanges; a tarpit's callers wait for the tarpit, nobody else does."""
    slots = _slots.get(client)  # not setdefault: that makes a weak reference every call
    if slots is None:
        slots = _slots[client] = {}
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
            f"{scope.max_in_flight} requests to {_origin(url)} are still in "
            "flight (settings.max_in_flight_per_upstream) and none ended within the time budget"
        ) from None
    return slot


async def send(
    client: HttpClient,
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

    The exchange runs on its own task, bounded by the request's timeouts set from the
    budget: a caller that stops waiting (its deadline, or a probe that lost the race)
    leaves it to finish, and its in-flight slot is held until it really has, so a
    tarpit cannot be handed more connections than ``max_in_flight`` by impatient callers.
    """
    if len(_abandoned) >= MAX_ABANDONED_EXCHANGES:
        # Upstreams are not answering and callers keep giving up: shed load rather
        # than queue ever more requests behind them.
        raise UpstreamUnreachable(
            f"too many unanswered upstream requests in flight; not contacting {_origin(url)}"
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
    loop = asyncio.get_running_loop()
    # What asyncio.shield and asyncio.timeout would do, with one future and one timer:
    # the waiter is ours, so cancelling it (our caller leaving) never touches the exchange.
    waiter: asyncio.Future[Response | None] = loop.create_future()
    _bound(exchange, scope, slot, waiter)
    expiry = loop.call_at(loop.time() + max(budget.remaining(), 0.0), _expire, waiter)
    try:
        response = await waiter
    except asyncio.CancelledError:  # our caller left: the exchange goes on without it
        _abandon(exchange)
        raise
    finally:
        expiry.cancel()
    if response is None:
        # The budget ran out, or the exchange hit its hard deadline while we still waited.
        _abandon(exchange)
        raise UpstreamUnreachable(describe_transport_error(TimeoutError(), url))
    return response


def _start_exchange(
    client: HttpClient,
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
        raise UpstreamUnreachable(f"timed out before contacting {_origin(url)}")
    target = URL(str(url))
    if params:
        target = target.extend_query(params)
    return asyncio.ensure_future(
        _exchange(
            client,
            method,
            target,
            seconds=remaining,
            headers=dict(headers or {}),
            data=data,
            read_body=read_body,
            follow_redirects=follow_redirects,
            discard_oversized_body=discard_oversized_body,
            scope=scope,
            redirect_check=redirect_check,
        )
    )


def _bound(
    exchange: asyncio.Task[Response],
    scope: EgressScope,
    slot: asyncio.Semaphore,
    waiter: asyncio.Future[Response | None],
) -> None:
    """Hold the upstream's slot until the exchange ends, end it by the hard deadline, and
    hand its outcome to ``waiter`` if the caller still waits (None: it was cut off).

    The cap is a cancellation of the exchange's own task: the wire closes the connection
    of a response whose reading is cancelled (a trickling tarpit is cut off here).
    """
    cap = asyncio.get_running_loop().call_later(scope.hard_deadline_seconds, exchange.cancel)

    def finished(task: asyncio.Task[Response]) -> None:
        cap.cancel()
        slot.release()
        if waiter.done():
            return  # the caller left: _abandon retrieves the outcome
        if task.cancelled():
            waiter.set_result(None)
        elif (error := task.exception()) is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(task.result())

    exchange.add_done_callback(finished)


def _expire(waiter: asyncio.Future[Response | None]) -> None:
    """The caller's budget is spent: stop waiting (the exchange is abandoned, not cut)."""
    if not waiter.done():
        waiter.set_result(None)


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
    client: HttpClient,
    method: str,
    current: URL,
    *,
    seconds: float,
    headers: dict[str, str],
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
    # One budget for every hop together: each redirect gets what the previous ones left.
    until = time.monotonic() + seconds
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            await _check_literal(scope, current)
            left = until - time.monotonic()
            if left <= 0:
                raise TimeoutError
            reply = await client.fetch(
                method,
                current,
                headers=headers,
                data=data,
                seconds=left,
                scope=scope,
                read_body=read_body,
                limit=MAX_BODY_BYTES,
            )
            location = reply.headers.get("location")
            if follow_redirects and reply.status in REDIRECT_STATUSES and location:
                target = _redirect_target(current, location)
                check_redirect(current, target)
                if redirect_check is not None:
                    redirect_check(httpx.URL(str(target)))
                if not same_host(target, original):
                    _refuse_body_elsewhere(data, current, target)
                    headers.pop("Authorization", None)
                    headers.pop("authorization", None)
                if reply.status == 303 and method != "HEAD":
                    method, data = "GET", None
                current = target
                continue
            body = reply.body
            if body is None:
                if not discard_oversized_body:
                    raise UpstreamProtocolError(
                        f"response from {_origin(current)} is larger than {MAX_BODY_BYTES} bytes"
                    )
                body = b""
            return Response(reply.status, reply.headers, body, current)
    except (WireError, EgressRefusedError, TimeoutError) as exc:
        raise transport_error(exc, original) from None
    raise UpstreamProtocolError(f"more than {MAX_REDIRECTS} redirects from {_origin(current)}")


@functools.lru_cache(maxsize=1024)
def _literal(host: str) -> tuple[str, ...] | None:
    """``literal_addresses`` memoised (every hop asks it; an answer never changes)."""
    addresses = literal_addresses(host)
    return None if addresses is None else tuple(addresses)


async def _check_literal(scope: EgressScope, url: URL) -> None:
    """An IP-literal host is judged before the pool is asked: a pooled connection is
    never reused for an address the scope refuses (new connections are judged in
    the wire, names and literals alike)."""
    host = url.raw_host or ""
    literal = _literal(host)
    if literal is None:
        return
    port = url.port or default_port(url.scheme)
    refusal = scope.refusal(host, port, list(literal), await scope.classes_for(host, port))
    if refusal is not None:
        raise EgressRefused(f"{refusal}; nothing was sent")


def _redirect_target(current: URL, location: str) -> URL:
    """Where a Location points, or UpstreamProtocolError for one that is no URL (a bad
    port, an unclosed IPv6 bracket, a host IDNA refuses): the upstream's fault, not ours."""
    try:
        target = current.join(URL(location))
        httpx.URL(str(target))  # what the redirect checks parse it with
        (target.raw_host or "").encode("idna")  # a name no resolver could be asked for
    except (ValueError, httpx.InvalidURL):  # UnicodeError (IDNA) is a ValueError
        raise UpstreamProtocolError(
            f"{_origin(current)} redirected to an invalid Location {location[:200]!r}"
        ) from None
    return target


def _refuse_body_elsewhere(data: dict[str, str] | None, current: URL, target: URL) -> None:
    """A request with a form (the OAuth2 token POST: password, refresh token) redirected to
    another host is refused, whatever the status: a 301, 302, 307 or 308 would send the form
    there again, and a 303 would turn the POST into a body-less GET that could only fail.
    The redirect itself is the hostile part."""
    if data:
        raise RealmRefused(
            "redirect",
            f"the token server at {_origin(current)} redirected the token request with its form "
            f"to another host ({_origin(target)}); the form and credentials were not sent there",
        )


class _AnyURL(Protocol):
    """httpx.URL (the callers') and yarl's URL (the wire's) alike."""

    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str | None: ...
    @property
    def port(self) -> int | None: ...


def same_host(a: _AnyURL, b: _AnyURL) -> bool:
    """Would Authorization meant for ``a`` stay where it belongs at ``b``?"""
    return (a.host, a.port or default_port(a.scheme)) == (b.host, b.port or default_port(b.scheme))


def check_redirect(current: _AnyURL, target: _AnyURL) -> None:
    """A redirect must stay on http(s) and never downgrade https to http."""
    if target.scheme not in {"http", "https"}:
        raise UpstreamProtocolError(f"redirect from {_origin(current)} to a non-http URL")
    if current.scheme == "https" and target.scheme == "http":
        raise UpstreamProtocolError(f"redirect from {_origin(current)} downgrades https to http")


_check_redirect = check_redirect  # the name tests/unit/test_realm_policy.py imports
