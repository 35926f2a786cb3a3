"""Every Redis URL form the service accepts, the bad ones it refuses, and redaction.

No server: ``connect`` builds clients without connecting (redis-py connects lazily), so the
client type and its options are checked here; the topologies themselves are exercised in
tests/integration/test_redis_topologies.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool

from vregistry_server.config import ConfigError, build_config
from vregistry_server.model import Settings
from vregistry_server.redis_topology import connect, parse_redis_url, redact_redis_url

PASSWORD = "hunter2-s3cret"


@pytest.mark.parametrize(
    ("url", "kind", "tls", "nodes", "master", "db"),
    [
        ("redis://127.0.0.1:6379/0", "standalone", False, (), None, 0),
        ("redis://localhost", "standalone", False, (), None, 0),
        (f"rediss://user:{PASSWORD}@redis.example:6380/3", "standalone", True, (), None, 3),
        ("unix:///run/redis/redis.sock?db=2", "standalone", False, (), None, 0),
        (
            "redis+sentinel://h1:26379,h2:26380/mymaster",
            "sentinel",
            False,
            (("h1", 26379), ("h2", 26380)),
            "mymaster",
            0,
        ),
        (
            f"redis+sentinel://app:{PASSWORD}@h1,[::1]:5000/mymaster/4",
            "sentinel",
            False,
            (("h1", 26379), ("::1", 5000)),
            "mymaster",
            4,
        ),
        (
            "rediss+sentinel://10.0.0.1:26379/m",
            "sentinel",
            True,
            (("10.0.0.1", 26379),),
            "m",
            0,
        ),
        (
            "redis+cluster://h1:7000,h2:7001,h3:7002",
            "cluster",
            False,
            (("h1", 7000), ("h2", 7001), ("h3", 7002)),
            None,
            0,
        ),
        (f"rediss+cluster://:{PASSWORD}@h1:7000/0", "cluster", True, (("h1", 7000),), None, 0),
        ("REDIS+CLUSTER://h1", "cluster", False, (("h1", 6379),), None, 0),
    ],
)
def test_every_form_parses(
    url: str,
    kind: str,
    tls: bool,
    nodes: tuple[tuple[str, int], ...],
    master: str | None,
    db: int,
) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.tls, target.nodes, target.master_name, target.db) == (
        kind,
        tls,
        nodes,
        master,
        db,
    )


def test_credentials_of_a_node_list_are_decoded() -> None:
    target = parse_redis_url("redis+sentinel://app%40team:p%3Ass@h1:26379/m")
    assert (target.username, target.password) == ("app@team", "p:ss")
    target = parse_redis_url(f"redis+cluster://:{PASSWORD}@h1:7000")
    assert (target.username, target.password) == (None, PASSWORD)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", "must be a redis://"),
        ("h1:6379", "must be a redis://"),
        ("redis://", "needs a host"),
        ("redis://h:notaport/0", "invalid port"),
        ("redis://h:6379/zero", "database number"),
        ("redis://h1:6379,h2:6379", "for a node list"),
        ("unix://", "socket path"),
        ("redis+sentinel://h1:26379", "master name"),
        ("redis+sentinel://h1:26379/", "master name"),
        ("redis+sentinel://h1:26379/m/x", "must be a number"),
        ("redis+sentinel:///m", "at least one host"),
        ("redis+sentinel://h1:26379/m?db=2", "no query"),
        ("redis+cluster://h1:7000/1", "database 0 only"),
        ("redis+cluster://h1:99999", "invalid port"),
        ("redis+cluster://h1:7000,,h2:7001", "invalid host"),
        ("redis+cluster://h 1:7000", "invalid host"),
    ],
)
def test_bad_urls_are_refused_with_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_an_error_never_repeats_the_password() -> None:
    for url in (
        f"redis+sentinel://u:{PASSWORD}@h1:26379",
        f"redis+cluster://u:{PASSWORD}@h1:7000/5",
        f"redis://u:{PASSWORD}@h:port",
        f"ftp://u:{PASSWORD}@h",
    ):
        with pytest.raises(ValueError) as info:
            parse_redis_url(url)
        assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{PASSWORD}@h:6379/0", "redis://:***@h:6379/0"),
        (f"rediss://app:{PASSWORD}@h/1", "rediss://app:***@h/1"),
        (
            f"redis+sentinel://app:{PASSWORD}@h1:26379,h2:26379/m/2",
            "redis+sentinel://app:***@h1:26379,h2:26379/m/2",
        ),
        (f"redis+cluster://:{PASSWORD}@h1:7000,h2:7001", "redis+cluster://:***@h1:7000,h2:7001"),
        (f"unix://:{PASSWORD}@/run/redis.sock", "unix://:***@/run/redis.sock"),
        (f"redis://h:6379/0?password={PASSWORD}&db=1", "redis://h:6379/0?password=***&db=1"),
        # An unescaped "/" or "@" in the password still ends at the last "@".
        (f"redis://u:a/b@c{PASSWORD}@h:6379", "redis://u:***@h:6379"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
    ],
)
def test_redaction_hides_every_password(url: str, shown: str) -> None:
    assert redact_redis_url(url) == shown
    assert PASSWORD not in redact_redis_url(url)


def test_a_target_repr_never_shows_the_password_or_the_url() -> None:
    for url in (
        f"redis://u:{PASSWORD}@h:6379/0",
        f"redis+sentinel://u:{PASSWORD}@h1:26379/m",
        f"redis+cluster://u:{PASSWORD}@h1:7000",
    ):
        target = parse_redis_url(url)
        assert PASSWORD not in repr(target) and PASSWORD not in str(target)
        assert PASSWORD not in target.redacted()


def test_the_settings_repr_never_shows_the_redis_url() -> None:
    # A Settings is printed whole by a failed assertion, a debugger, a log line of a crash.
    settings = Settings(redis_url=f"redis://u:{PASSWORD}@h:6379/0")
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)


async def test_connect_builds_the_client_of_each_topology(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a TLS connection is made")
    standalone = connect(
        "rediss://h:6380/0",
        socket_timeout=0.5,
        max_connections=7,
        blocking_pool=True,
        ca_file=str(ca),
    )
    sentinel = connect(
        f"redis+sentinel://app:{PASSWORD}@h1:26379/m/3",
        socket_timeout=0.5,
        max_connections=7,
        blocking_pool=True,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    cluster = connect(
        f"redis+cluster://:{PASSWORD}@127.0.0.1:7000",
        socket_timeout=0.5,
        max_connections=7,
        blocking_pool=True,
        retry_on_timeout=False,
    )
    try:
        assert isinstance(standalone, aioredis.Redis)
        pool = standalone.connection_pool
        assert isinstance(pool, BlockingConnectionPool) and pool.max_connections == 7
        assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)

        assert isinstance(sentinel, aioredis.Redis)
        spool = sentinel.connection_pool
        # The sentinel-managed pool, blocking as asked, with the data node's db and password.
        assert isinstance(spool, SentinelConnectionPool)
        assert isinstance(spool, BlockingConnectionPool) and spool.max_connections == 7
        assert spool.connection_kwargs["db"] == 3
        assert spool.connection_kwargs["password"] == PASSWORD
        # The sentinels themselves get no credentials (a sentinel without requirepass refuses AUTH).
        for node in spool.sentinel_manager.sentinels:
            assert node.connection_pool.connection_kwargs.get("password") is None

        # A cluster has no blocking pool: no cap rather than errors under a burst (see connect).
        assert isinstance(cluster, RedisCluster)
        assert cluster.connection_kwargs["password"] == PASSWORD
        assert cluster.nodes_manager.startup_nodes
    finally:
        await standalone.aclose()
        await sentinel.aclose()
        await cluster.aclose()


def test_a_bad_url_in_the_settings_names_the_field() -> None:
    doc = {"settings": {"redis_url": f"redis+sentinel://u:{PASSWORD}@h1:26379"}}
    with pytest.raises(ConfigError) as info:
        build_config(doc, source="cfg.yaml")
    text = str(info.value)
    assert "settings.redis_url" in text and "master name" in text
    assert PASSWORD not in text
