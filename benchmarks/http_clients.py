"""CPU per upstream HEAD for the HTTP client alternatives (issue 11, "Faster cold path").

The cold ResolveUpstream sends three HEADs (one per upstream, concurrently); after the
fixes in benchmarks/RESULTS.md most of what is left of its CPU is the HTTP client. This
measures the candidates on the same work: three real docker-registry processes (the test
suite's ``tests.support.registry``, 127.0.0.1 only), ``--in-flight`` calls of three
concurrent HEADs each, every connection pooled and reused, and the CPU the event loop's
thread spent (``time.thread_time``: user + system; every client here runs on that thread)
divided by the HEADs sent. With ``--delay-ms`` each registry sits behind the test suite's
delaying proxy (``tests.support.proxy``, threads of this process, not counted), as in the
cold ResolveUpstream scenario (200 ms): connections then stay busy for the whole delay,
which changes how much pool bookkeeping each request costs. The clients run in
interleaved rounds, so a loaded machine slows them alike.

* ``vregistry``: ``oci.http.send`` as the service calls it (egress scope, in-flight slot,
  budget, own task, shield, redirect handling) over the service's wire
  (``oci.http.UpstreamClient`` -> ``oci.wire.Wire``: asyncio transports and llhttp, one
  pool per upstream, the egress check on every new connection);
* ``wire``: ``oci.wire.Wire.request`` alone, nothing of ``send`` around it;
* ``aiohttp``: ``aiohttp.ClientSession`` (the wire before, 3.14.5), one per upstream, its
  own connector (no egress check), nothing of ``send`` around it;
* ``httpx``: ``httpx.AsyncClient.request`` (httpx's own transport, no egress check: the
  service's guarded httpx backend is gone), one client per upstream: the old wire;
* ``httpcore``: ``httpcore.AsyncConnectionPool`` (httpcore's own class, its own
  backend), one per upstream.

Run: ``.venv/bin/python -m benchmarks.http_clients [--calls 400 --in-flight 16 --rounds 5
[--delay-ms 200]]``
(httpx and httpcore come with the service's httpx dependency, which it keeps for URLs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpcore  # noqa: E402
import httpx  # noqa: E402
from yarl import URL  # noqa: E402

from tests.support.proxy import Proxy, start_proxy  # noqa: E402
from tests.support.registry import RegistryServer, start_registry  # noqa: E402
from vregistry_server.oci import http, wire  # noqa: E402
from vregistry_server.oci.egress import AddressClass, EgressScope, enter_scope  # noqa: E402

PATH = "/v2/library/app/manifests/latest"  # not pushed: a HEAD answered 404, no body
ACCEPT = {"Accept": "application/vnd.oci.image.index.v1+json"}
LOOPBACK = frozenset({AddressClass.LOOPBACK})

Head = Callable[[int], Coroutine[Any, Any, int]]  # upstream index -> HTTP status


def _scope(index: int, port: int) -> EgressScope:
    return EgressScope(
        key=f"bench-{index}",
        origin=("127.0.0.1", port),
        origin_classes=LOOPBACK,
        elsewhere_classes=LOOPBACK,
    )


async def _clients(stack: AsyncExitStack, urls: list[str]) -> dict[str, Head]:
    ports = [httpx.URL(url).port or 80 for url in urls]
    scopes = [_scope(i, port) for i, port in enumerate(ports)]
    targets = [url + PATH for url in urls]

    service = await stack.enter_async_context(
        http.make_client(connect_timeout=5.0, request_timeout=10.0)
    )

    async def vregistry(i: int) -> int:
        budget = http.Budget.start(10.0)
        response = await http.send(
            service, "HEAD", targets[i], budget=budget, headers=dict(ACCEPT), scope=scopes[i]
        )
        return response.status

    # One client (one pool) per upstream, as the service has.
    plains = [
        await stack.enter_async_context(
            httpx.AsyncClient(
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                trust_env=False,
            )
        )
        for _ in urls
    ]

    async def httpx_head(i: int) -> int:
        return (await plains[i].request("HEAD", targets[i], headers=ACCEPT)).status_code

    pools = [
        await stack.enter_async_context(
            httpcore.AsyncConnectionPool(max_connections=200, max_keepalive_connections=50)
        )
        for _ in urls
    ]

    async def httpcore_head(i: int) -> int:
        return (await pools[i].request("HEAD", targets[i], headers=list(ACCEPT.items()))).status

    sessions = [
        await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=200),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        )
        for _ in urls
    ]

    async def aiohttp_head(i: int) -> int:
        enter_scope(scopes[i])  # this call's own task: the connector checks the connection
        async with sessions[i].head(targets[i], headers=ACCEPT, allow_redirects=False) as response:
            await response.read()
            return response.status

    wire_client = wire.Wire(connect_timeout=5.0, tls=http.tls_context(), max_pools=16)
    stack.callback(wire_client.close)

    async def wire_head(i: int) -> int:
        enter_scope(scopes[i])  # this call's own task: the pool checks new connections
        request = wire.Request("HEAD", URL(str(targets[i])), dict(ACCEPT), None, True, 65536)
        return (await wire_client.request(request, seconds=10.0, scope=scopes[i])).status

    return {
        "vregistry": vregistry,
        "wire": wire_head,
        "aiohttp": aiohttp_head,
        "httpx": httpx_head,
        "httpcore": httpcore_head,
    }


async def _one_call(head: Head, upstreams: int) -> None:
    # Each HEAD on its own task, as the resolver's probes run.
    statuses: list[int] = await asyncio.gather(
        *(asyncio.create_task(head(i)) for i in range(upstreams))
    )
    if any(status != 404 for status in statuses):
        raise RuntimeError(f"unexpected statuses {statuses}")


async def _round(head: Head, calls: int, in_flight: int, upstreams: int) -> float:
    """CPU seconds per HEAD for ``calls`` calls, ``in_flight`` at a time."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await _one_call(head, upstreams)

    start = time.thread_time()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return (time.thread_time() - start) / (calls * upstreams)


async def _main(args: argparse.Namespace) -> None:
    registries: list[RegistryServer] = [start_registry() for _ in range(args.upstreams)]
    proxies: list[Proxy] = []
    try:
        urls = [r.url for r in registries]
        if args.delay_ms:
            proxies = [start_proxy(url) for url in urls]
            for proxy in proxies:
                proxy.configure(delay_seconds=args.delay_ms / 1000)
            urls = [proxy.url for proxy in proxies]
        async with AsyncExitStack() as stack:
            clients = await _clients(stack, urls)
            names = [n for n in clients if not args.only or n in args.only]
            for name in names:  # warm-up: connections opened, code paths imported
                await _round(clients[name], args.in_flight * 4, args.in_flight, args.upstreams)
            figures: dict[str, list[float]] = {name: [] for name in names}
            for number in range(args.rounds):
                for name in names:
                    cpu = await _round(clients[name], args.calls, args.in_flight, args.upstreams)
                    figures[name].append(cpu * 1e6)
                    load = os.getloadavg()[0]
                    print(
                        f"round {number} {name:10} {cpu * 1e6:7.1f} us CPU/HEAD (load {load:.1f})"
                    )
            print("\nmedian us CPU per HEAD (x vs vregistry), per 3-upstream call in ms:")
            base = statistics.median(figures["vregistry"]) if "vregistry" in figures else None
            for name in names:
                median = statistics.median(figures[name])
                ratio = f"x{median / base:.2f}" if base else ""
                per_call = median * args.upstreams / 1000
                print(f"  {name:10} {median:7.1f} us  {ratio:6} {per_call:.3f} ms/call")
    finally:
        for proxy in proxies:
            proxy.stop()
        for registry in registries:
            registry.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per client per round")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--upstreams", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="upstream delay (proxy)")
    parser.add_argument("--only", action="append", help="a client name (repeatable)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
