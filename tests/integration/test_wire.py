"""The upstream wire (oci/wire.py) against real sockets on 127.0.0.1.

A real docker-registry for the ordinary exchanges; for the shapes of HTTP/1.1 a registry
does not happen to send (a chunked or connection-delimited body, gzip nobody asked for, a
connection closed while pooled, a garbled status line), a socket server in this file that
writes exactly those bytes: real TCP, real parsing, no mock of the wire. Every test runs
on asyncio's loop and again on uvloop's (``--loop uvloop``), whose transports are its own
(``test_on_uvloop``).
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import uvloop
from yarl import URL

from tests.support.certs import make_pki
from tests.support.hostile import Conversation, SocketServer, read_head
from tests.support.processes import LOCALHOST
from tests.support.registry import RegistryServer
from vregistry_server.errors import UpstreamProtocolError, UpstreamUnreachable
from vregistry_server.oci import http, wire
from vregistry_server.oci.egress import AddressClass, EgressScope, enter_scope, leave_scope

LOOPBACK = frozenset({AddressClass.LOOPBACK})
LOOPBACK_SCOPE = EgressScope(key="test:wire", elsewhere_classes=LOOPBACK)


def answering(*responses: bytes, then_close: bool = False) -> Conversation:
    """Answer each request on a connection with the next of ``responses`` (the last one
    again once they run out), closing after the last if ``then_close``."""

    def conversation(conn: socket.socket) -> None:
        sent = 0
        while read_head(conn) is not None:
            conn.sendall(responses[min(sent, len(responses) - 1)])
            sent += 1
            if then_close and sent >= len(responses):
                return

    return conversation


@pytest.fixture
def serve() -> Iterator[Callable[..., SocketServer]]:
    servers: list[SocketServer] = []

    def start(conversation: Conversation, tls: ssl.SSLContext | None = None) -> SocketServer:
        servers.append(SocketServer(conversation, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def client() -> Iterator[wire.Wire]:
    token = enter_scope(LOOPBACK_SCOPE)
    made = wire.Wire(connect_timeout=2, tls=http.tls_context(), max_pools=8)
    yield made
    made.close()
    leave_scope(token)


async def get(
    client: wire.Wire,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    limit: int = 1024,
    read_body: bool = True,
    scope: EgressScope = LOOPBACK_SCOPE,
) -> wire.Reply:
    request = wire.Request(method, URL(url), headers or {}, None, read_body, limit)
    return await client.request(request, seconds=3, scope=scope)


def response(status: str, body: bytes = b"", *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_a_real_registry_is_asked_over_one_kept_connection(
    client: wire.Wire, open_registry: RegistryServer
) -> None:
    for method in ("HEAD", "GET", "HEAD", "GET"):
        reply = await get(client, f"{open_registry.url}/v2/", method=method)
        assert reply.status == 200
        assert reply.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
        assert reply.body == (b"" if method == "HEAD" else b"{}")
    missing = await get(client, f"{open_registry.url}/v2/library/nothing/manifests/latest")
    assert missing.status == 404 and missing.body and b"MANIFEST_UNKNOWN" in missing.body
    assert client.pool_for(LOOPBACK_SCOPE).open_count == 1


async def test_body_framings_chunked_and_connection_delimited(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    chunked = serve(
        answering(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
    )
    assert (await get(client, chunked.url)).body == b"hello world"
    assert (await get(client, chunked.url)).body == b"hello world"
    assert chunked.connections == 1, "a chunked response leaves the connection reusable"
    until_close = serve(answering(b"HTTP/1.0 200 OK\r\n\r\nall of it", then_close=True))
    assert (await get(client, until_close.url)).body == b"all of it"


async def test_connection_close_is_obeyed(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    server = serve(answering(response("200 OK", b"x", "Connection: close"), then_close=True))
    for _ in range(3):
        assert (await get(client, server.url)).body == b"x"
    assert server.connections == 3


async def test_a_head_answer_without_a_length_keeps_its_connection(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    """A HEAD response has no body whatever its headers say (RFC 9110 9.3.2), so one
    without Content-Length is still complete at its blank line: the connection is kept
    unless the response (or HTTP/1.0 without keep-alive) says it ends."""
    digest = "Docker-Content-Digest: sha256:" + "a" * 64
    bare = serve(answering(f"HTTP/1.1 200 OK\r\n{digest}\r\n\r\n".encode()))
    for _ in range(3):
        reply = await get(client, bare.url, method="HEAD")
        assert reply.status == 200 and reply.headers["docker-content-digest"].endswith("a" * 64)
    assert bare.connections == 1
    closing = serve(answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"))
    old = serve(answering(b"HTTP/1.0 200 OK\r\n\r\n"))
    old_kept = serve(answering(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"))
    for server in (closing, old, old_kept):
        for _ in range(2):
            assert (await get(client, server.url, method="HEAD")).status == 200
    assert (closing.connections, old.connections, old_kept.connections) == (2, 2, 1)


async def test_gzip_is_undone_and_a_bomb_stops_at_the_cap(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    small = serve(
        answering(response("200 OK", gzip.compress(b'{"token":"t"}'), "Content-Encoding: gzip"))
    )
    assert (await get(client, small.url)).body == b'{"token":"t"}'
    bomb = serve(
        answering(response("200 OK", gzip.compress(b"0" * 5_000_000), "Content-Encoding: gzip"))
    )
    assert (await get(client, bomb.url, limit=64 * 1024)).body is None
    odd = serve(answering(response("200 OK", b"abc", "Content-Encoding: br")))
    with pytest.raises(wire.BadResponse, match="Content-Encoding"):
        await get(client, odd.url)


async def test_an_oversized_body_is_not_read_and_its_connection_goes(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    server = serve(answering(response("200 OK", b"y" * 10_000)))
    assert (await get(client, server.url, limit=1000)).body is None
    assert (await get(client, server.url, limit=20_000)).body == b"y" * 10_000
    assert server.connections == 2
    # Only the status wanted: the body is never read, the connection is not kept.
    assert (await get(client, server.url, read_body=False)).status == 200
    assert client.pool_for(LOOPBACK_SCOPE).open_count == 0


async def test_a_line_break_in_a_header_is_never_sent(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    server = serve(answering(response("200 OK")))
    with pytest.raises(wire.BadResponse, match="line break"):
        await get(client, server.url, headers={"Authorization": "Bearer t\r\nX-Injected: 1"})
    await asyncio.sleep(0.3)
    assert server.connections == 0


async def test_garbage_is_a_protocol_error_and_huge_headers_are_refused(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    garbage = serve(answering(b"SMTP ready\r\n\r\n"))
    with pytest.raises(wire.BadResponse, match="malformed"):
        await get(client, garbage.url)
    huge = serve(answering(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n"))
    with pytest.raises(wire.BadResponse, match="headers larger"):
        await get(client, huge.url)
    switched = serve(answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"))
    with pytest.raises(wire.BadResponse, match="switched protocols"):
        await get(client, switched.url)


async def test_interim_responses_are_read_past(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    # 100 Continue and 103 Early Hints before the final response (RFC 9110 15.2): their
    # headers are not the response's, and the connection stays usable.
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    server = serve(
        answering(b"HTTP/1.1 100 Continue\r\n\r\n" + early + response("200 OK", b"final"))
    )
    for _ in range(2):
        reply = await get(client, server.url)
        assert (reply.status, reply.body) == (200, b"final")
        assert "Link" not in reply.headers
    assert server.connections == 1


async def test_a_closed_pool_keeps_nothing(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    server = serve(answering(response("200 OK", b"ok")))
    pool = client.pool_for(LOOPBACK_SCOPE)
    assert (await get(client, server.url)).body == b"ok"
    pool.close()
    assert pool.open_count == 0
    connection = await pool.acquire((("http", LOCALHOST, server.port)), 1e12)
    pool.release(connection)
    assert pool.open_count == 0, "released into a closed pool: closed, not kept"


async def test_a_freed_connection_goes_to_the_first_waiter_not_a_newcomer(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    server = serve(answering(response("200 OK", b"ok")))
    scope = EgressScope(key="test:fifo", elsewhere_classes=LOOPBACK, max_connections=1)
    pool = client.pool_for(scope)
    origin = ("http", LOCALHOST, server.port)
    held = await pool.acquire(origin, 1e12)
    waiting = asyncio.ensure_future(pool.acquire(origin, 1e12))
    await asyncio.sleep(0)  # queued for the only connection
    newcomer = asyncio.ensure_future(pool.acquire(origin, 1e12))  # runs before the waiter
    pool.release(held)
    assert await waiting is held
    await asyncio.sleep(0.05)
    assert not newcomer.done(), "the newcomer waits its turn"
    pool.release(held)
    assert await newcomer is held
    pool.release(held)
    # A waiter that leaves as the connection is handed to it passes it on.
    held = await pool.acquire(origin, 1e12)
    leaving = asyncio.ensure_future(pool.acquire(origin, 1e12))
    await asyncio.sleep(0)
    after = asyncio.ensure_future(pool.acquire(origin, 1e12))
    await asyncio.sleep(0)
    pool.release(held)
    leaving.cancel()
    assert await after is held
    assert leaving.cancelled() and pool.open_count == 1
    # A place freed by a connection that closed is held for the waiter woken for it.
    waiting = asyncio.ensure_future(pool.acquire(origin, 1e12))
    await asyncio.sleep(0)
    newcomer = asyncio.ensure_future(pool.acquire(origin, 1e12))
    held.close()
    fresh = await waiting
    assert fresh is not held and not fresh.closed
    await asyncio.sleep(0.05)
    assert not newcomer.done(), "the newcomer waits its turn"
    pool.release(fresh)
    assert await newcomer is fresh
    # Closed by the upstream mid-exchange, then given back: one place freed, one waiter woken.
    first = asyncio.ensure_future(pool.acquire(origin, 1e12))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(pool.acquire(origin, 1e12))
    await asyncio.sleep(0)
    fresh.close()
    pool.release(fresh)
    replacement = await asyncio.wait_for(first, 2)
    await asyncio.sleep(0.05)
    assert not second.done(), "the second waiter did not overtake the first"
    pool.release(replacement)
    assert await second is replacement
    pool.release(replacement)


async def test_a_full_pool_under_churn_keeps_its_books(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    """Many callers on a pool of two, some giving up while they wait, some connections
    closing instead of coming back: never more than two open, every caller that stays gets
    a connection, and nothing is left held or queued at the end."""
    server = serve(answering(response("200 OK", b"ok")))
    scope = EgressScope(key="test:churn", elsewhere_classes=LOOPBACK, max_connections=2)
    pool = client.pool_for(scope)
    origin = ("http", LOCALHOST, server.port)
    served = 0

    async def caller(index: int) -> None:
        nonlocal served
        connection = await pool.acquire(origin, 1e12)
        assert pool.open_count <= 2
        served += 1
        await asyncio.sleep(0.001 * (index % 3))
        if index % 5 == 0:
            connection.close()  # gone instead of back: its place is freed
        else:
            pool.release(connection)

    tasks = [asyncio.ensure_future(caller(i)) for i in range(60)]
    await asyncio.sleep(0)
    leaving = tasks[7::9]
    for task in leaving:
        task.cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
    assert served == 60 - cancelled and cancelled >= 1
    assert pool.open_count <= 2 and not pool._waiters and pool._held == 0


async def test_a_pooled_connection_the_upstream_closed_is_replaced_once(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    # One response per connection, then the server closes it while it sits in our pool.
    server = serve(answering(response("200 OK", b"ok"), then_close=True))
    assert (await get(client, server.url)).body == b"ok"
    await asyncio.sleep(0.2)  # the close arrives: the pool drops the connection
    assert (await get(client, server.url)).body == b"ok"
    assert server.connections == 2
    # A connection dropped with no response at all, when it was new: an error, not a retry.
    silent = serve(lambda conn: None)
    with pytest.raises(wire.ConnectionDropped):
        await get(client, silent.url)
    assert silent.connections == 1


async def test_the_pool_limit_queues_and_a_cancelled_exchange_frees_its_connection(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    release = threading.Event()

    def slow(conn: socket.socket) -> None:
        while read_head(conn) is not None:
            release.wait(5)
            conn.sendall(response("200 OK", b"slow"))

    server = serve(slow)
    scope = EgressScope(key="test:one", elsewhere_classes=LOOPBACK, max_connections=1)
    first = asyncio.ensure_future(get(client, server.url, scope=scope))
    second = asyncio.ensure_future(get(client, server.url, scope=scope))
    await asyncio.sleep(0.3)
    assert server.connections == 1, "the second waits for the only connection"
    first.cancel()
    await asyncio.sleep(0.1)
    release.set()
    assert (await second).body == b"slow"
    pool = client.pool_for(scope)
    assert pool.in_use == 0 and pool.open_count <= 1
    assert server.connections == 2, "the cancelled exchange's connection was closed, not reused"


async def test_idle_connections_are_closed_after_the_keepalive(
    client: wire.Wire, serve: Callable[..., SocketServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "KEEPALIVE_SECONDS", 0.2)
    server = serve(answering(response("200 OK")))
    await get(client, server.url)
    pool = client.pool_for(LOOPBACK_SCOPE)
    assert pool.open_count == 1
    await asyncio.sleep(0.5)
    assert pool.open_count == 0


async def test_a_name_that_does_not_resolve_is_a_connect_failure() -> None:
    # The resolver's own error (no DNS is asked: the test's resolver fails by itself),
    # reported as a connection that could not be made, not raised as a bare OSError.
    async def unknown(host: str, port: int) -> list[str]:
        raise OSError(f"unknown host {host}")

    token = enter_scope(LOOPBACK_SCOPE)
    lost = wire.Wire(connect_timeout=2, tls=http.tls_context(), max_pools=2, resolve=unknown)
    try:
        with pytest.raises(wire.ConnectFailed, match="cannot resolve"):
            await get(lost, "http://nowhere.test:5000/v2/")
        assert lost.pool_for(LOOPBACK_SCOPE).open_count == 0
        # Through ``send``: the probe's UNAVAILABLE ("cannot connect"), not a crash.
        upstream_client = http.UpstreamClient(connect_timeout=2, request_timeout=2, resolve=unknown)
        with pytest.raises(UpstreamUnreachable, match=r"cannot connect to http://nowhere\.test"):
            await http.send(
                upstream_client, "GET", "http://nowhere.test:5000/v2/",
                budget=http.Budget.start(2), scope=LOOPBACK_SCOPE,
            )  # fmt: skip
        await upstream_client.aclose()
    finally:
        lost.close()
        leave_scope(token)


async def test_tls_is_verified_against_the_trusted_cas(
    serve: Callable[..., SocketServer], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    server = serve(answering(response("200 OK", b"secure")), tls=server_tls)
    trusting = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    token = enter_scope(LOOPBACK_SCOPE)
    good = wire.Wire(connect_timeout=2, tls=trusting, max_pools=2)
    stranger = wire.Wire(connect_timeout=2, tls=http.tls_context(), max_pools=2)
    try:
        assert (await get(good, f"https://localhost:{server.port}/")).body == b"secure"
        with pytest.raises(wire.ConnectFailed):
            await get(stranger, f"https://localhost:{server.port}/")
    finally:
        good.close()
        stranger.close()
        leave_scope(token)


async def test_no_response_in_time_is_a_timeout_and_the_connection_goes(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    stop = threading.Event()

    def mute(conn: socket.socket) -> None:
        read_head(conn)
        stop.wait(5)  # never answers

    server = serve(mute)
    request = wire.Request("GET", URL(server.url), {}, None, True, 1024)
    with pytest.raises(TimeoutError):
        await client.request(request, seconds=0.3, scope=LOOPBACK_SCOPE)
    stop.set()
    assert client.pool_for(LOOPBACK_SCOPE).open_count == 0


async def test_an_endless_head_is_cut_at_the_header_limit_not_the_deadline(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    # httptools keeps a header (or trailer) line until its end: one never ended must not
    # grow until the deadline (nor a status line, which llhttp does not keep but which
    # never ends either).
    stop = threading.Event()

    def endless(start: bytes) -> Conversation:
        def conversation(conn: socket.socket) -> None:
            read_head(conn)
            conn.sendall(start)
            for _ in range(128):  # 8 MB at most: the client gives up long before
                conn.sendall(b"p" * 65536)
            stop.wait(5)

        return conversation

    trailer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: "
    for start in (b"HTTP/1.1 200 OK\r\nX-Pad: ", b"HTTP/1.1 200 O", trailer):
        server = serve(endless(start))
        request = wire.Request("GET", URL(server.url), {}, None, True, 1024)
        with pytest.raises(wire.BadResponse, match="headers larger"):
            await client.request(request, seconds=30, scope=LOOPBACK_SCOPE)
    stop.set()


async def test_bytes_after_a_complete_response_retire_its_connection(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    pool = client.pool_for(LOOPBACK_SCOPE)
    # The start of a second response nobody asked for, written with the first.
    junk = serve(answering(response("200 OK", b"a") + b"HTTP/1.1 200 OK\r\nX-Smuggled: "))
    assert (await get(client, junk.url)).body == b"a"
    assert pool.open_count == 0, "a connection with unasked-for bytes is not kept"
    # A HEAD answered with a body, and a 204 with one: bytes past the response's end.
    for method, answer in (("HEAD", response("200 OK", b"hello")), ("GET", b"")):
        answer = answer or b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"
        server = serve(answering(answer))
        assert (await get(client, server.url, method=method)).body == b""
        assert pool.open_count == 0, f"{method} answered with bytes past its end"


async def test_a_reset_cuts_a_connection_delimited_body_short(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    def reset(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\npartial")
        time.sleep(0.1)
        # Linger 0: close() sends a RST, not a FIN; the body did not end, it was cut.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = serve(reset)
    with pytest.raises(wire.ConnectionDropped):
        await get(client, server.url)


async def test_transfer_codings_other_than_chunked(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    # Not chunked last: the body runs to the connection's end (RFC 9112 6.3).
    identity = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nto the end"
    server = serve(answering(identity, then_close=True))
    assert (await get(client, server.url)).body == b"to the end"
    # A coding we never asked for and cannot undo: refused, not handed on encoded.
    gzipped = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    server = serve(answering(gzipped))
    with pytest.raises(wire.BadResponse, match="Transfer-Encoding"):
        await get(client, server.url)


async def test_every_gzip_member_and_raw_deflate_are_undone(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    members = gzip.compress(b'{"token":') + gzip.compress(b'"t"}')
    server = serve(answering(response("200 OK", members, "Content-Encoding: gzip")))
    assert (await get(client, server.url)).body == b'{"token":"t"}'
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = squeeze.compress(b"raw deflate") + squeeze.flush()
    for body in (raw, zlib.compress(b"raw deflate")):
        server = serve(answering(response("200 OK", body, "Content-Encoding: deflate")))
        assert (await get(client, server.url)).body == b"raw deflate"
    # Two members whose sum passes the cap: the cap holds across members.
    big = gzip.compress(b"0" * 800) * 2
    server = serve(answering(response("200 OK", big, "Content-Encoding: gzip")))
    assert (await get(client, server.url, limit=1000)).body is None


async def test_a_truncated_gzip_body_is_refused(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    cut = gzip.compress(b"x" * 100)[:-10]
    server = serve(answering(response("200 OK", cut, "Content-Encoding: gzip")))
    with pytest.raises(wire.BadResponse, match="not valid gzip"):
        await get(client, server.url)


async def test_chunked_trailers_never_become_headers(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    # A trailer naming a digest, a Location or an encoding the head did not name is dropped.
    server = serve(
        answering(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
            b"Docker-Content-Digest: sha256:forged\r\nLocation: /x\r\n"
            b"Content-Encoding: gzip\r\n\r\n"
        )
    )
    reply = await get(client, server.url)
    assert (reply.status, reply.body) == (200, b"hello")
    assert not {"Docker-Content-Digest", "Location", "Content-Encoding"} & set(reply.headers)


async def test_a_status_below_100_is_a_protocol_error(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    # Read as an interim response, its body would have been glued to the next response's.
    server = serve(answering(response("099 Odd", b"hello") + response("200 OK", b"abc")))
    with pytest.raises(wire.BadResponse, match="invalid status code 99"):
        await get(client, server.url)


async def test_zlib_deflate_with_any_window_is_undone(
    client: wire.Wire, serve: Callable[..., SocketServer]
) -> None:
    for wbits in (9, 12, 15):
        squeeze = zlib.compressobj(wbits=wbits)
        body = squeeze.compress(b"small window") + squeeze.flush()
        server = serve(answering(response("200 OK", body, "Content-Encoding: deflate")))
        assert (await get(client, server.url)).body == b"small window"


async def test_a_location_that_is_no_url_is_a_protocol_error(
    serve: Callable[..., SocketServer],
) -> None:
    token = enter_scope(LOOPBACK_SCOPE)
    upstream_client = http.UpstreamClient(connect_timeout=2, request_timeout=2)
    try:
        # An unclosed IPv6 bracket, a port out of range, a name IDNA refuses, a hex port.
        for location in ("http://[::1", f"http://{LOCALHOST}:99999/", "http://a..b/",
                         "http://[::1]:0x50/"):  # fmt: skip
            server = serve(answering(response("302 Found", b"", f"Location: {location}")))
            with pytest.raises(UpstreamProtocolError, match="invalid Location"):
                await http.send(
                    upstream_client, "GET", server.url + "/v2/",
                    budget=http.Budget.start(2), scope=LOOPBACK_SCOPE,
                )  # fmt: skip
    finally:
        await upstream_client.aclose()
        leave_scope(token)


CASES: dict[str, Callable[..., Awaitable[None]]] = {
    name: case
    for name, case in list(globals().items())
    if name.startswith("test_") and inspect.iscoroutinefunction(case)
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_on_uvloop(
    name: str,
    serve: Callable[..., SocketServer],
    open_registry: RegistryServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same case on a uvloop loop, in a thread of its own (the session's asyncio loop
    is left alone)."""
    case = CASES[name]
    available = {
        "serve": serve,
        "open_registry": open_registry,
        "tmp_path": tmp_path,
        "monkeypatch": monkeypatch,
    }
    outcome: list[BaseException] = []

    async def run() -> None:
        token = enter_scope(LOOPBACK_SCOPE)
        made = wire.Wire(connect_timeout=2, tls=http.tls_context(), max_pools=8)
        wanted = inspect.signature(case).parameters
        try:
            await case(**{k: made if k == "client" else available[k] for k in wanted})
        finally:
            made.close()
            leave_scope(token)

    def thread() -> None:
        try:
            uvloop.run(run())
        except BaseException as exc:  # handed to the test's own thread
            outcome.append(exc)

    runner = threading.Thread(target=thread)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "the case did not finish on uvloop"
    if outcome:
        raise outcome[0]
