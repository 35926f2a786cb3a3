"""Upstream faults: bounded jittered retries, Retry-After, the circuit breaker, and metrics of it all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest

from tests.support.processes import free_port
from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryServer
from tests.support.service import Service, make_config, upstream_entry
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.oci.circuit import State
from vregistry_server.runtime import metrics

StartService = Callable[..., Awaitable[Service]]


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def _two(
    service_factory: StartService, first_url: str, second_url: str, **settings: object
) -> Service:
    entries = [upstream_entry("first", first_url), upstream_entry("second", second_url)]
    return await service_factory(make_config(entries, {"r": ["first", "second"]}, **settings))


async def test_transient_5xx_is_retried_a_bounded_number_of_times(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    failing = proxy_factory(open_registry, fail_with=503, fault_methods=("HEAD",))
    service = await _two(
        service_factory,
        failing.url,
        open_registry.url,
        probe_retries=2,
        circuit_failure_threshold=100,
    )
    reply = await service.resolve("r", "library/alpine/manifests/latest")
    assert reply.upstream.id == "second"
    assert reply.attempts[0].outcome == pb.ATTEMPT_OUTCOME_UNAVAILABLE
    assert reply.attempts[0].http_status == 503
    assert failing.count("HEAD") == 3, "one try and two retries, no more"


async def test_404_and_401_are_not_retried(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(open_registry)
    service = await _two(service_factory, proxy.url, open_registry.url)
    reply = await service.resolve("r", "library/busybox/manifests/1.36")
    assert reply.upstream.id == "first"
    with pytest.raises(grpc.aio.AioRpcError):
        await service.resolve("r", "library/missing/manifests/latest")
    assert proxy.count("HEAD", "/v2/library/missing/manifests/latest") == 1


async def test_short_retry_after_is_honoured(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    limited = proxy_factory(open_registry, fail_with=429, retry_after="1", fault_methods=("HEAD",))
    service = await _two(
        service_factory,
        limited.url,
        open_registry.url,
        probe_retries=1,
        max_retry_after_wait_seconds=1.5,
    )
    started = time.monotonic()
    reply = await service.resolve("r", "library/alpine/manifests/latest")
    assert time.monotonic() - started >= 1.0, "waited for Retry-After before the retry"
    assert limited.count("HEAD") == 2
    assert reply.attempts[0].outcome == pb.ATTEMPT_OUTCOME_RATE_LIMITED
    assert reply.attempts[0].retry_after_seconds == 1


async def test_long_retry_after_is_reported_not_waited(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    limited = proxy_factory(
        open_registry, fail_with=429, retry_after="120", fault_methods=("HEAD",)
    )
    service = await _two(service_factory, limited.url, open_registry.url)
    started = time.monotonic()
    reply = await service.resolve("r", "library/alpine/manifests/latest")
    assert time.monotonic() - started < 1.0
    assert limited.count("HEAD") == 1
    assert reply.attempts[0].retry_after_seconds == 120


async def test_connection_refused_is_retried_within_the_budget(
    service_factory: StartService, open_registry: RegistryServer
) -> None:
    service = await _two(
        service_factory,
        f"http://127.0.0.1:{free_port()}",
        open_registry.url,
        probe_timeout_seconds=2,
    )
    started = time.monotonic()
    reply = await service.resolve("r", "library/alpine/manifests/latest")
    assert reply.upstream.id == "second"
    assert time.monotonic() - started < 2.0


async def test_circuit_opens_stops_traffic_and_closes_after_a_good_trial(
    service_factory: StartService, open_registry: RegistryServer, proxy_factory: ProxyFactory
) -> None:
    flaky = proxy_factory(open_registry, fail_with=503, fault_methods=("HEAD",))
    service = await _two(
        service_factory,
        flaky.url,
        open_registry.url,
        probe_retries=0,
        circuit_failure_threshold=2,
        circuit_reset_seconds=0.5,
    )
    path = "library/alpine/manifests/latest"  # refresh: every call checks the upstreams
    for _ in range(2):
        await service.resolve("r", path, refresh=True)
    assert flaky.count("HEAD") == 2
    assert _sample("vregistry_circuit_state", upstream="first") == State.OPEN
    # Open: the upstream is not contacted, the answer comes from the next one at once.
    reply = await service.resolve("r", path, refresh=True)
    assert reply.upstream.id == "second"
    assert "circuit is open" in reply.attempts[0].message
    assert flaky.count("HEAD") == 2
    # After the reset time one trial goes through; the upstream has recovered.
    flaky.configure(fail_with=None)
    await asyncio.sleep(0.6)
    reply = await service.resolve("r", path, refresh=True)
    assert reply.upstream.id == "first"
    assert flaky.count("HEAD") == 3
    assert _sample("vregistry_circuit_state", upstream="first") == State.CLOSED


async def test_metrics_count_rpcs_cache_fetches_and_probes(
    service_factory: StartService, token_registry: RegistryServer
) -> None:
    entries = [upstream_entry("metered", token_registry.url)]
    service = await service_factory(make_config(entries, {"m": ["metered"]}))
    before_ok = _sample("vregistry_rpc_requests_total", method="GetAuthHeaders", code="OK")
    before_hits = _sample("vregistry_token_cache_requests_total", layer="memory", result="hit")
    await service.auth("metered", "public/alpine")
    await service.auth("metered", "public/alpine")
    await service.resolve("m", "public/alpine/manifests/latest")
    with pytest.raises(grpc.aio.AioRpcError):
        await service.url_for("metered", "BAD")
    assert (
        _sample("vregistry_rpc_requests_total", method="GetAuthHeaders", code="OK") == before_ok + 2
    )
    assert _sample("vregistry_rpc_requests_total", method="UrlFor", code="INVALID_ARGUMENT") >= 1
    assert _sample("vregistry_rpc_duration_seconds_count", method="ResolveUpstream", code="OK") >= 1
    assert (
        _sample("vregistry_token_cache_requests_total", layer="memory", result="hit")
        >= before_hits + 2
    )
    assert (
        _sample("vregistry_token_fetches_total", upstream="metered", flow="get", outcome="ok") == 1
    )
    assert _sample("vregistry_pings_total", upstream="metered", outcome="bearer") == 1
    assert (
        _sample("vregistry_probe_duration_seconds_count", upstream="metered", outcome="found") == 1
    )
