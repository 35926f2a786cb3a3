"""http.send's one request on the transport: what it keeps of httpx's AsyncClient.send.

MockTransport stands in for the upstreams: the point is which transport gets the request
and what comes back with the response, not the network (tests/integration covers that).
"""

from __future__ import annotations

import httpx

from vregistry_server.oci.http import Budget, send


def _client(seen: list[httpx.Request]) -> httpx.AsyncClient:
    def default(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Set-Cookie": "session=abc"}, text="default")

    def mounted(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="mounted")

    return httpx.AsyncClient(
        transport=httpx.MockTransport(default),
        mounts={"http://mounted.test": httpx.MockTransport(mounted)},
        headers={"User-Agent": "ua-test"},
    )


async def test_the_clients_transport_and_defaults_are_used() -> None:
    seen: list[httpx.Request] = []
    async with _client(seen) as client:
        response = await send(client, "GET", "http://default.test/v2/", budget=Budget.start(5))
        other = await send(client, "GET", "http://mounted.test/v2/", budget=Budget.start(5))
    assert (response.body, other.body) == (b"default", b"mounted")
    assert str(response.url) == "http://default.test/v2/"
    assert seen[0].headers["User-Agent"] == "ua-test"
    # The budget's timeouts travel with the request, as AsyncClient.send would send them.
    assert seen[0].extensions["timeout"]["pool"] is None


async def test_upstream_cookies_are_not_kept() -> None:
    # One client serves every caller: what one upstream sets is never sent back.
    seen: list[httpx.Request] = []
    async with _client(seen) as client:
        for _ in range(2):
            await send(client, "GET", "http://default.test/v2/", budget=Budget.start(5))
        assert not client.cookies
    assert "cookie" not in seen[1].headers


def test_the_private_method_relied_on_exists() -> None:
    # http._send_once asks the client which transport serves a URL (httpx is pinned).
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(204)))
    assert client._transport_for_url(httpx.URL("http://x.test/")) is client._transport
