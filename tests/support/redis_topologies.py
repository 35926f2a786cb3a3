"""Real Redis topologies on 127.0.0.1: a Sentinel setup and a 6-node Cluster.

* :class:`SentinelTopology`: 1 master, 2 replicas, 3 sentinels (quorum 2), all
  ``redis-server`` processes (the sentinels run ``redis-server <conf> --sentinel`` with a
  written, writable config: Sentinel rewrites it). ``.url`` is
  ``redis+sentinel://h:p1,h:p2,h:p3/<master-name>/0``.
* :class:`ClusterTopology`: 3 masters and 3 replicas created with
  ``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes``. Each node gets two free
  ports (client and ``cluster-port``: the default bus port, client port + 10000, may be past
  65535 for an ephemeral port). ``.url`` is ``redis+cluster://h:p1,...,h:p6``.

Both start in seconds (node timeout, down-after and failover timeouts are a second or two) and
share one interface for the fixtures and the tests:

* ``kill_master()``: SIGKILL the current master (Sentinel) or the master of the config store's
  slot (Cluster); returns the killed node's port.
* ``wait_for_failover(timeout)``: block (bounded) until a replica has been promoted and the
  topology accepts writes again; raises ``TimeoutError`` otherwise.
* ``restore()``: start the killed nodes again (as replicas) so the next test finds all of them.
* ``flush()``: FLUSHALL on every master (data between tests).
* ``master_client()`` / ``master_port()``: a plain client for the current master (of a key).

Every wait is bounded. Nothing here mocks Redis.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.support.processes import LOCALHOST, ManagedProcess, ProcessStartError, free_port

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
MASTER_NAME = "vreg-master"
# A key of the config store's hash tag: the cluster master killed is the one that owns it, so
# a failover test exercises the store's and the caches' hardest path.
STORE_TAG_KEY = "{vregistry:config:v1}:generation"

_BASE_ARGS = (
    "--bind",
    LOCALHOST,
    "--save",
    "",
    "--appendonly",
    "no",
    "--daemonize",
    "no",
    "--protected-mode",
    "no",
    "--loglevel",
    "warning",
    "--logfile",
    "",
)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:.1f}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _ping(port: int) -> bool:
    try:
        client = redis.Redis(host=LOCALHOST, port=port, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def _is_master(client: redis.Redis) -> bool:
    role: Any = client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    return role[0] in (b"master", "master")


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=LOCALHOST, port=port, socket_timeout=2.0, socket_connect_timeout=1.0)


class _Node:
    """One ``redis-server`` process with its own working directory."""

    def __init__(self, name: str, port: int, workdir: Path, extra: Sequence[str]) -> None:
        self.name = name
        self.port = port
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.process = self._process(self.extra)

    def _process(self, extra: Sequence[str]) -> ManagedProcess:
        argv = [REDIS_SERVER, *extra, "--port", str(self.port), *_BASE_ARGS]
        argv += ["--dir", str(self.workdir)]
        return ManagedProcess(self.name, argv, port=self.port, log_dir=self.workdir)

    @property
    def running(self) -> bool:
        return self.process.running

    def start(self, extra: Sequence[str] | None = None, timeout: float = 10.0) -> None:
        if extra is not None:
            self.process = self._process(extra)
        self.process.start(timeout=timeout, ready=lambda: _ping(self.port))

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop(timeout=3.0)


# --------------------------------------------------------------------------- sentinel


class SentinelTopology:
    """1 master, 2 replicas, 3 sentinels; see the module docstring."""

    down_after_ms = 600
    failover_timeout_ms = 2000

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        ports = [free_port() for _ in range(6)]
        self.data = [
            _Node(f"sentinel-data-{i}", ports[i], workdir / f"data{i}", []) for i in range(3)
        ]
        self.sentinels: list[_Node] = []
        self._sentinel_ports = ports[3:]
        self._killed: list[_Node] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOCALHOST}:{port}" for port in self._sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def start(self, timeout: float = 20.0) -> None:
        master = self.data[0]
        master.start()
        for replica in self.data[1:]:
            replica.start(["--replicaof", LOCALHOST, str(master.port)])
        for i, port in enumerate(self._sentinel_ports):
            node = self._sentinel_node(i, port, master.port)
            node.start()
            self.sentinels.append(node)
        _wait(self._healthy, timeout, "sentinel setup ready (replicas in sync, sentinels agree)")

    def _sentinel_node(self, index: int, port: int, master_port: int) -> _Node:
        workdir = self.workdir / f"sentinel{index}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind {LOCALHOST}\nprotected-mode no\ndir {workdir}\n"
            f"sentinel monitor {MASTER_NAME} {LOCALHOST} {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 2\n"
        )
        node = _Node(f"sentinel-{index}", port, workdir, [])
        argv = [REDIS_SERVER, str(conf), "--sentinel", "--loglevel", "warning"]
        node.process = ManagedProcess(node.name, argv, port=port, log_dir=workdir)
        return node

    def _healthy(self) -> bool:
        """Every sentinel sees the same live master, 2 replicas and 2 other sentinels."""
        try:
            master_port = self.master_port()
            if not _ping(master_port):
                return False
            for node in self.sentinels:
                client = _client(node.port)
                try:
                    state: dict[str, Any] = cast(Any, client.sentinel_master(MASTER_NAME))
                finally:
                    client.close()
                if int(state["port"]) != master_port or state.get("is_sdown"):
                    return False
                if int(state["num-slaves"]) < 2 or int(state["num-other-sentinels"]) < 2:
                    return False
            client = _client(master_port)
            try:
                info = client.info("replication")
            finally:
                client.close()
            return int(info.get("connected_slaves", 0)) >= 2
        except (redis.RedisError, OSError, KeyError):
            return False

    def master_port(self) -> int:
        """The master's port as the sentinels report it: the first reported node that really
        is a master (during a failover one sentinel may still name the old one, and a
        restarted old master is a replica until it syncs)."""
        reported: list[int] = []
        for node in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError):
                client = _client(node.port)
                try:
                    addr: Any = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                finally:
                    client.close()
                if addr:
                    reported.append(int(addr[1]))
        for port in dict.fromkeys(reported):
            with contextlib.suppress(redis.RedisError, OSError):
                client = _client(port)
                try:
                    if _is_master(client):
                        return port
                finally:
                    client.close()
        if reported:
            return reported[0]
        raise redis.ConnectionError("no sentinel answered")

    def master_client(self) -> redis.Redis:
        return _client(self.master_port())

    def _node(self, port: int) -> _Node:
        return next(node for node in self.data if node.port == port)

    def kill_master(self) -> int:
        node = self._node(self.master_port())
        node.kill()
        self._killed.append(node)
        return node.port

    def wait_for_failover(self, timeout: float = 20.0) -> None:
        """Until the sentinels name a live master other than every node killed, and it writes."""
        dead = {node.port for node in self._killed}

        def promoted() -> bool:
            try:
                port = self.master_port()
                if port in dead:
                    return False
                client = _client(port)
                try:
                    return _is_master(client) and bool(client.set("vreg:probe", "1"))
                finally:
                    client.close()
            except (redis.RedisError, OSError):
                return False

        _wait(promoted, timeout, "sentinel failover")

    def restore(self, timeout: float = 40.0) -> None:
        """Start killed nodes again as replicas of the current master; wait until all agree.

        The failover is awaited first: a test may end before the sentinels have promoted
        a replica, and a node restarted as a replica of a dead master would never sync.
        """
        if not self._killed:
            return
        self.wait_for_failover(timeout)
        master = self.master_port()
        for node in self._killed:
            node.start(["--replicaof", LOCALHOST, str(master)])
        self._killed.clear()
        _wait(self._healthy, timeout, "sentinel setup healthy again")

    def flush(self, timeout: float = 20.0) -> None:
        """Empty the master (again after a moment if the node asked was demoted meanwhile)."""

        def flushed() -> bool:
            try:
                client = self.master_client()
                try:
                    return bool(client.flushall())
                finally:
                    client.close()
            except (redis.RedisError, OSError):
                return False

        _wait(flushed, timeout, "sentinel master flushed")

    def close(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- cluster


class ClusterTopology:
    """3 masters, 3 replicas; see the module docstring."""

    node_timeout_ms = 1000

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[_Node] = []
        for i in range(6):
            port, bus = free_port(), free_port()
            extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--cluster-port",
                str(bus),
                # A replica of a dead master takes over without waiting for its data age.
                "--cluster-replica-validity-factor",
                "0",
            ]
            self.nodes.append(_Node(f"cluster-{i}", port, workdir / f"node{i}", extra))
        self._killed: list[_Node] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOCALHOST}:{n.port}" for n in self.nodes)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        argv = [REDIS_CLI, "--cluster", "create"]
        argv += [f"{LOCALHOST}:{port}" for port in self.ports]
        argv += ["--cluster-replicas", "1", "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ProcessStartError(
                f"redis-cli --cluster create failed ({done.returncode}):\n"
                f"{done.stdout.decode(errors='replace')[-3000:]}\n{done.stderr.decode(errors='replace')}"
            )
        _wait(self._healthy, timeout, "cluster state ok on every node, 3 masters with replicas")

    def _live(self) -> list[_Node]:
        return [node for node in self.nodes if node.running]

    def _healthy(self) -> bool:
        try:
            for node in self._live():
                info = _cluster_info(node.port)
                if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != "6":
                    return False
            return self._replicated_masters() == 3
        except (redis.RedisError, OSError):
            return False

    def _replicated_masters(self) -> int:
        """Masters (with slots) that have a connected replica, seen by one live node."""
        client = _client(self._live()[0].port)
        try:
            nodes = client.cluster("NODES").values()
        finally:
            client.close()
        masters = {
            n["node_id"] for n in nodes if "master" in n["flags"] and "fail" not in n["flags"]
        }
        replicated = {
            n["master_id"]
            for n in nodes
            if "slave" in n["flags"] and "fail" not in n["flags"] and n["connected"]
        }
        return len(masters & replicated)

    def cluster_client(self) -> RedisCluster:
        live = self._live()
        return RedisCluster(
            host=LOCALHOST, port=live[0].port, socket_timeout=2.0, socket_connect_timeout=1.0
        )

    def master_port(self, key: str = STORE_TAG_KEY) -> int:
        """The port of the master serving ``key``'s slot, as a live node sees it."""
        slot = key_slot(key.encode())
        for node in self._live():
            with contextlib.suppress(redis.RedisError, OSError):
                client = _client(node.port)
                try:
                    for start, end, master, *_ in client.cluster("SLOTS"):
                        if int(start) <= slot <= int(end):
                            return int(master[1])
                finally:
                    client.close()
        raise redis.ConnectionError("no cluster node answered CLUSTER SLOTS")

    def master_client(self, key: str = STORE_TAG_KEY) -> redis.Redis:
        return _client(self.master_port(key))

    def _node(self, port: int) -> _Node:
        return next(node for node in self.nodes if node.port == port)

    def kill_master(self, key: str = STORE_TAG_KEY) -> int:
        node = self._node(self.master_port(key))
        node.kill()
        self._killed.append(node)
        return node.port

    def wait_for_failover(self, timeout: float = 20.0, key: str = STORE_TAG_KEY) -> None:
        """Until the key's slot has a live master again and every live node says state ok."""
        dead = {node.port for node in self._killed}

        def promoted() -> bool:
            try:
                port = self.master_port(key)
                if port in dead:
                    return False
                return all(
                    _cluster_info(node.port).get("cluster_state") == "ok" for node in self._live()
                )
            except (redis.RedisError, OSError):
                return False

        _wait(promoted, timeout, "cluster failover")

    def restore(self, timeout: float = 30.0) -> None:
        """Start killed nodes again (their nodes.conf makes them rejoin as replicas)."""
        if not self._killed:
            return
        for node in self._killed:
            node.start()
        self._killed.clear()
        _wait(self._healthy, timeout, "cluster healthy again")

    def flush(self) -> None:
        for node in self._live():
            client = _client(node.port)
            try:
                if _is_master(client):
                    client.flushall()
            finally:
                client.close()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _cluster_info(port: int) -> dict[str, str]:
    client = _client(port)
    try:
        info: dict[str, str] = client.cluster("INFO")
        return info
    finally:
        client.close()


def start_sentinel(timeout: float = 20.0) -> SentinelTopology:
    """Start a Sentinel setup on free ports; ``.close()`` when done."""
    topology = SentinelTopology(Path(tempfile.mkdtemp(prefix="vreg-sentinel-")))
    try:
        topology.start(timeout)
    except BaseException:
        topology.close()
        raise
    return topology


def start_cluster(timeout: float = 30.0) -> ClusterTopology:
    """Start a 6-node cluster on free ports; ``.close()`` when done."""
    topology = ClusterTopology(Path(tempfile.mkdtemp(prefix="vreg-cluster-")))
    try:
        topology.start(timeout)
    except BaseException:
        topology.close()
        raise
    return topology
