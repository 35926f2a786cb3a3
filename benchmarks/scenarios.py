"""The benchmark scenarios as data: which RPC, which request, how much load, on which server,
compared with which baseline.

Nothing here runs anything; ``benchmarks.suite`` walks the phases in order. A phase is a group
of scenarios measured while the same servers are up, either in interleaved rounds (the median
round of each is kept) or each once. Servers are described by a ``ServerSetup``; the suite
starts each setup once, at the first phase that needs it, and stops it after the last one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from benchmarks.environment import HOT_PATH

ServerKind = Literal["service", "baseline"]
Method = Literal["UrlFor", "GetAuthHeaders", "ResolveUpstream"]
Loop = Literal["asyncio", "uvloop"]

# The requests. ``{{.RequestNumber}}`` is ghz's template: a distinct repository per call.
URL_FOR: Mapping[str, str] = {"upstream_id": "hot", "path": HOT_PATH}
HOT: Mapping[str, str] = {"upstream_id": "hot", "path": HOT_PATH}
# refresh: every call checks the upstreams (the resolution cache would answer otherwise).
RESOLVE: Mapping[str, Any] = {"registry_id": "chain", "path": HOT_PATH, "refresh": True}
# Calls in flight: the hot-path load, and ResolveUpstream over upstreams 200 ms away (each
# call holds three upstream requests for the whole delay).
HOT_IN_FLIGHT = 64
RESOLVE_IN_FLIGHT = 16
# The same path answered from the resolution cache (memory layer; headers from the token cache).
RESOLVE_FROM_CACHE: Mapping[str, Any] = {"registry_id": "chain", "path": HOT_PATH}
COLD_ONE_KEY: Mapping[str, str] = {"upstream_id": "cold", "path": "private/app/manifests/v1"}
COLD_DISTINCT_KEYS: Mapping[str, str] = {
    "upstream_id": "cold",
    "path": "private/key-{{.RequestNumber}}/manifests/v1",
}

# A cold burst: this many callers arrive at once (one call each) on a freshly started server.
COLD_CALLERS = 500


@dataclass(frozen=True)
class ServerSetup:
    """One server process configuration (the service or the baseline)."""

    name: str  # the service's process (and log) name; baselines name themselves by layout
    kind: ServerKind
    config: str = "main"  # the service's config file, written by Environment.config(config)
    near_cache_seconds: float = 5.0
    token_ttl_seconds: float = 180.0
    workers: int = 1
    loop: Loop = "asyncio"
    # Start on an empty Redis, so the first calls find no cached token.
    flush_redis_first: bool = False
    # A new process for every scenario (named after it): a cold cache in memory as well.
    fresh_per_scenario: bool = False


@dataclass(frozen=True)
class Scenario:
    """One measured load: ``method`` with ``request`` against ``server``."""

    name: str
    server: ServerSetup
    method: Method
    request: Mapping[str, Any]
    # The scenario this one is reported as a ratio of (req/s and p99); measured earlier.
    baseline: str | None = None
    connections: int = 4
    concurrency: int = HOT_IN_FLIGHT  # calls in flight, spread over the connections
    # None: as many calls as fit in --duration at the rate a warm-up run measured.
    total: int | None = None
    warmup: bool = True
    # Cold scenarios: the token server's added latency, and how many token requests the
    # service may make for the whole burst (the targets count them).
    token_server_delay_ms: int = 0
    expected_token_requests: int | None = None


class ProbeKind(Enum):
    """Measurements that are not a ghz load (``benchmarks.probes``), stored in the facts."""

    PROFILE_HOT_PATH = "profiles"  # py-spy of hot GetAuthHeaders, service and baseline
    PRIORITY_ORDER = "priority_order"  # which upstream ResolveUpstream answered with
    FIRST_CALL_MS = "resolve_first_call_ms"  # ResolveUpstream on a server that has nothing


@dataclass(frozen=True)
class Probe:
    kind: ProbeKind
    servers: tuple[ServerSetup, ...]


@dataclass(frozen=True)
class Phase:
    title: str  # printed when the phase begins
    scenarios: tuple[Scenario, ...]
    # Interleaved rounds, median kept (a burst of outside load then hits the baseline and
    # the service alike); None: each scenario measured once, in order.
    rounds: int | None
    starting: str | None = None  # printed before the phase's servers start
    probes_before: tuple[Probe, ...] = ()
    probes_after: tuple[Probe, ...] = ()


# --------------------------------------------------------------------------- server setups

SERVICE = ServerSetup("service", "service")
NO_NEAR_CACHE = ServerSetup("no-near", "service", config="no-near", near_cache_seconds=0)
# The token cache keeps nothing (1 ms): every call makes a token exchange per upstream.
UNCACHED = ServerSetup(
    "uncached",
    "service",
    config="uncached",
    near_cache_seconds=0,
    token_ttl_seconds=0.001,
    flush_redis_first=True,
)
COLD = ServerSetup("cold", "service", flush_redis_first=True, fresh_per_scenario=True)
SERVICE_W2 = ServerSetup("service-w2", "service", workers=2)
SERVICE_UVLOOP = ServerSetup("service-uvloop", "service", loop="uvloop")
BASELINE = ServerSetup("baseline", "baseline")
BASELINE_W2 = ServerSetup("baseline-w2", "baseline", workers=2)
BASELINE_UVLOOP = ServerSetup("baseline-uvloop", "baseline", loop="uvloop")


# --------------------------------------------------------------------------- the phases


def hot_path(rounds: int) -> Phase:
    return Phase(
        title=f"UrlFor and GetAuthHeaders hot path, {rounds} interleaved rounds",
        starting="starting the service, the service without near cache, and the baseline",
        rounds=rounds,
        scenarios=(
            Scenario("baseline-UrlFor", BASELINE, "UrlFor", URL_FOR),
            Scenario("UrlFor", SERVICE, "UrlFor", URL_FOR, baseline="baseline-UrlFor"),
            Scenario("baseline-GetAuthHeaders", BASELINE, "GetAuthHeaders", HOT),
            Scenario(
                "GetAuthHeaders-hot",
                SERVICE,
                "GetAuthHeaders",
                HOT,
                baseline="baseline-GetAuthHeaders",
            ),
            Scenario(
                "GetAuthHeaders-hot-no-near-cache",
                NO_NEAR_CACHE,
                "GetAuthHeaders",
                HOT,
                baseline="baseline-GetAuthHeaders",
            ),
        ),
        # --profile only; after the rounds, so the profile does not slow a measured run.
        probes_after=(Probe(ProbeKind.PROFILE_HOT_PATH, (SERVICE, BASELINE)),),
    )


def resolve_cached() -> Phase:
    # 16 in flight, not 64: each call holds three upstream requests for ~200 ms. Cold: every
    # call checks the upstreams (refresh), with the tokens cached (the "uncached" phase
    # has none).
    return Phase(
        title="cold ResolveUpstream: r1 misses, r2 hits, each 200 ms away",
        rounds=1,
        scenarios=(
            Scenario(
                "baseline-ResolveUpstream",
                BASELINE,
                "ResolveUpstream",
                RESOLVE,
                concurrency=RESOLVE_IN_FLIGHT,
            ),
            Scenario(
                "ResolveUpstream-cold",
                SERVICE,
                "ResolveUpstream",
                RESOLVE,
                baseline="baseline-ResolveUpstream",
                concurrency=RESOLVE_IN_FLIGHT,
            ),
        ),
        probes_after=(Probe(ProbeKind.PRIORITY_ORDER, (SERVICE,)),),
    )


def resolve_from_cache(rounds: int) -> Phase:
    # The hot-path load (64 in flight): a cached answer involves no upstream at all.
    return Phase(
        title=f"ResolveUpstream answered from the resolution cache, {rounds} interleaved rounds",
        rounds=rounds,
        scenarios=(
            Scenario(
                "baseline-ResolveUpstream-hot", BASELINE, "ResolveUpstream", RESOLVE_FROM_CACHE
            ),
            Scenario(
                "ResolveUpstream-from-cache",
                SERVICE,
                "ResolveUpstream",
                RESOLVE_FROM_CACHE,
                baseline="baseline-ResolveUpstream-hot",
            ),
        ),
    )


def resolve_uncached() -> Phase:
    return Phase(
        title="ResolveUpstream with no token cache (a token exchange per upstream per call)",
        rounds=None,
        scenarios=(
            Scenario(
                "ResolveUpstream-uncached",
                UNCACHED,
                "ResolveUpstream",
                RESOLVE,
                baseline="baseline-ResolveUpstream",
                concurrency=RESOLVE_IN_FLIGHT,
            ),
        ),
        # Before the load: the first call is the one that finds nothing cached at all.
        probes_before=(Probe(ProbeKind.FIRST_CALL_MS, (UNCACHED,)),),
    )


def cold_scenario(name: str, request: Mapping[str, str], tokens: int, delay_ms: int) -> Scenario:
    suffix = f"-token-server-{delay_ms}ms" if delay_ms else ""
    return Scenario(
        name + suffix,
        COLD,
        "GetAuthHeaders",
        request,
        connections=10,
        concurrency=COLD_CALLERS,
        total=COLD_CALLERS,
        warmup=False,  # a warm-up would fill the cache the scenario is about
        token_server_delay_ms=delay_ms,
        expected_token_requests=tokens,
    )


def cold_cache(token_delay_ms: int) -> Phase:
    # Loopback first, then a token server as far away as a real one; dict.fromkeys drops
    # the repeat when --token-delay-ms is 0.
    delays = dict.fromkeys((0, token_delay_ms))
    return Phase(
        title=f"GetAuthHeaders with a cold cache, {COLD_CALLERS} concurrent callers",
        rounds=None,
        scenarios=tuple(
            scenario
            for delay_ms in delays
            for scenario in (
                cold_scenario("GetAuthHeaders-cold-1-key", COLD_ONE_KEY, 1, delay_ms),
                cold_scenario(
                    f"GetAuthHeaders-cold-{COLD_CALLERS}-keys",
                    COLD_DISTINCT_KEYS,
                    COLD_CALLERS,
                    delay_ms,
                ),
            )
        ),
    )


def two_workers(rounds: int) -> Phase:
    return Phase(
        title="--workers 2 (SO_REUSEPORT), baseline in the same layout",
        rounds=rounds,
        scenarios=(
            Scenario("baseline-UrlFor-w2", BASELINE_W2, "UrlFor", URL_FOR),
            Scenario("UrlFor-w2", SERVICE_W2, "UrlFor", URL_FOR, baseline="baseline-UrlFor-w2"),
            Scenario("baseline-GetAuthHeaders-w2", BASELINE_W2, "GetAuthHeaders", HOT),
            Scenario(
                "GetAuthHeaders-hot-w2",
                SERVICE_W2,
                "GetAuthHeaders",
                HOT,
                baseline="baseline-GetAuthHeaders-w2",
            ),
        ),
    )


def with_uvloop(rounds: int) -> Phase:
    return Phase(
        title="uvloop (1 process), baseline with uvloop too",
        rounds=rounds,
        scenarios=(
            Scenario("baseline-GetAuthHeaders-uvloop", BASELINE_UVLOOP, "GetAuthHeaders", HOT),
            Scenario(
                "GetAuthHeaders-hot-uvloop",
                SERVICE_UVLOOP,
                "GetAuthHeaders",
                HOT,
                baseline="baseline-GetAuthHeaders-uvloop",
            ),
        ),
    )


def plan(*, rounds: int, token_delay_ms: int, uvloop: bool) -> tuple[Phase, ...]:
    """Every phase of ``make bench``, in the order they run."""
    return (
        hot_path(rounds),
        resolve_cached(),
        resolve_from_cache(rounds),
        resolve_uncached(),
        cold_cache(token_delay_ms),
        two_workers(rounds),
        *((with_uvloop(rounds),) if uvloop else ()),
    )
