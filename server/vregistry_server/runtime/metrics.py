"""Prometheus metrics, served on their own HTTP port (``--metrics-listen``).

``PrometheusObserver`` is where the OCI layer's events (oci/observer.py) and
every finished RPC (rpc/boundary.py) become series; nothing below the runtime
imports prometheus_client.

Labels carry ids, methods, codes and outcomes only: never a path, a realm
query, a username or a token, so a scrape can be shared freely.
"""

from __future__ import annotations

import functools
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from vregistry_server.oci.observer import Observer

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


# ---------------------------------------------------------------- the hot calls' series
#
# Every hot call updates four to six series (its RPC's count and latency, the credential
# handed out, the cache layer that answered). prometheus_client's children take a lock and
# run checks per update (~25 us of a call with cold CPU caches, benchmarks/RESULTS.md); these
# children are plain numbers, added to on the event loop's thread (every caller below runs
# there: the servicers and the caches they await) and read when scraped, in the
# exposition prometheus_client gives the same series (_total, _created; _bucket, _count,
# _sum, _created).


class PlainCounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class PlainHistogramChild:
    __slots__ = ("counts", "created", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets  # per bucket, not cumulative: one add per observation
        self.sum = 0.0
        self.created = time.time()

    def observe(self, bounds: Sequence[float], amount: float) -> None:
        # The first bucket whose bound is >= amount, as Histogram.observe's scan finds it.
        self.counts[bisect_left(bounds, amount)] += 1
        self.sum += amount


class PlainCounter(Collector):
    """A labelled counter of PlainCounterChild; ``name`` as for Counter (``_total`` or not)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], PlainCounterChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> PlainCounterChild:
        return self._children.setdefault(values, PlainCounterChild())

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value, created=child.created)
        yield family


class PlainHistogram(Collector):
    """A labelled histogram of PlainHistogramChild, with Histogram's buckets and +Inf."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self.bounds = (*(float(b) for b in buckets), math.inf)
        go_text: Callable[[float], str] = floatToGoString  # "1.0", "+Inf": Histogram's le
        self._le = tuple(go_text(b) for b in self.bounds)
        self._children: dict[tuple[str, ...], PlainHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> PlainHistogramChild:
        return self._children.setdefault(values, PlainHistogramChild(len(self.bounds)))

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._le, list(child.counts), strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(values, buckets, child.sum)
            family.add_sample(
                self._name + "_created",
                dict(zip(self._labelnames, values, strict=True)),
                child.created,
            )
        yield family


RPC_REQUESTS = PlainCounter(
    "vregistry_rpc_requests_total",
    "gRPC requests handled, by method and status code.",
    ["method", "code"],
)
CREDENTIALS_DISCLOSED = PlainCounter(
    "vregistry_credentials_disclosed_total",
    "Authorization headers handed to callers: a long-lived credential (basic) or a token"
    " (bearer), by upstream and scheme.",
    ["upstream", "scheme"],
)
RPC_DURATION = PlainHistogram(
    "vregistry_rpc_duration_seconds",
    "gRPC request latency, by method and status code.",
    ["method", "code"],
    buckets=_LATENCY_BUCKETS,
)
_RPC_BOUNDS = RPC_DURATION.bounds
TOKEN_CACHE = PlainCounter(
    "vregistry_token_cache_requests_total",
    "Token cache lookups, by layer (near, memory, redis) and result (hit, miss, error).",
    ["layer", "result"],
)
RESOLVE_CACHE = PlainCounter(
    "vregistry_resolve_cache_requests_total",
    "ResolveUpstream resolution cache lookups, by layer (memory, redis) and result (hit,"
    " negative, expired, stale, miss, error).",
    ["layer", "result"],
)
RESOLVE_CHECKS = PlainCounter(
    "vregistry_resolve_checks_total",
    "ResolveUpstream calls not answered from the resolution cache, by outcome: checked (the"
    " call asked the upstreams), joined (it waited for an identical call's check instead).",
    ["outcome"],
)
TOKEN_CACHE_DEGRADED = Gauge(
    "vregistry_token_cache_degraded",
    "1 while Redis is unreachable and tokens are held in process memory only.",
    registry=REGISTRY,
)
TOKEN_LEASES = Counter(
    "vregistry_token_leases_total",
    "Fleet-wide claims on a missing token, by outcome: acquired (this replica fetched),"
    " taken_over (fetched after another holder's lease ended without a token), shared"
    " (another replica's token), unshared (no Redis: fetched alone), wait_timeout.",
    ["outcome"],
    registry=REGISTRY,
)
TOKEN_FETCHES = Counter(
    "vregistry_token_fetches_total",
    "Token exchanges with an upstream's token server, by upstream, flow and outcome.",
    ["upstream", "flow", "outcome"],
    registry=REGISTRY,
)
PINGS = Counter(
    "vregistry_pings_total",
    "Auth discovery pings of GET /v2/, by upstream and discovered scheme or failure.",
    ["upstream", "outcome"],
    registry=REGISTRY,
)
PROBES = Histogram(
    "vregistry_probe_duration_seconds",
    "ResolveUpstream checks of one upstream, by upstream and outcome.",
    ["upstream", "outcome"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CIRCUIT_STATE = Gauge(
    "vregistry_circuit_state",
    "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open.",
    ["upstream"],
    registry=REGISTRY,
)
REALM_REFUSALS = Counter(
    "vregistry_realm_refusals_total",
    "Token realms refused by the realm policy, by upstream and rule.",
    ["upstream", "rule"],
    registry=REGISTRY,
)


@functools.lru_cache(maxsize=512)
def rpc_children(method: str, code: str) -> tuple[PlainCounterChild, PlainHistogramChild]:
    """The counter and histogram of one (method, code), found once per label set."""
    return RPC_REQUESTS.labels(method, code), RPC_DURATION.labels(method, code)


@functools.lru_cache(maxsize=1024)
def _disclosed_child(upstream_id: str, scheme: str) -> PlainCounterChild:
    return CREDENTIALS_DISCLOSED.labels(upstream_id, scheme)


@functools.lru_cache(maxsize=64)
def _token_cache_child(layer: str, result: str) -> PlainCounterChild:
    return TOKEN_CACHE.labels(layer, result)


@functools.lru_cache(maxsize=64)
def _resolve_cache_child(layer: str, result: str) -> PlainCounterChild:
    return RESOLVE_CACHE.labels(layer, result)


@functools.lru_cache(maxsize=8)
def _resolve_check_child(outcome: str) -> PlainCounterChild:
    return RESOLVE_CHECKS.labels(outcome)


class PrometheusObserver(Observer):
    """The OCI layer's events and every RPC, as the series above."""

    def rpc(self, method: str, code: str, seconds: float) -> None:
        requests, duration = rpc_children(method, code)
        requests.value += 1
        duration.observe(_RPC_BOUNDS, seconds)

    def credentials_disclosed(self, upstream_id: str, scheme: str) -> None:
        _disclosed_child(upstream_id, scheme).value += 1

    def ping(self, upstream_id: str, outcome: str) -> None:
        PINGS.labels(upstream_id, outcome).inc()

    def token_fetch(self, upstream_id: str, flow: str, outcome: str) -> None:
        TOKEN_FETCHES.labels(upstream_id, flow, outcome).inc()

    def token_cache(self, layer: str, result: str) -> None:
        _token_cache_child(layer, result).value += 1

    def resolve_cache(self, layer: str, result: str) -> None:
        _resolve_cache_child(layer, result).value += 1

    def resolve_check(self, outcome: str) -> None:
        _resolve_check_child(outcome).value += 1

    def token_cache_degraded(self, degraded: bool) -> None:
        TOKEN_CACHE_DEGRADED.set(1 if degraded else 0)

    def token_lease(self, outcome: str) -> None:
        TOKEN_LEASES.labels(outcome).inc()

    def probe(self, upstream_id: str, outcome: str, seconds: float) -> None:
        PROBES.labels(upstream_id, outcome).observe(seconds)

    def circuit_state(self, upstream_id: str, state: int) -> None:
        CIRCUIT_STATE.labels(upstream_id).set(state)

    def realm_refusal(self, upstream_id: str, rule: str) -> None:
        REALM_REFUSALS.labels(upstream_id, rule).inc()


PROMETHEUS = PrometheusObserver()


def serve_metrics(listen: str) -> int:
    """Start the scrape endpoint in a background thread; returns the bound port."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(
        int(port), addr=host.strip("[]") or "127.0.0.1", registry=REGISTRY
    )
    return int(server.server_port)
