"""One place that turns a Redis URL into a client, for every topology the service runs on.

The token cache, the resolution cache and the shared config store all connect
through here, so a URL form accepted by one is accepted by all, and a password
in a URL is shown redacted everywhere (``redact_redis_url``).

Forms:

* ``redis://[user:pass@]host[:6379][/db]``, ``rediss://...`` (TLS; ``ca_file`` verifies the
  server against a private CA) and ``unix://[user:pass@]/path/to/socket[?db=N]``: one server.
* ``redis+sentinel://[user:pass@]h1:26379,h2:26379/<master-name>[/db]`` (``rediss+sentinel``
  for TLS to the data nodes): the sentinels are asked for the master on every new
  connection, so a promoted master is found by itself. The credentials are those of the data
  nodes; sentinels are reached without them (a sentinel without ``requirepass`` refuses AUTH).
* ``redis+cluster://[user:pass@]h1:7000,h2:7001[,...]`` (``rediss+cluster`` for TLS): the
  startup nodes of a Redis Cluster; the client follows MOVED/ASK and re-reads the slot map
  after a failover. A cluster has database 0 only.

Keys that one command, transaction or script touches together must share a hash tag
(``{...}``) to work on a cluster; every client here is used the same way on every topology.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

# What every connection tells the server (CLIENT SETINFO), built once: left to redis-py, each
# new connection reads the package's metadata file again (importlib.metadata, ~1 ms), which
# a cold burst opening a pool's worth of connections paid on the event loop.
DRIVER_INFO = DriverInfo(lib_version=redis.__version__)

Kind = Literal["standalone", "sentinel", "cluster"]
STANDALONE_SCHEMES = frozenset({"redis", "rediss", "unix"})
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
SCHEMES = STANDALONE_SCHEMES | SENTINEL_SCHEMES | CLUSTER_SCHEMES
DEFAULT_PORTS: dict[Kind, int] = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}
_FORMS = (
    "redis://, rediss://, unix://, redis+sentinel://h1:26379,h2:26379/<master-name>[/db] "
    "or redis+cluster://h1:7000,h2:7001"
)
# A host of a node list: a name, an IPv4 address, or an IPv6 address in brackets.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")

# What every client type here answers (``Redis`` for one server and Sentinel, ``RedisCluster``).
RedisClient = aioredis.Redis | RedisCluster

# What a Redis that cannot answer raises, on every topology. redis-py's cluster client
# raises RedisClusterException, which is not a RedisError, when no node can be reached.
REDIS_DOWN: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL; the password (and so the URL) never appears in its repr."""

    kind: Kind
    url: str = field(repr=False)
    tls: bool = False
    # Sentinel: the sentinels; cluster: the startup nodes; standalone: empty (redis-py
    # parses the URL itself, with its query options).
    nodes: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def redacted(self) -> str:
        return redact_redis_url(self.url)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Redis URL of any accepted form; ValueError says what is wrong with it.

    The message never repeats the URL (it may hold a password): callers add the field name.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(f"must be a {_FORMS} URL")
    scheme = scheme.lower()
    if scheme in STANDALONE_SCHEMES:
        return _parse_standalone(url, scheme)
    kind: Kind = "sentinel" if scheme in SENTINEL_SCHEMES else "cluster"
    tls = scheme.startswith("rediss+")
    netloc, _, path = rest.partition("/")
    if "?" in path or "?" in netloc or "#" in rest:
        raise ValueError(f"a {scheme}:// URL takes no query or fragment")
    userinfo, at, hostlist = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    nodes = _nodes(hostlist, DEFAULT_PORTS[kind])
    if kind == "sentinel":
        master_name, db = _sentinel_path(path)
        return RedisTarget(kind, url, tls, nodes, master_name, db, username, password)
    if path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only: give no path (or /0)")
    return RedisTarget(kind, url, tls, nodes, None, 0, username, password)


def _parse_standalone(url: str, scheme: str) -> RedisTarget:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("has an invalid address") from None
    if "," in parts.netloc:
        raise ValueError(
            "lists several hosts: use redis+sentinel:// or redis+cluster:// for a node list"
        )
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError("has an invalid port") from None
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket path (unix:///run/redis.sock)")
        return RedisTarget("standalone", url, False, username=parts.username)
    if not parts.hostname:
        raise ValueError(f"a {scheme}:// URL needs a host")
    db_text = parts.path.strip("/")
    if db_text and not db_text.isdigit():
        raise ValueError("the path must be a database number (redis://host:6379/0)")
    return RedisTarget(
        "standalone", url, scheme == "rediss", db=int(db_text or 0), username=parts.username
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None)


def _nodes(hostlist: str, default_port: int) -> tuple[tuple[str, int], ...]:
    if not hostlist:
        raise ValueError("needs at least one host:port")
    nodes: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        match = _HOST.match(item.strip())
        if match is None:
            raise ValueError(f"has an invalid host {item.strip()!r} (host:port)")
        host = match.group(1).strip("[]")
        port = int(match.group(2) or default_port)
        if not 0 < port < 65536:
            raise ValueError(f"has an invalid port {port} for host {host!r}")
        nodes.append((host, port))
    return tuple(nodes)


def _sentinel_path(path: str) -> tuple[str, int]:
    name, _, db_text = path.strip("/").partition("/")
    if not name:
        raise ValueError("needs the master name: redis+sentinel://h1:26379,h2:26379/<name>[/db]")
    if db_text and not db_text.isdigit():
        raise ValueError("the database after the master name must be a number")
    return unquote(name), int(db_text or 0)


def redact_redis_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (user names stay: they help debugging).

    Works on every form, including node lists that ``urlsplit`` cannot parse, and on a URL
    that is not valid at all (its password is hidden all the same).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable redis url>" if "@" in url else url
    head, question, query = rest.partition("?")
    # The last "@" ends the credentials even if the password holds an unescaped "/" or "@".
    userinfo, at, after = head.rpartition("@")
    if at and ":" in userinfo:
        head = f"{userinfo.partition(':')[0]}:***@{after}"
    # A password can also travel as a query option (redis-py reads ?password=...).
    query = re.sub(r"(?i)((?:^|&)password=)[^&#]*", r"\1***", query)
    return f"{scheme}://{head}{question}{query}"


def connect(
    target: RedisTarget | str,
    *,
    socket_timeout: float,
    max_connections: int | None = None,
    blocking_pool: bool = False,
    pool_timeout: float | None = None,
    ca_file: str | None = None,
    **options: Any,
) -> RedisClient:
    """A client for the target.

    ``blocking_pool``: a bounded pool whose callers queue for a connection (the token
    cache under a cold burst) instead of opening more sockets; ``pool_timeout`` is how long
    one waits for a free connection (default ``socket_timeout``). It is separate because a
    queue behind a healthy Redis is not an outage: a burst of a thousand callers waits a
    few milliseconds each, and reporting that as "Redis unreachable" would send every
    replica to the token server at once. ``options`` are passed
    to redis-py (retry, retry_on_error, health_check_interval, ...).

    Per topology: one server and Sentinel honour every option (Sentinel's pool is a
    sentinel-managed pool, blocking when asked). A cluster client has one small pool per
    node and no blocking variant: a cap there raises ``MaxConnectionsError`` instead of
    queueing, which under a burst would degrade the cache for everyone, so with
    ``blocking_pool`` the cap is not applied on a cluster (its load is spread over the
    masters anyway); without it ``max_connections`` is the per-node cap. ``retry_on_timeout``
    (single-server only) is dropped there: the cluster client's own retry policy, which
    ``retry`` and ``retry_on_error`` set, decides, and re-reads the slot map between tries.
    """
    if isinstance(target, str):
        target = parse_redis_url(target)
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "driver_info": DRIVER_INFO,
        **options,
    }
    if ca_file and target.tls:
        kwargs["ssl_ca_certs"] = ca_file
    if target.kind == "sentinel":
        return _sentinel_client(target, kwargs, max_connections, blocking_pool, pool_timeout)
    if target.kind == "cluster":
        return _cluster_client(target, kwargs, None if blocking_pool else max_connections)
    if blocking_pool:
        pool = BlockingConnectionPool.from_url(
            target.url,
            max_connections=max_connections or 32,
            timeout=pool_timeout or socket_timeout,
            **kwargs,
        )
        return aioredis.Redis.from_pool(pool)
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    return aioredis.Redis.from_url(target.url, **kwargs)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A sentinel-managed pool whose callers wait for a free connection (see ``connect``)."""


class _SentinelRedis(aioredis.Redis):
    """The master's client; closing it closes the sentinel clients as well (redis-py does not:
    ``Sentinel.aclose`` is separate, and the sockets to the sentinels would leak)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def _sentinel_client(
    target: RedisTarget,
    kwargs: dict[str, Any],
    max_connections: int | None,
    blocking_pool: bool,
    pool_timeout: float | None = None,
) -> aioredis.Redis:
    timeout = kwargs["socket_timeout"]
    # The sentinels get the time-outs only: no credentials (see the module docstring), no TLS
    # (sentinel TLS is a separate port and setting), no retry policy of the data client.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes),
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "driver_info": DRIVER_INFO,
        },
    )
    data_kwargs: dict[str, Any] = {
        **kwargs,
        "db": target.db,
        "username": target.username,
        "password": target.password,
    }
    if target.tls:
        data_kwargs["ssl"] = True
    if max_connections is not None or blocking_pool:
        data_kwargs["max_connections"] = max_connections or 32
    pool_class: type[SentinelConnectionPool] = SentinelConnectionPool
    if blocking_pool:
        pool_class = _BlockingSentinelPool
        data_kwargs["timeout"] = pool_timeout or timeout
    assert target.master_name is not None
    client: aioredis.Redis = sentinel.master_for(
        target.master_name,
        redis_class=_SentinelRedis,
        connection_pool_class=pool_class,
        **data_kwargs,
    )
    return client


def _cluster_client(
    target: RedisTarget, kwargs: dict[str, Any], max_connections: int | None
) -> RedisCluster:
    options = dict(kwargs)
    # A single-server option the cluster client does not take (see ``connect``).
    options.pop("retry_on_timeout", None)
    if max_connections is not None:
        options["max_connections"] = max_connections
    return _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        **options,
    )


def _torn_down(exc: Exception) -> bool:
    """An error of a connection closed under a command by a concurrent failover handling.

    redis-py's async cluster client can then fail with ``AttributeError``/``TypeError`` on a
    ``None`` writer or node (seen here under load while a master was SIGKILLed; reported
    upstream as redis/redis-py#3815, #3835, #3546). It is a lost connection, and callers
    handle those (the token cache degrades to memory), so it is raised as one.
    """
    return isinstance(exc, AttributeError | TypeError) and "NoneType" in str(exc)


class _ClusterPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except (AttributeError, TypeError) as exc:
            if not _torn_down(exc):
                raise
            raise RedisConnectionError(f"cluster connection lost ({type(exc).__name__})") from exc


class _Cluster(RedisCluster):
    """``RedisCluster`` whose torn-down-connection errors are ConnectionErrors (``_torn_down``)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, TypeError) as exc:
            if not _torn_down(exc):
                raise
            raise RedisConnectionError(f"cluster connection lost ({type(exc).__name__})") from exc

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py refuses it, as it says
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]


async def drop_idle_connections(client: RedisClient) -> None:
    """Close the idle pooled connections (after a failure they lead to the server that failed).

    A cluster client needs nothing here: on a connection error it marks the node's
    connections for reconnect and re-reads the slot map itself.
    """
    if isinstance(client, aioredis.Redis):
        await client.connection_pool.disconnect(inuse_connections=False)


# How long closing a Redis client or connection may take before it is dropped.
CLOSE_SECONDS = 2.0


async def close_bounded(
    closing: Awaitable[None], what: str, connection: Callable[[], Any] | None = None
) -> None:
    """Await ``closing`` (a client's or a pub/sub's ``aclose()``) for at most CLOSE_SECONDS,
    whatever Redis does: redis-py can wait for ever for a socket to finish closing
    (``wait_closed``, redis/redis-py#3941), and a shutdown, or a subscription dropped after
    an error, must not hang on that. Past the bound the connection ``connection()`` names,
    if any, is dropped without waiting. A Redis that cannot answer is no error here."""
    try:
        async with asyncio.timeout(CLOSE_SECONDS):
            await closing
        return
    except TimeoutError:  # an OSError too: before REDIS_DOWN
        logging.getLogger(__name__).warning(f"{what}: Redis connection did not close in time")
    except REDIS_DOWN:
        return
    stuck = connection() if connection is not None else None
    if stuck is not None:
        with contextlib.suppress(*REDIS_DOWN):
            await stuck.disconnect(nowait=True)


# While degraded, Redis is tried again only after this long.
OUTAGE_RETRY_SECONDS = 1.0


class RedisOutage:
    """How a cache that falls back to process memory sees its Redis: answering, or degraded.

    After a failure Redis is left alone for ``OUTAGE_RETRY_SECONDS`` (monotonic time): a
    Redis that hangs instead of refusing would otherwise cost every call a socket timeout.
    The next try first drops the idle pooled connections, which lead to the Redis that
    failed: a restarted Redis would otherwise fail one stale connection per back-off
    period, and the cache stay degraded for as many seconds as the pool held connections.
    The token cache and the resolution cache each keep one.
    """

    def __init__(
        self,
        client: RedisClient,
        what: str,
        log: logging.Logger,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.degraded = False
        self._client = client
        self._what = what
        self._log = log
        self._on_change = on_change
        self._retry_at = 0.0
        self._stale_connections = False

    def skip(self) -> bool:
        """Within the back-off: do not try Redis now."""
        return self.degraded and time.monotonic() < self._retry_at

    async def before_try(self) -> None:
        if not self._stale_connections:
            return
        self._stale_connections = False
        with contextlib.suppress(*REDIS_DOWN):
            await drop_idle_connections(self._client)

    def failed(self, exc: Exception) -> None:
        self._stale_connections = True
        self._retry_at = time.monotonic() + OUTAGE_RETRY_SECONDS
        if not self.degraded:
            self.degraded = True
            if self._on_change is not None:
                self._on_change(True)
            self._log.warning(
                f"{self._what} degraded: Redis unreachable, using process memory",
                extra={"error": type(exc).__name__},
            )

    def answered(self) -> None:
        if self.degraded:
            self.degraded = False
            if self._on_change is not None:
                self._on_change(False)
            self._log.info(f"{self._what} recovered: Redis answers again")


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)
