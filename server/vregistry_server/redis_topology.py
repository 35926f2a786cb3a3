"""One place that turns a Redis URL into a client, for every topology the service runs on.

The token cache, the resolution cache and the shared config store all connect
through here, so a URL form accepted by one is accepted by all, and a password
in a URL is shown redacted everywhere (``redact_redis_url``).

Forms: ``redis://`` and ``rediss://`` (TLS) and ``unix://`` for one server.
(Sentinel and Cluster forms: see issue 11; this module is their one home.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

import redis.asyncio as aioredis

Kind = Literal["standalone", "sentinel", "cluster"]
STANDALONE_SCHEMES = frozenset({"redis", "rediss", "unix"})
SCHEMES = STANDALONE_SCHEMES

RedisClient = aioredis.Redis


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL; the password never appears in its repr."""

    kind: Kind
    url: str = field(repr=False)
    tls: bool = False

    def redacted(self) -> str:
        return redact_redis_url(self.url)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Redis URL of any accepted form; ValueError says what is wrong with it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme not in SCHEMES:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return RedisTarget(kind="standalone", url=url, tls=parts.scheme == "rediss")


def redact_redis_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (user names stay: they help debugging)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None:
        return url
    return urlunsplit(_without_password(parts))


def _without_password(parts: SplitResult) -> SplitResult:
    user = parts.username or ""
    netloc = f"{user}:***@{parts.netloc.rpartition('@')[2]}"
    return parts._replace(netloc=netloc)


def connect(
    target: RedisTarget | str,
    *,
    socket_timeout: float,
    max_connections: int | None = None,
    blocking_pool: bool = False,
    ca_file: str | None = None,
    **options: Any,
) -> RedisClient:
    """A client for the target.

    ``blocking_pool``: a bounded pool whose callers queue for a connection (the token
    cache under a cold burst) instead of opening more sockets. ``options`` are passed
    to redis-py (retry, retry_on_error, health_check_interval, ...).
    """
    if isinstance(target, str):
        target = parse_redis_url(target)
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        **options,
    }
    if ca_file and target.tls:
        kwargs["ssl_ca_certs"] = ca_file
    if blocking_pool:
        pool = aioredis.BlockingConnectionPool.from_url(
            target.url, max_connections=max_connections or 32, timeout=socket_timeout, **kwargs
        )
        return aioredis.Redis.from_pool(pool)
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    return aioredis.Redis.from_url(target.url, **kwargs)
