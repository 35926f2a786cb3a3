"""http.send's requests as they reach the wire: what it hands the client for each hop.

A recording client stands in for the upstreams (tests/support/mock_http.py's MockClient):
the point is what ``send`` asks of the wire (URL, headers, timeouts, body reading) and
what it makes of the reply, not the network (tests/integration covers that, and
test_connection_hygiene.py the wire's cookies and User-Agent).
"""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest

from tests.support.mock_http import MockClient
from vregistry_server.errors import UpstreamProtocolError, UpstreamUnreachable
from vregistry_server.oci.egress import STRICT_SCOPE, EgressScope
from vregistry_server.oci.http import MAX_BODY_BYTES, USER_AGENT, Budget, UpstreamClient, send


def _client(seen: list[httpx.Request], body: bytes = b"ok") -> MockClient:
    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    return MockClient(handle, connect_timeout=2.0)


async def test_query_headers_and_user_agent_reach_the_wire() -> None:
    seen: list[httpx.Request] = []
    async with _client(seen) as client:
        response = await send(
            client,
            "GET",
            "http://default.test/token?service=s",
            budget=Budget.start(5),
            headers={"Accept": "application/json"},
            params=[("scope", "repository:a/b:pull"), ("scope", "repository:c:pull")],
        )
    assert response.body == b"ok"
    assert str(response.url).startswith("http://default.test/token?service=s&scope=")
    assert seen[0].url.params.get_list("scope") == ["repository:a/b:pull", "repository:c:pull"]
    assert seen[0].headers["Accept"] == "application/json"
    assert seen[0].headers["User-Agent"] == USER_AGENT


async def test_the_budget_sets_the_timeouts() -> None:
    timeouts: list[float] = []

    class Recording(MockClient):
        async def fetch(self, method, url, **kwargs):  # type: ignore[no-untyped-def]
            timeouts.append(kwargs["seconds"])
            return await super().fetch(method, url, **kwargs)

    seen: list[httpx.Request] = []
    client = Recording(_client(seen).handle, connect_timeout=2.0)
    await send(client, "GET", "http://default.test/v2/", budget=Budget.start(5))
    await send(client, "GET", "http://default.test/v2/", budget=Budget.start(1))
    total, short_total = timeouts
    assert 4.5 < total <= 5
    assert short_total <= 1, "the exchange never outlasts the budget"


async def test_redirect_hops_share_one_budget() -> None:
    # Each hop gets what the earlier hops left, so the exchange (and its in-flight slot)
    # never outlasts the budget, however many redirects the upstream sends.
    timeouts: list[float] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.15)
        hop = int(request.url.params.get("n", "0"))
        if hop < 3:
            return httpx.Response(302, headers={"Location": f"/r?n={hop + 1}"})
        return httpx.Response(200, content=b"done")

    class Recording(MockClient):
        async def fetch(self, method, url, **kwargs):  # type: ignore[no-untyped-def]
            timeouts.append(kwargs["seconds"])
            return await super().fetch(method, url, **kwargs)

    client = Recording(handle, connect_timeout=2.0)
    response = await send(client, "GET", "http://default.test/r", budget=Budget.start(5))
    assert response.body == b"done" and len(timeouts) == 4
    assert all(later < earlier - 0.1 for earlier, later in itertools.pairwise(timeouts))
    assert timeouts[0] <= 5 and timeouts[-1] <= 5 - 3 * 0.15 + 0.05


def test_the_wire_connects_within_the_configured_connect_timeout() -> None:
    # Each new connection is dialled under the connect timeout, inside the exchange's
    # total (tests/integration/test_wire.py runs real connections through it).
    client = UpstreamClient(connect_timeout=2.0, request_timeout=30.0)
    assert client.wire.pool_for(STRICT_SCOPE).connect_timeout == 2.0


async def test_an_oversized_body_is_an_error_or_read_as_empty() -> None:
    seen: list[httpx.Request] = []
    async with _client(seen, body=b"x" * (MAX_BODY_BYTES + 1)) as client:
        with pytest.raises(UpstreamProtocolError, match="larger than"):
            await send(client, "GET", "http://default.test/v2/", budget=Budget.start(5))
        response = await send(
            client,
            "GET",
            "http://default.test/v2/",
            budget=Budget.start(5),
            discard_oversized_body=True,
        )
    assert (response.status, response.body) == (200, b"")


# A stuck upstream (a tarpit) played by a handler that waits for the test's word: what
# ``send`` does while an exchange is in flight, without a network (the tarpit system test,
# tests/system/test_security_attacks.py, does it with a real process).
class _Stuck:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.started.set()
        await self.release.wait()
        self.finished += 1
        return httpx.Response(200, content=b"late")


def _one_slot(hard_deadline: float = 10.0) -> EgressScope:
    return EgressScope(key="stuck", max_in_flight=1, hard_deadline_seconds=hard_deadline)


async def test_a_spent_budget_abandons_the_exchange_and_keeps_its_slot() -> None:
    stuck = _Stuck()
    client = MockClient(stuck.handle, connect_timeout=1.0)
    scope = _one_slot()
    with pytest.raises(UpstreamUnreachable, match=r"timed out talking to http://stuck\.test"):
        await send(client, "HEAD", "http://stuck.test/v2/", budget=Budget.start(0.1), scope=scope)
    # The exchange still runs and holds the one slot: the next caller waits for it.
    with pytest.raises(UpstreamUnreachable, match="still in flight"):
        await send(client, "HEAD", "http://stuck.test/v2/", budget=Budget.start(0.1), scope=scope)
    stuck.release.set()
    for _ in range(100):  # bounded: the abandoned exchange ends, its slot comes back
        if stuck.finished:
            break
        await asyncio.sleep(0.01)
    response = await send(
        client, "HEAD", "http://stuck.test/v2/", budget=Budget.start(1), scope=scope
    )
    assert (stuck.finished, response.status) == (2, 200)


async def test_a_cancelled_caller_leaves_the_exchange_running() -> None:
    stuck = _Stuck()
    client = MockClient(stuck.handle, connect_timeout=1.0)
    scope = _one_slot()
    caller = asyncio.create_task(
        send(client, "HEAD", "http://stuck.test/v2/", budget=Budget.start(5), scope=scope)
    )
    await asyncio.wait_for(stuck.started.wait(), 2)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert stuck.finished == 0, "the exchange is not cut by its caller leaving"
    stuck.release.set()
    response = await send(
        client, "HEAD", "http://stuck.test/v2/", budget=Budget.start(1), scope=scope
    )
    assert (stuck.finished, response.status) == (2, 200)


async def test_the_hard_deadline_while_waiting_is_a_timeout_not_a_cancellation() -> None:
    stuck = _Stuck()
    client = MockClient(stuck.handle, connect_timeout=1.0)
    scope = _one_slot(hard_deadline=0.1)
    with pytest.raises(UpstreamUnreachable, match=r"timed out talking to http://stuck\.test"):
        await send(client, "HEAD", "http://stuck.test/v2/", budget=Budget.start(5), scope=scope)
    assert stuck.finished == 0
    stuck.release.set()
    # The cut exchange gave its slot back at once.
    response = await send(
        client, "HEAD", "http://stuck.test/v2/", budget=Budget.start(1), scope=scope
    )
    assert response.status == 200


async def test_the_exchanges_own_error_reaches_the_caller() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = MockClient(refuse, connect_timeout=1.0)
    with pytest.raises(UpstreamUnreachable, match=r"cannot connect to http://down\.test"):
        await send(client, "HEAD", "http://down.test/v2/", budget=Budget.start(1))
