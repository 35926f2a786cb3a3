"""Upstreams without processes or sockets, for the unit layer: a mock in place of the
wire, and a fake DNS for the realm address policy.

``MockUpstreams`` routes each request by host to a handler (``request -> Response``, sync
or async, written with httpx's Request and Response as plain data) and records every
request it saw. ``client()`` is a ``MockClient``: what ``vregistry_server.oci.http.send``
needs of a client (``HttpClient``), with the mock as the wire: nothing leaves the process.
A handler that raises ``httpx.ConnectError`` or ``httpx.TimeoutException`` plays a refused
connection or a timeout, raised as the wire (oci/wire.py) would raise it.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from yarl import URL

from vregistry_server.oci.egress import EgressScope
from vregistry_server.oci.http import USER_AGENT, HttpClient, Reply, make_headers
from vregistry_server.oci.wire import ConnectFailed

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]

# Loopback-style answers, as the realm policy accepts for a registry that is itself there.
FAKE_ADDRESSES = ["127.0.0.1"]


def basic(username: str, password: str) -> str:
    """The Basic Authorization value, computed here independently of the server's code."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def bearer_challenge(realm: str, service: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="{realm}",service="{service}"'}


def token_response(token: str, expires_in: int = 300) -> httpx.Response:
    return httpx.Response(200, json={"token": token, "expires_in": expires_in})


@dataclass
class MockUpstreams:
    """Hosts to handlers; ``requests`` holds every request in the order it arrived."""

    routes: dict[str, Handler]
    requests: list[httpx.Request] = field(default_factory=list)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.routes.get(request.url.host)
        if handler is None:
            return httpx.Response(599, text=f"no mock route for host {request.url.host!r}")
        response = handler(request)
        if not isinstance(response, httpx.Response):
            response = await response
        return response

    def client(self) -> MockClient:
        return MockClient(self._handle)

    def seen(self, host: str | None = None, method: str | None = None) -> list[httpx.Request]:
        return [
            r
            for r in self.requests
            if (host is None or r.url.host == host) and (method is None or r.method == method)
        ]

    def summary(self) -> list[tuple[str, str, str]]:
        """(method, host, path) of every request, for readable assertions."""
        return [(r.method, r.url.host, r.url.path) for r in self.requests]


def fake_resolve(table: dict[str, list[str]] | None = None) -> Any:
    """A resolve function for AddressGuard: ``table`` host -> addresses, else FAKE_ADDRESSES."""

    async def resolve(host: str, port: int) -> list[str]:
        return list((table or {}).get(host, FAKE_ADDRESSES))

    return resolve


def use_fake_dns(monkeypatch: Any, table: dict[str, list[str]] | None = None) -> None:
    """Token exchangers built after this check realm addresses against ``table`` (default:
    every host is 127.0.0.1), never the system resolver.

    The Authenticator builds its TokenExchanger, and that its AddressGuard, itself; the
    guard class it picks up is swapped for one whose default resolve is the fake.
    """
    from vregistry_server.oci import realm_policy, token_exchange

    resolve = fake_resolve(table)

    class FakeDnsGuard(realm_policy.AddressGuard):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if not args:
                kwargs.setdefault("resolve", resolve)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(token_exchange, "AddressGuard", FakeDnsGuard)


@dataclass(eq=False)  # hashable by identity, as send keeps per-client state
class MockClient:
    """An ``HttpClient`` whose wire is a handler: the request goes out as an httpx.Request
    (headers, form body, as the wire would send them), the handler's httpx.Response comes
    back as the ``Reply`` the wire would give."""

    handle: Callable[[httpx.Request], Awaitable[httpx.Response]]
    connect_timeout: float = 3.0

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
        request = httpx.Request(
            method, str(url), headers={"User-Agent": USER_AGENT, **headers}, data=data
        )
        try:
            response = await self.handle(request)
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from exc
        except httpx.TransportError as exc:
            raise ConnectFailed("cannot connect", OSError(str(exc))) from exc
        body: bytes | None = b""
        if read_body and method != "HEAD":
            content = await response.aread()
            body = content if len(content) <= limit else None
        return Reply(response.status_code, make_headers(response.headers.multi_items()), body)

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> MockClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _is_client(client: MockClient) -> HttpClient:
    return client  # mypy checks here that MockClient is an HttpClient
