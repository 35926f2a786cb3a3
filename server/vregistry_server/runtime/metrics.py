"""Prometheus metrics, served on their own HTTP port (``--metrics-listen``).

``PrometheusObserver`` is where the OCI layer's events (oci/observer.py) and
every finished RPC (rpc/boundary.py) become series; nothing below the runtime
imports prometheus_client.

Labels carry ids, methods, codes and outcomes only: never a path, a realm
query, a username or a token, so a scrape can be shared freely.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from vregistry_server.oci.observer import Observer

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

RPC_REQUESTS = Counter(
    "vregistry_rpc_requests_total",
    "gRPC requests handled, by method and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
CREDENTIALS_DISCLOSED = Counter(
    "vregistry_credentials_disclosed_total",
    "Authorization headers handed to callers: a long-lived credential (basic) or a token"
    " (bearer), by upstream and scheme.",
    ["upstream", "scheme"],
    registry=REGISTRY,
)
RPC_DURATION = Histogram(
    "vregistry_rpc_duration_seconds",
    "gRPC request latency, by method and status code.",
    ["method", "code"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKEN_CACHE = Counter(
    "vregistry_token_cache_requests_total",
    "Token cache lookups, by layer (near, memory, redis) and result (hit, miss, error).",
    ["layer", "result"],
    registry=REGISTRY,
)
RESOLVE_CACHE = Counter(
    "vregistry_resolve_cache_requests_total",
    "ResolveUpstream resolution cache lookups, by layer (memory, redis) and result (hit,"
    " negative, expired, stale, miss, error).",
    ["layer", "result"],
    registry=REGISTRY,
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
def rpc_children(method: str, code: str) -> tuple[Any, Any]:
    """The counter and histogram of one (method, code): ``labels()`` costs microseconds per call."""
    return RPC_REQUESTS.labels(method, code), RPC_DURATION.labels(method, code)


@functools.lru_cache(maxsize=1024)
def _disclosed_child(upstream_id: str, scheme: str) -> Any:
    return CREDENTIALS_DISCLOSED.labels(upstream_id, scheme)


@functools.lru_cache(maxsize=64)
def _token_cache_child(layer: str, result: str) -> Any:
    return TOKEN_CACHE.labels(layer, result)


@functools.lru_cache(maxsize=64)
def _resolve_cache_child(layer: str, result: str) -> Any:
    return RESOLVE_CACHE.labels(layer, result)


class PrometheusObserver(Observer):
    """The OCI layer's events and every RPC, as the series above."""

    def rpc(self, method: str, code: str, seconds: float) -> None:
        requests, duration = rpc_children(method, code)
        requests.inc()
        duration.observe(seconds)

    def credentials_disclosed(self, upstream_id: str, scheme: str) -> None:
        _disclosed_child(upstream_id, scheme).inc()

    def ping(self, upstream_id: str, outcome: str) -> None:
        PINGS.labels(upstream_id, outcome).inc()

    def token_fetch(self, upstream_id: str, flow: str, outcome: str) -> None:
        TOKEN_FETCHES.labels(upstream_id, flow, outcome).inc()

    def token_cache(self, layer: str, result: str) -> None:
        _token_cache_child(layer, result).inc()

    def resolve_cache(self, layer: str, result: str) -> None:
        _resolve_cache_child(layer, result).inc()

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
