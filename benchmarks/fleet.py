"""Fleet, Redis Cluster and failover: what the shared Redis topologies cost and survive.

    python -m benchmarks.fleet                          # every phase (about 2 minutes)
    python -m benchmarks.fleet --only fleet             # one phase: fleet, hot or failover
    python -m benchmarks.fleet --duration 3 --rounds 1  # a quick look

Three phases, each on real servers on 127.0.0.1 (the fixtures of ``benchmarks.environment``
plus the test suite's Redis topologies, ``tests/support/redis_topologies.py``):

* ``fleet``: 3 ``vregistry-server`` processes on a 6-node Redis Cluster (3 masters, 3
  replicas), freshly started on an empty cluster. A cold burst of 600 GetAuthHeaders callers
  of one repository, 200 per process, all in flight at once (one ghz per process, started
  together), then 300 distinct repositories asked on every process (900 calls). The token
  server counts the token requests: 1 and 300 (the fleet-wide lease, ``oci/auth.py``).
* ``hot``: one of those processes (the other two stopped), hot GetAuthHeaders through the
  cluster with the near cache on (5 s), against the bare grpc.aio baseline
  (``benchmarks/baseline_server.py``) answering with a response of the same size, in
  interleaved rounds with ``benchmarks.measure.Bench`` (the median round kept).
* ``failover``: one process on a Sentinel setup (1 master, 2 replicas, 3 sentinels) with the
  near cache off (every call reads Redis, so the failover is met, not hidden), hot
  GetAuthHeaders at a fixed rate while the master is SIGKILLed. Every call's start and end
  come from ghz's report, so each call falls in one window: ``before`` (ended before the
  kill), ``failover`` (overlapping kill -> a new master promoted and writable) or ``after``.

Targets as data (``FLEET_TARGETS``, checked with ``benchmarks.targets.evaluate``). Exit status:
0 when every target is met, 3 when one is missed, 1 on a crash. The table on stdout, the
report in benchmarks/out/fleet-<start time>.json and fleet-latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import yaml

from benchmarks.environment import (
    Environment,
    ServerProcess,
    baseline_process,
    environment,
    response_sizes,
    service_process,
)
from benchmarks.loadgen import LoadResult, find_ghz, run_ghz
from benchmarks.machine import machine
from benchmarks.measure import GHZ_OUT, OUT, Bench, Row, table
from benchmarks.run import write_report
from benchmarks.scenarios import BASELINE, HOT, Scenario, ServerSetup
from benchmarks.targets import Comparison, Evaluation, Target, evaluate
from tests.support.processes import LOCALHOST, free_port
from tests.support.redis_topologies import (
    ClusterTopology,
    SentinelTopology,
    start_cluster,
    start_sentinel,
)

Topology = ClusterTopology | SentinelTopology

REPLICAS = 3
ONE_KEY_CALLERS = 600  # spread evenly over the replicas
DISTINCT_KEYS = 300  # each asked once on every replica
DEADLINE_SECONDS = 30.0  # per call: hundreds of token requests at once take a while
BURST_CONNECTIONS = 10  # per replica (as the main benchmark's cold scenarios)
EXIT_TARGETS_MISSED = 3  # as `make bench`
PHASES = ("fleet", "hot", "failover")

ONE_KEY = "fleet-1-key"
MANY_KEYS = f"fleet-{DISTINCT_KEYS}-keys"
HOT_CLUSTER = "GetAuthHeaders-hot-cluster"
HOT_STANDALONE = "GetAuthHeaders-hot-standalone"  # the control: the same, on one Redis
BASELINE_HOT = "baseline-GetAuthHeaders"
FAILOVER = "failover"

# The scenarios of the hot phase, for ``Bench`` (the same requests and load as `make bench`).
CLUSTER_SERVICE = ServerSetup("service-cluster", "service")
STANDALONE_SERVICE = ServerSetup("service-standalone", "service")
HOT_SCENARIOS = (
    Scenario(BASELINE_HOT, BASELINE, "GetAuthHeaders", HOT),
    Scenario(HOT_CLUSTER, CLUSTER_SERVICE, "GetAuthHeaders", HOT, baseline=BASELINE_HOT),
    Scenario(HOT_STANDALONE, STANDALONE_SERVICE, "GetAuthHeaders", HOT, baseline=BASELINE_HOT),
)

FLEET_TARGETS: tuple[Target, ...] = (
    Target(
        f"fleet of {REPLICAS} on a Redis Cluster, {ONE_KEY_CALLERS} cold callers of one key: "
        "exactly 1 token request",
        (ONE_KEY,),
        "token_requests",
        Comparison.EQUALS,
        1,
        why="the fleet-wide lease: one replica fetches, the others wait for its token "
        "(registries rate-limit token endpoints; issue 11)",
    ),
    Target(
        f"fleet, {DISTINCT_KEYS} distinct keys asked on every replica: exactly "
        f"{DISTINCT_KEYS} token requests",
        (MANY_KEYS,),
        "token_requests",
        Comparison.EQUALS,
        DISTINCT_KEYS,
        why="one token exchange per distinct key across the fleet, however many replicas ask",
    ),
    Target(
        "hot GetAuthHeaders through the cluster (near cache on) >= 0.8x baseline req/s",
        (HOT_CLUSTER,),
        "rps_ratio",
        Comparison.AT_LEAST,
        0.8,
        why="with the near cache a cached token costs no Redis round trip, cluster or not "
        "(issue 11)",
        unit="x{}",
    ),
    Target(
        "no errors in the fleet bursts and the hot rounds",
        (ONE_KEY, MANY_KEYS, BASELINE_HOT, HOT_CLUSTER, HOT_STANDALONE),
        "result.errors",
        Comparison.EQUALS,
        0,
        why="a run with errors measures the errors, not the service",
    ),
    Target(
        "Sentinel master SIGKILLed under load: 0 failed calls",
        (FAILOVER,),
        "result.errors",
        Comparison.EQUALS,
        0,
        why="a failover is survived, not just reconnected: calls degrade to process memory "
        "while no master answers (issue 11)",
    ),
    Target(
        "calls answered during the failover window",
        (FAILOVER,),
        "windows.failover.calls",
        Comparison.AT_LEAST,
        1,
        why="otherwise the window measured nothing (the load stopped, or the kill missed it)",
    ),
)


# --------------------------------------------------------------------------- per-call figures


@dataclass(frozen=True)
class Call:
    """One call of a ghz run: start and end in epoch seconds, and whether it answered OK."""

    start: float
    end: float
    ok: bool

    @property
    def latency_ms(self) -> float:
        return (self.end - self.start) * 1000


_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def epoch_seconds(timestamp: str) -> float:
    """Go's RFC 3339 time (ghz's ``details[].timestamp``, nanoseconds) in epoch seconds.

    ``datetime.fromisoformat`` in 3.11 does not take nine fraction digits, so the fraction
    is added apart.
    """
    match = _TIMESTAMP.match(timestamp)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {timestamp!r}")
    whole, fraction, zone = match.groups()
    offset = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(whole + offset).timestamp() + float(fraction or 0.0)


def calls_of(report: Mapping[str, Any]) -> list[Call]:
    """The calls of a ghz JSON report; its timestamp is when a call ended (ghz stats handler)."""
    calls = []
    for detail in report.get("details") or []:
        end = epoch_seconds(detail["timestamp"])
        start = end - int(detail["latency"]) / 1e9
        calls.append(Call(start, end, detail.get("status") == "OK" and not detail.get("error")))
    return calls


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank (as ``benchmarks.tarpit``): the value ``fraction`` of the way up."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summarize(calls: Sequence[Call]) -> dict[str, Any]:
    """Calls, errors and p50/p99/max latency in ms (zeros for no call)."""
    latencies = [call.latency_ms for call in calls]
    if not latencies:
        return {"calls": 0, "errors": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    return {
        "calls": len(calls),
        "errors": sum(1 for call in calls if not call.ok),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
    }


def split_windows(
    calls: Iterable[Call], killed_at: float, promoted_at: float
) -> dict[str, list[Call]]:
    """Each call in one window: ``before`` (ended before the kill), ``after`` (started after
    the promotion) or ``failover`` (overlapping the time no master was there, or in flight
    when it began: a call the kill delayed counts against the failover, not before it)."""
    windows: dict[str, list[Call]] = {"before": [], "failover": [], "after": []}
    for call in calls:
        if call.end < killed_at:
            windows["before"].append(call)
        elif call.start > promoted_at:
            windows["after"].append(call)
        else:
            windows["failover"].append(call)
    return windows


def window_report(calls: Sequence[Call], killed_at: float, promoted_at: float) -> dict[str, Any]:
    """Each window's summary, and the failover window's p50/p99 over the one before it."""
    windows = {
        name: summarize(members)
        for name, members in split_windows(calls, killed_at, promoted_at).items()
    }
    before, during = windows["before"], windows["failover"]
    for metric in ("p50_ms", "p99_ms"):
        ratio = round(during[metric] / before[metric], 2) if before[metric] else None
        during[f"{metric.removesuffix('_ms')}_vs_before"] = ratio
    return windows


def merged(results: Sequence[LoadResult], reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several ghz runs at once as one: status counts summed, latencies over every call."""
    calls = [call for report in reports for call in calls_of(report)]
    figures = summarize(calls)
    status: dict[str, int] = {}
    for result in results:
        for code, count in result.status.items():
            status[code] = status.get(code, 0) + count
    return {
        "count": sum(r.count for r in results),
        "errors": sum(r.errors for r in results),
        "status": status,
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "max_ms": figures["max_ms"],
        "wall_s": max((r.wall_s for r in results), default=0.0),
    }


# --------------------------------------------------------------------------- the topologies


@dataclass
class TopologyEnvironment(Environment):
    """The benchmark's fixtures with the service's Redis a Cluster or a Sentinel setup.

    ``Bench`` counts Redis commands through ``redis_commands``: here they are summed over
    the topology's masters (a replica replays the writes, which are no extra round trip)
    and the standalone Redis (a control server may use it); only the server under load
    makes more than the client's health-check pings meanwhile.
    """

    topology: Topology | None = None

    @classmethod
    def on(cls, env: Environment, topology: Topology) -> TopologyEnvironment:
        shared = {f.name: getattr(env, f.name) for f in fields(Environment)}
        return cls(**shared, topology=topology)

    @property
    def url(self) -> str:
        assert self.topology is not None
        return self.topology.url

    def config(self, name: str, **options: Any) -> Path:
        """The main benchmark's configuration, on the topology, with a long call deadline."""
        path = super().config(name, **options)
        data = yaml.safe_load(path.read_text())
        data["settings"]["redis_url"] = self.url
        data["settings"]["request_timeout_seconds"] = DEADLINE_SECONDS
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def flush_redis(self) -> None:
        assert self.topology is not None
        self.topology.flush()

    def redis_commands(self) -> int:
        total = super().redis_commands()
        for port in self._master_ports():
            client = redis.Redis(host=LOCALHOST, port=port, socket_timeout=2.0)
            try:
                stats: dict[str, Any] = client.info("commandstats")
            finally:
                client.close()
            total += sum(
                int(v["calls"])
                for k, v in stats.items()
                if k not in {"cmdstat_info", "cmdstat_flushdb", "cmdstat_flushall"}
            )
        return total

    def _master_ports(self) -> list[int]:
        assert self.topology is not None
        nodes = (
            self.topology.nodes
            if isinstance(self.topology, ClusterTopology)
            else self.topology.data
        )
        masters = []
        for node in nodes:
            if not node.running:
                continue
            client = redis.Redis(host=LOCALHOST, port=node.port, socket_timeout=2.0)
            try:
                if client.info("replication").get("role") == "master":
                    masters.append(node.port)
            finally:
                client.close()
        return masters


@contextlib.contextmanager
def started(topology: Topology) -> Iterator[Topology]:
    try:
        yield topology
    finally:
        topology.close()


# --------------------------------------------------------------------------- phase 1: fleet


def lease_outcomes(metrics_port: int) -> dict[str, float]:
    """``vregistry_token_leases_total`` by outcome, from one replica's /metrics."""
    url = f"http://{LOCALHOST}:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        text = response.read().decode()
    found = re.findall(r'^vregistry_token_leases_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(value) for outcome, value in found}


def added(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0.0)) for k, v in after.items() if v - before.get(k, 0.0)}


@dataclass
class Replica:
    server: ServerProcess
    metrics_port: int


def start_fleet(env: TopologyEnvironment, logs: Path, count: int) -> list[Replica]:
    config = env.config("fleet")
    replicas: list[Replica] = []
    try:
        for index in range(count):
            port = free_port()
            extra = ["--metrics-listen", f"{LOCALHOST}:{port}"]
            process = service_process(config, logs, name=f"fleet-{index}", extra=extra)
            replicas.append(Replica(process.start(), port))
    except BaseException:
        for replica in replicas:
            replica.server.stop()
        raise
    return replicas


def burst(
    env: TopologyEnvironment,
    replicas: Sequence[Replica],
    name: str,
    path: str,
    calls_per_replica: int,
    token_delay_ms: int,
) -> dict[str, Any]:
    """One ghz per replica, started together, every call in flight at once; what it cost."""
    env.token_server.reset()
    env.token_server.configure(delay_seconds=token_delay_ms / 1000)
    env.cold_proxy.reset()
    leases_before = [lease_outcomes(r.metrics_port) for r in replicas]
    outs = [GHZ_OUT / f"{name}-replica-{i}.json" for i in range(len(replicas))]
    results: list[LoadResult | None] = [None] * len(replicas)

    def one(index: int) -> None:
        results[index] = run_ghz(
            replicas[index].server.target,
            "GetAuthHeaders",
            {"upstream_id": "cold", "path": path},
            out=outs[index],
            connections=BURST_CONNECTIONS,
            concurrency=calls_per_replica,
            total=calls_per_replica,
            timeout_s=DEADLINE_SECONDS,
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [result for result in results if result is not None]
    if len(done) != len(replicas):
        raise RuntimeError(f"{name}: a ghz run failed (see the traceback above)")
    leases: dict[str, int] = {}
    for replica, before in zip(replicas, leases_before, strict=True):
        for outcome, count in added(lease_outcomes(replica.metrics_port), before).items():
            leases[outcome] = leases.get(outcome, 0) + count
    reports = [json.loads(out.read_text()) for out in outs]
    measured = {
        "replicas": len(replicas),
        "calls_per_replica": calls_per_replica,
        "token_requests": env.token_server.count(),
        "pings": env.cold_proxy.ping_count,
        "token_server_delay_ms": token_delay_ms,
        "lease_outcomes": leases,
        "result": merged(done, reports),
        "per_replica": [r.to_json() for r in done],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    env.token_server.reset()
    print(f"  {name}: {burst_line(measured)}", flush=True)
    return measured


def burst_line(measured: Mapping[str, Any]) -> str:
    r = measured["result"]
    return (
        f"{r['count']} calls over {measured['replicas']} replicas, {r['errors']} errors, "
        f"{measured['token_requests']} token request(s), {measured['pings']} ping(s), "
        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, leases {measured['lease_outcomes']}"
    )


def run_fleet(
    env: TopologyEnvironment, replicas: Sequence[Replica], token_delay_ms: int
) -> dict[str, dict[str, Any]]:
    print(
        f"fleet: {REPLICAS} processes on a 6-node Redis Cluster, token server "
        f"{token_delay_ms} ms away",
        flush=True,
    )
    one_key = burst(
        env,
        replicas,
        ONE_KEY,
        "private/fleet-one/manifests/v1",
        ONE_KEY_CALLERS // REPLICAS,
        token_delay_ms,
    )
    # ghz numbers the calls of each run from 0: the same keys are asked on every replica.
    many = burst(
        env,
        replicas,
        MANY_KEYS,
        "private/fleet-key-{{.RequestNumber}}/manifests/v1",
        DISTINCT_KEYS,
        token_delay_ms,
    )
    many["distinct_keys"] = DISTINCT_KEYS
    return {ONE_KEY: one_key, MANY_KEYS: many}


# --------------------------------------------------------------------------- phase 2: hot


def run_hot(
    env: TopologyEnvironment, service: ServerProcess, logs: Path, duration: float, rounds: int
) -> list[Row]:
    """The cluster's service, the baseline and a control on the standalone Redis, interleaved.

    The control tells the cluster's cost from the machine's: on a shared machine the ratio
    to the baseline moves with the load, the cluster/standalone pair much less.
    """
    print(
        f"hot GetAuthHeaders through the cluster (near cache 5 s), one process, against the "
        f"baseline and a standalone-Redis control: {rounds} interleaved round(s) of {duration:g} s",
        flush=True,
    )
    standalone_config = Environment.config(env, "hot-standalone")  # the standalone Redis
    with contextlib.ExitStack() as stack:
        baseline = baseline_process(logs, response_sizes(service.target)).start()
        stack.callback(baseline.stop)
        standalone = service_process(standalone_config, logs, name="hot-standalone").start()
        stack.callback(standalone.stop)
        servers = {
            BASELINE.name: baseline,
            CLUSTER_SERVICE.name: service,
            STANDALONE_SERVICE.name: standalone,
        }
        bench = Bench(env, duration)
        bench.measure_rounds([(s, servers[s.server.name]) for s in HOT_SCENARIOS], rounds)
    return bench.rows


# --------------------------------------------------------------------------- phase 3: failover


@dataclass(frozen=True)
class FailoverLoad:
    rps: int
    before_s: float  # load before the kill
    budget_s: float  # the longest failover the run leaves room for
    after_s: float  # load after the budget

    @property
    def duration_s(self) -> float:
        return self.before_s + self.budget_s + self.after_s


def run_failover(
    env: TopologyEnvironment, logs: Path, load: FailoverLoad
) -> dict[str, dict[str, Any]]:
    assert isinstance(env.topology, SentinelTopology)
    sentinel = env.topology
    print(
        f"failover: one process on Sentinel (near cache off), {load.rps} req/s hot "
        f"GetAuthHeaders, master SIGKILLed after {load.before_s:g} s",
        flush=True,
    )
    config = env.config("failover", near_cache_seconds=0)
    service = service_process(config, logs, name="failover").start()
    out = GHZ_OUT / "failover.json"
    holder: dict[str, LoadResult] = {}
    try:
        # Warm: discovery and the token stored in Redis before the measured run.
        run_ghz(service.target, "GetAuthHeaders", dict(HOT), out=GHZ_OUT / "failover-warmup.json")
        thread = threading.Thread(
            target=lambda: holder.update(
                result=run_ghz(
                    service.target,
                    "GetAuthHeaders",
                    dict(HOT),
                    out=out,
                    # A count, not --duration: at its duration's end ghz cuts the calls in
                    # flight (Unavailable, "use of closed network connection"), which
                    # would be counted as failed calls; with a count it waits for each.
                    total=int(load.rps * load.duration_s),
                    rps=load.rps,
                    timeout_s=DEADLINE_SECONDS,
                )
            )
        )
        thread.start()
        try:
            time.sleep(load.before_s)
            killed_at = time.time()
            killed_port = sentinel.kill_master()
            sentinel.wait_for_failover(timeout=load.budget_s)
            promoted_at = time.time()
        finally:
            thread.join()  # bounded: about load.duration_s at the asked rate
    finally:
        service.stop()
    if "result" not in holder:
        raise RuntimeError("failover: the ghz run failed (see the traceback above)")
    calls = calls_of(json.loads(out.read_text()))
    measured = {
        "rps_asked": load.rps,
        "killed_master_port": killed_port,
        "failover_seconds": round(promoted_at - killed_at, 2),
        "result": holder["result"].to_json(),
        "windows": window_report(calls, killed_at, promoted_at),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(f"  {failover_line(measured)}", flush=True)
    return {FAILOVER: measured}


def failover_line(measured: Mapping[str, Any]) -> str:
    w = measured["windows"]
    return (
        f"{measured['result']['count']} calls, {measured['result']['errors']} errors, "
        f"failover {measured['failover_seconds']} s; before p50/p99 {w['before']['p50_ms']}/"
        f"{w['before']['p99_ms']} ms, during {w['failover']['p50_ms']}/"
        f"{w['failover']['p99_ms']} ms ({w['failover']['calls']} calls), after "
        f"{w['after']['p50_ms']}/{w['after']['p99_ms']} ms"
    )


# --------------------------------------------------------------------------- report


def fleet_table(measured: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "| burst | replicas | calls | errors | token requests | pings | leases | p50 ms | p99 ms |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for name in (ONE_KEY, MANY_KEYS):
        if name in measured:
            m, r = measured[name], measured[name]["result"]
            leases = ", ".join(f"{k} {v}" for k, v in sorted(m["lease_outcomes"].items()))
            lines.append(
                f"| {name} | {m['replicas']} | {r['count']} | {r['errors']} | "
                f"{m['token_requests']} | {m['pings']} | {leases} | {r['p50_ms']} | {r['p99_ms']} |"
            )
    return "\n".join(lines) + "\n"


def failover_table(measured: Mapping[str, Any]) -> str:
    lines = [
        "| window | calls | errors | p50 ms | p99 ms | max ms | p50 / p99 vs before |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, w in measured["windows"].items():
        ratios = f"x{w['p50_vs_before']} / x{w['p99_vs_before']}" if "p99_vs_before" in w else ""
        lines.append(
            f"| {name} | {w['calls']} | {w['errors']} | {w['p50_ms']} | {w['p99_ms']} | "
            f"{w['max_ms']} | {ratios} |"
        )
    return "\n".join(lines) + "\n"


def uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def exit_status(evaluation: Evaluation) -> int:
    return EXIT_TARGETS_MISSED if evaluation.failures else 0


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", action="append", choices=PHASES, default=[], help="repeatable")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per hot run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved hot rounds")
    parser.add_argument(
        "--token-delay-ms",
        type=int,
        default=100,
        help="the token server's added latency in the fleet bursts (a remote one)",
    )
    parser.add_argument(
        "--failover-rps",
        type=int,
        default=500,
        help="failover load rate: below capacity, so the windows show the failover, not a queue",
    )
    parser.add_argument("--failover-before", type=float, default=5.0, help="seconds pre-kill")
    parser.add_argument("--failover-after", type=float, default=5.0, help="seconds after")
    parser.add_argument(
        "--failover-budget", type=float, default=10.0, help="the longest failover waited for"
    )
    return parser.parse_args(argv)


def run_phases(
    args: argparse.Namespace, env: Environment, report: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The chosen phases, into ``report``; what the targets read, by subject name."""
    phases = args.only or list(PHASES)
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    measured: dict[str, dict[str, Any]] = {}
    if "fleet" in phases or "hot" in phases:
        with started(start_cluster()) as cluster:
            on_cluster = TopologyEnvironment.on(env, cluster)
            on_cluster.flush_redis()
            replicas = start_fleet(on_cluster, logs, REPLICAS if "fleet" in phases else 1)
            try:
                if "fleet" in phases:
                    measured.update(run_fleet(on_cluster, replicas, args.token_delay_ms))
                    report["fleet_table"] = fleet_table(measured)
                for replica in replicas[1:]:  # the hot phase measures one process
                    replica.server.stop()
                if "hot" in phases:
                    rows = run_hot(on_cluster, replicas[0].server, logs, args.duration, args.rounds)
                    measured.update({row.scenario: row.to_json() for row in rows})
                    report["hot_table"] = table(rows)
            finally:
                for replica in replicas:
                    replica.server.stop()
    if "failover" in phases:
        with started(start_sentinel()) as sentinel:
            load = FailoverLoad(
                args.failover_rps, args.failover_before, args.failover_budget, args.failover_after
            )
            measured.update(run_failover(TopologyEnvironment.on(env, sentinel), logs, load))
            report["failover_table"] = failover_table(measured[FAILOVER])
    return measured


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    find_ghz()
    GHZ_OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    arguments = sys.argv[1:] if argv is None else argv
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m benchmarks.fleet", *arguments]),
        "uptime_at_start": uptime(),
    }
    print(report["machine"], report["uptime_at_start"], sep="\n", flush=True)
    with environment(OUT / "env") as env:
        measured = run_phases(args, env, report)
    report["uptime_at_end"] = uptime()
    report["measured"] = measured
    evaluation = evaluate(FLEET_TARGETS, measured)
    report["checks"] = [o.as_check() for o in evaluation.outcomes]
    for key in ("fleet_table", "hot_table", "failover_table"):
        if key in report:
            print("\n" + report[key], end="")
    print(f"\nuptime at the end: {report['uptime_at_end']}\ntargets")
    for outcome in evaluation.outcomes:
        print(f"  [{'met' if outcome.met else 'MISSED'}] {outcome.name}: {outcome.detail}")
    write_report(report, "fleet", stamp)
    return exit_status(evaluation)


if __name__ == "__main__":
    sys.exit(main())
