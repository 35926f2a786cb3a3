"""Session-wide real servers for the tests: redis, a token server and three docker-registries.

Fixtures (see tests/support for the classes they yield):

* ``redis_server``   -> RedisServer: ``.url``, ``.port``, ``.host``, ``.stop()``, ``.start()``,
  ``.restart()`` (same port, empty), ``.kill()``.
* ``token_server``   -> TokenServer: users {bob: s3cret-token-pw}, public prefix "public/";
  reset (knobs, counters, users) before every test that uses it.
* ``open_registry``  -> RegistryServer (no auth) with library/alpine:latest (Docker v2),
  library/busybox:1.36 (OCI manifest) and library/multi:latest (OCI index).
* ``basic_registry`` -> RegistryServer (htpasswd, alice / s3cret-basic-pw) with team/app:v1.
* ``token_registry`` -> RegistryServer (token auth via ``token_server``) with
  public/alpine:latest and private/app:v1; credentials bob / s3cret-token-pw.
* ``proxy_factory``  -> ``make(backend_url_or_server, **knobs) -> Proxy``; stopped after the test.
* ``redis_sentinel`` -> SentinelTopology (tests/support/redis_topologies.py): 1 master, 2 replicas,
  3 sentinels. ``.url`` (``redis+sentinel://h:p,h:p,h:p/<master>/0``), ``.kill_master()``
  (SIGKILL; returns its port), ``.wait_for_failover(timeout)`` (bounded), ``.flush()`` (FLUSHALL
  on the master: call it at the start of a test), ``.master_client()``, ``.master_port()``.
* ``redis_cluster``  -> ClusterTopology: 6 nodes (3 masters, 3 replicas). ``.url``
  (``redis+cluster://h:p,...``), ``.kill_master(key=...)`` (SIGKILL the master of that key's
  slot, by default the config store's hash tag), ``.wait_for_failover(timeout)``, ``.flush()``
  (every master), ``.master_client(key)``, ``.cluster_client()``.
  Both are started once per session; nodes a test killed are started again (as replicas) after
  that test, so the next test finds a whole topology (its master may be another node).

A session server a test stopped (to simulate an outage) is started again after that test.

Every fixture here starts its server lazily, only for a test that asks for it (the autouse
hygiene fixture touches only servers the test already requested), so ``pytest -m unit``
starts nothing. Tests are marked by their directory (see tests/README.md):
tests/unit -> ``unit``, tests/integration -> ``integration``, tests/system -> ``system``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

# tests/ has no __init__.py, so pytest puts tests/ (not the repository root) on sys.path;
# the root is needed for ``tests.support``. Harmless when it is already there.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.processes import RedisServer, start_redis  # noqa: E402
from tests.support.proxy import HasUrl, Proxy, ProxyFactory, start_proxy  # noqa: E402
from tests.support.redis_topologies import (  # noqa: E402
    ClusterTopology,
    SentinelTopology,
    start_cluster,
    start_sentinel,
)
from tests.support.registry import RegistryServer, start_registry  # noqa: E402
from tests.support.service import Service, start_service  # noqa: E402
from tests.support.token_server import TokenServer, start_token_server  # noqa: E402
from vregistry_server.admin.stores.redis import PREFIX as CONFIG_STORE_PREFIX  # noqa: E402
from vregistry_server.model import Config  # noqa: E402
from vregistry_server.oci.token_cache import TokenCache  # noqa: E402

BASIC_USER = "alice"
BASIC_PASSWORD = "s3cret-basic-pw"
TOKEN_USER = "bob"
TOKEN_PASSWORD = "s3cret-token-pw"
PUBLIC_PREFIX = "public/"

_RESTARTABLE = ("redis_server", "open_registry", "basic_registry", "token_registry")
_TOPOLOGIES = ("redis_sentinel", "redis_cluster")
_TESTS_DIR = Path(__file__).resolve().parent
LAYERS = ("unit", "integration", "system")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer, from the directory it is in (tests/<layer>/...)."""
    for item in items:
        try:
            layer = item.path.resolve().relative_to(_TESTS_DIR).parts[0]
        except ValueError:
            continue
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelTopology]:
    topology = start_sentinel()
    try:
        yield topology
    finally:
        topology.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    topology = start_cluster()
    try:
        yield topology
    finally:
        topology.close()


@pytest.fixture(scope="session")
def token_server() -> Iterator[TokenServer]:
    server = start_token_server(
        users={TOKEN_USER: TOKEN_PASSWORD}, public_prefixes=(PUBLIC_PREFIX,)
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def open_registry() -> Iterator[RegistryServer]:
    registry = start_registry("none")
    try:
        registry.push_image("library/alpine", "latest", kind="docker")
        registry.push_image("library/busybox", "1.36", kind="oci")
        registry.push_index("library/multi", "latest")
        yield registry
    finally:
        registry.close()


@pytest.fixture(scope="session")
def basic_registry() -> Iterator[RegistryServer]:
    registry = start_registry("htpasswd", users={BASIC_USER: BASIC_PASSWORD})
    try:
        registry.push_image("team/app", "v1", kind="docker")
        yield registry
    finally:
        registry.close()


@pytest.fixture(scope="session")
def token_registry(token_server: TokenServer) -> Iterator[RegistryServer]:
    registry = start_registry(
        "token", users={TOKEN_USER: TOKEN_PASSWORD}, token_server=token_server
    )
    try:
        registry.push_image("public/alpine", "latest", kind="docker")
        registry.push_image("private/app", "v1", kind="docker")
        # Seeding talks to the registry only (tokens are minted directly), but start clean.
        token_server.reset()
        yield registry
    finally:
        registry.close()


@pytest.fixture
def proxy_factory() -> Iterator[ProxyFactory]:
    """``proxy_factory(backend, **knobs)``: a counting/delaying proxy in front of ``backend``.

    ``backend`` is a URL (``http://127.0.0.1:PORT``) or anything with a ``.url``; ``knobs``
    are :class:`tests.support.proxy.ProxyKnobs` fields (delay_seconds=..., fail_with=...).
    """
    proxies: list[Proxy] = []

    def make(backend: str | HasUrl, **knobs: Any) -> Proxy:
        url = backend if isinstance(backend, str) else backend.url
        proxy = start_proxy(url)
        proxies.append(proxy)
        if knobs:
            proxy.configure(**knobs)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.fixture(autouse=True)
def _session_servers_hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    """Reset the token server before each test using it; restart servers a test stopped."""
    if "token_server" in request.fixturenames:
        server: TokenServer = request.getfixturevalue("token_server")
        server.reset()
    yield
    for name in _RESTARTABLE:
        if name in request.fixturenames:
            target: RedisServer | RegistryServer = request.getfixturevalue(name)
            if not target.running:
                target.start()
    for name in _TOPOLOGIES:
        if name in request.fixturenames:
            topology: SentinelTopology | ClusterTopology = request.getfixturevalue(name)
            topology.restore()


@pytest.fixture
async def service_factory() -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """``await service_factory(config, cache=None)``: an in-process vregistry server on a free port."""
    services: list[Service] = []

    async def start(config: Config, cache: TokenCache | None = None) -> Service:
        service = await start_service(config, cache)
        services.append(service)
        return service

    try:
        yield start
    finally:
        for service in services:
            await service.close()


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session redis without the admin store's keys, before and after the test."""

    def wipe() -> None:
        client = redis.Redis.from_url(redis_server.url)
        keys = list(client.scan_iter(match=CONFIG_STORE_PREFIX + "*"))
        if keys:
            client.delete(*keys)
        client.close()

    wipe()
    yield redis_server
    wipe()
