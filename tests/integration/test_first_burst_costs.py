"""One-time costs that used to land on the event loop inside the first burst of calls
(benchmarks/RESULTS.md, "first burst"): the CA bundle of upstream TLS, loaded once per process
before serving, and redis-py's version lookup, made once per process instead of per new
connection (each read the package's metadata file again). Real redis-server."""

from __future__ import annotations

import asyncio

import pytest
import redis

from tests.support.processes import RedisServer
from vregistry_server.oci import http
from vregistry_server.redis_topology import DRIVER_INFO, connect


def test_every_client_shares_the_one_tls_context() -> None:
    first = http.make_client(connect_timeout=1, request_timeout=1)
    second = http.make_client(connect_timeout=1, request_timeout=1)
    assert first.wire.tls is second.wire.tls is http.tls_context()


async def test_new_redis_connections_do_not_look_the_version_up(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def looked_up() -> str:
        raise AssertionError("importlib.metadata read for a new connection")

    monkeypatch.setattr(redis.utils, "get_lib_version", looked_up)
    client = connect(redis_server.url, socket_timeout=2, max_connections=4, blocking_pool=True)
    try:
        # Several connections at once (the pool opens one per concurrent command).
        assert await asyncio.gather(*(client.ping() for _ in range(4))) == [True] * 4
        # What CLIENT SETINFO tells a server that knows it (7.2+; Debian's 7.0 ignores it)
        # is unchanged: redis-py and its version.
        assert (DRIVER_INFO.formatted_name, DRIVER_INFO.lib_version) == (
            "redis-py",
            redis.__version__,
        )
    finally:
        await client.aclose()
