"""The hot calls' series (runtime/metrics.py PlainCounter, PlainHistogram) scrape exactly as
prometheus_client's Counter and Histogram of the same name, labels and observations."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from vregistry_server.runtime import metrics
from vregistry_server.runtime.metrics import PlainCounter, PlainHistogram

_LABELS = st.sampled_from(("GetAuthHeaders", "ResolveUpstream", "UrlFor"))
_CODES = st.sampled_from(("OK", "NOT_FOUND", "INTERNAL"))
# Every bound exactly, and around and beyond them.
_SECONDS = st.one_of(
    st.sampled_from((0.0, *metrics._LATENCY_BUCKETS)),
    st.floats(0.0, 20.0, allow_nan=False),
)
_CREATED = re.compile(rb"(_created\{[^}]*\}) [0-9.e+]+")


def _without_created_times(text: bytes) -> bytes:
    # The creation time is when each child was made: the one thing the two cannot share.
    return _CREATED.sub(rb"\1 T", text)


@given(st.lists(st.tuples(_LABELS, _CODES, _SECONDS), max_size=40))
def test_the_plain_series_scrape_as_prometheus_clients(
    observations: list[tuple[str, str, float]],
) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    name, doc = "vregistry_rpc_requests_total", "gRPC requests handled."
    their_count = Counter(name, doc, ["method", "code"], registry=theirs)
    our_count = PlainCounter(name, doc, ["method", "code"], registry=ours)
    hname, hdoc = "vregistry_rpc_duration_seconds", "gRPC request latency."
    buckets = metrics._LATENCY_BUCKETS
    their_hist = Histogram(hname, hdoc, ["method", "code"], buckets=buckets, registry=theirs)
    our_hist = PlainHistogram(hname, hdoc, ["method", "code"], buckets, registry=ours)
    for method, code, seconds in observations:
        their_count.labels(method, code).inc()
        our_count.labels(method, code).value += 1
        their_hist.labels(method, code).observe(seconds)
        our_hist.labels(method, code).observe(our_hist.bounds, seconds)
    for generate in (generate_latest, generate_openmetrics):
        assert _without_created_times(generate(ours)) == _without_created_times(generate(theirs))


def test_the_observer_updates_the_registrys_series() -> None:
    def sample(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    rpc = {"method": "PlainMetricsTest", "code": "OK"}
    before = sample("vregistry_rpc_duration_seconds_bucket", **rpc, le="0.001")
    metrics.PROMETHEUS.rpc("PlainMetricsTest", "OK", 0.0007)
    metrics.PROMETHEUS.rpc("PlainMetricsTest", "OK", 3.0)
    assert sample("vregistry_rpc_requests_total", **rpc) == 2
    assert sample("vregistry_rpc_duration_seconds_count", **rpc) == 2
    assert sample("vregistry_rpc_duration_seconds_sum", **rpc) == 3.0007
    assert sample("vregistry_rpc_duration_seconds_bucket", **rpc, le="0.001") == before + 1
    assert sample("vregistry_rpc_duration_seconds_bucket", **rpc, le="2.5") == 1
    assert sample("vregistry_rpc_duration_seconds_bucket", **rpc, le="+Inf") == 2
    assert sample("vregistry_rpc_duration_seconds_created", **rpc) > 0
    metrics.PROMETHEUS.credentials_disclosed("plain-test", "bearer")
    assert sample("vregistry_credentials_disclosed_total", upstream="plain-test", scheme="bearer")
    metrics.PROMETHEUS.token_cache("plain-test", "hit")
    assert sample("vregistry_token_cache_requests_total", layer="plain-test", result="hit") == 1
    metrics.PROMETHEUS.resolve_cache("plain-test", "hit")
    assert sample("vregistry_resolve_cache_requests_total", layer="plain-test", result="hit") == 1
