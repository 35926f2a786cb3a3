"""Probes that lose the race are abandoned without leaking connections.

ResolveUpstream stops waiting for lower-priority upstreams once a higher one
has the path, and a caller's deadline can end any HTTP exchange half-way. The
soak benchmark once found sockets piling up in CLOSE-WAIT from exactly that;
this test counts them on the real sockets of this process (/proc/net/tcp).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.service import Service, make_config, upstream_entry

StartService = Callable[..., Awaitable[Service]]
TCP_STATES = {"01": "ESTABLISHED", "08": "CLOSE_WAIT"}


def _sockets_to(port: int) -> dict[str, int]:
    """Our sockets whose remote end is 127.0.0.1:port, counted by TCP state."""
    counts: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port:
                state = TCP_STATES.get(fields[3], fields[3])
                counts[state] = counts.get(state, 0) + 1
    return counts


async def test_abandoned_probes_do_not_leak_connections(
    service_factory: StartService,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
    proxy_factory: ProxyFactory,
) -> None:
    first = proxy_factory(open_registry)  # misses (no public/alpine there)
    third = proxy_factory(open_registry, delay_seconds=0.2, fault_methods=("HEAD",))  # abandoned
    entries = [
        upstream_entry("first", first.url),
        upstream_entry("second", token_registry.url),
        upstream_entry("third", third.url),
    ]
    service = await service_factory(make_config(entries, {"r": ["first", "second", "third"]}))
    third_port = int(third.url.rsplit(":", 1)[1])
    for _ in range(4):
        replies = await asyncio.gather(
            *(service.resolve("r", "public/alpine/manifests/latest") for _ in range(25))
        )
        assert {r.upstream.id for r in replies} == {"second"}
    # Let abandoned exchanges finish (they are bounded by the probe timeout) and the
    # proxy close its side; a leaked socket then sits in CLOSE-WAIT forever.
    await asyncio.sleep(1.5)
    third.stop()
    await asyncio.sleep(0.5)
    sockets = _sockets_to(third_port)
    assert sockets.get("CLOSE_WAIT", 0) == 0, sockets
    assert third.count("HEAD") > 0, "the third upstream was really probed"


async def test_pool_survives_cancellations_under_contention(
    open_registry: RegistryServer, token_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    from tests.support.service import start_service
    from vregistry_server.oci.http import make_client
    from vregistry_server.resolver import Resolver

    # A small pool (settings.max_connections_per_upstream below) makes callers queue for
    # connections, where a cancelled waiter once lost a connection slot (httpcore 1.0,
    # encode/httpcore#1093); the same must hold for the wire's pool (oci/wire.py).
    client = make_client(connect_timeout=2, request_timeout=5)
    third = proxy_factory(open_registry, delay_seconds=0.05)
    entries = [
        upstream_entry("first", open_registry.url),
        upstream_entry("second", token_registry.url),
        upstream_entry("third", third.url),
    ]
    # The bursts below fail on purpose; keep the circuit breaker out of the way.
    config = make_config(
        entries,
        {"r": ["first", "second", "third"]},
        circuit_failure_threshold=1000,
        max_connections_per_upstream=6,
    )
    service = await start_service(config, resolver=Resolver(config, client=client))
    try:
        for _ in range(5):  # bursts whose deadlines expire while callers queue for the pool
            await asyncio.gather(
                *(
                    service.resolve("r", "public/alpine/manifests/latest", timeout=0.3)
                    for _ in range(60)
                ),
                return_exceptions=True,
            )
        await asyncio.sleep(1.0)  # abandoned exchanges end by their own timeouts
        # Every slot came back: a burst as large as the pool still gets through at once.
        replies = await asyncio.gather(
            *(service.resolve("r", "public/alpine/manifests/latest", timeout=5) for _ in range(6))
        )
        assert {r.upstream.id for r in replies} == {"second"}
        await asyncio.sleep(1.0)  # the abandoned probes of "third" finish
        # No connection is still checked out of any upstream's pool.
        stuck = {key: pool.in_use for key, pool in client.wire.pools.items()}
        assert not any(stuck.values()), stuck
    finally:
        await service.close()
        await client.aclose()


async def test_probes_reuse_their_connection(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    # A HEAD's response has no body, but a pool takes its connection back only once the
    # end of the message is seen (httpcore needed it read); without that every probe
    # opened a new connection (a TCP and TLS handshake per upstream per call).
    front = proxy_factory(open_registry)
    config = make_config([upstream_entry("open", front.url)], {"r": ["open"]})
    service = await service_factory(config)
    port = int(front.url.rsplit(":", 1)[1])
    for _ in range(5):  # one after the other: each may reuse the previous call's connection
        reply = await service.resolve("r", "library/alpine/manifests/latest", refresh=True)
        assert reply.upstream.id == "open"
    assert front.count("HEAD") == 5
    assert _sockets_to(port) == {"ESTABLISHED": 1}


async def test_upstream_cookies_are_not_kept_and_the_agent_is_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A scripted upstream, because no registry sets cookies: one client serves every
    # caller, so what one upstream sets must never be sent back (the wire has no cookie jar).
    # A proxy named by the environment is not used (trust_env=False): it counts nothing.
    from tests.support.hostile import AcceptCounter
    from tests.support.scripted import Reply, start_scripted
    from vregistry_server.oci.egress import OPERATOR_ORIGIN_CLASSES, EgressScope
    from vregistry_server.oci.http import USER_AGENT, Budget, make_client, send

    server = start_scripted(
        lambda m, p: Reply(200, b"{}", headers={"Set-Cookie": "session=abc; Path=/"})
    )
    proxy = AcceptCounter()
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy.url())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    port = int(server.url.rsplit(":", 1)[1])
    scope = EgressScope(
        key="operator:cookies", origin=("127.0.0.1", port), origin_classes=OPERATOR_ORIGIN_CLASSES
    )
    try:
        async with make_client(connect_timeout=2, request_timeout=5) as client:
            for _ in range(2):
                response = await send(
                    client, "GET", f"{server.url}/v2/", budget=Budget.start(5), scope=scope
                )
                assert response.status == 200
        assert [s.cookie for s in server.seen] == [None, None]
        assert {s.user_agent for s in server.seen} == {USER_AGENT}
        assert proxy.accepts == 0
    finally:
        server.stop()
        proxy.stop()
