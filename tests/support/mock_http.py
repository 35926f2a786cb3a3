"""Upstreams without processes or sockets, for the unit layer: an ``httpx.MockTransport``
in place of the network, and a fake DNS for the realm address policy.

``MockUpstreams`` routes each request by host to a handler (``request -> Response``, sync
or async) and records every request it saw. ``client()`` is an ``httpx.AsyncClient`` set
up as ``vregistry_server.oci.http.make_client`` sets up its own, except that the transport
is the mock: nothing leaves the process.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

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

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.MockTransport(self._handle),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(10.0, connect=3.0),
        )

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
