"""The whole request is checked before any network call, with one answer for every scheme.

Unknown ``actions`` used to be accepted for open and Basic upstreams, and for bearer
ones checked only after a discovery ping; now every scheme gets the same
INVALID_ARGUMENT, and nothing is sent anywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from tests.conftest import BASIC_PASSWORD, BASIC_USER, TOKEN_PASSWORD, TOKEN_USER
from tests.support.registry import RegistryServer
from tests.support.service import Service, make_config, upstream_entry
from vregistry_server.model import Config
from vregistry_server.runtime import metrics

StartService = Callable[[Config], Awaitable[Service]]


def _pings(upstream_id: str) -> float:
    total = 0.0
    for metric in metrics.REGISTRY.collect():
        if metric.name != "vregistry_pings":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("upstream") == upstream_id:
                total += sample.value
    return total


@pytest.mark.parametrize("scheme", ["none", "basic", "bearer", "unreachable"])
async def test_unknown_action_is_invalid_before_any_network_call(
    scheme: str,
    service_factory: StartService,
    open_registry: RegistryServer,
    basic_registry: RegistryServer,
    token_registry: RegistryServer,
) -> None:
    env: dict[str, str] = {}
    upstream_id = f"actions-{scheme}"
    entries = {
        "none": lambda: upstream_entry(upstream_id, open_registry.url),
        "basic": lambda: upstream_entry(
            upstream_id, basic_registry.url, credentials=(BASIC_USER, BASIC_PASSWORD), env=env
        ),
        "bearer": lambda: upstream_entry(
            upstream_id, token_registry.url, credentials=(TOKEN_USER, TOKEN_PASSWORD), env=env
        ),
        # Nothing listens there: any network call would end in UNAVAILABLE, not INVALID_ARGUMENT.
        "unreachable": lambda: upstream_entry(upstream_id, "http://127.0.0.2:9"),
    }
    service = await service_factory(make_config([entries[scheme]()], env=env))
    pings_before = _pings(upstream_id)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.auth(upstream_id, "team/app", actions=["pull", "destroy"])
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown action 'destroy'" in (info.value.details() or "")
    assert _pings(upstream_id) == pings_before, "an invalid request must not reach the upstream"
