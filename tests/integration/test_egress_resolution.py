"""ResolveUpstream when the egress policy refuses every upstream of a registry.

Nothing was contacted and a retry cannot change that, so the answer is the operator's
FAILED_PRECONDITION with reason EGRESS_REFUSED (not UNAVAILABLE), with each attempt saying
why (``UpstreamAttempt.reason``). A registry where another upstream could be checked keeps
the usual precedence. Real parts: the in-process server with ConfigService, the real
docker-registry, and a listening socket that only counts accepts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from tests.support.admin import AdminService, empty_config, start_admin_service
from tests.support.hostile import AcceptCounter
from tests.support.registry import RegistryServer
from tests.support.service import error_details, make_config, upstream_entry
from vregistry.v1 import upstream_service_pb2 as pb


@pytest.fixture
async def strict() -> AsyncIterator[AdminService]:
    """ConfigService without settings.egress_allow_cidrs: API upstreams reach public only."""
    service = await start_admin_service(empty_config(egress_allow_cidrs=[]))
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
def counter() -> Iterator[AcceptCounter]:
    sock = AcceptCounter()
    try:
        yield sock
    finally:
        sock.stop()


async def _resolve_error(svc: AdminService, registry_id: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await svc.resolve_stub.ResolveUpstream(
            pb.ResolveUpstreamRequest(
                registry_id=registry_id, path="library/alpine/manifests/latest"
            ),
            timeout=10,
        )
    return info.value


async def test_every_upstream_refused_is_egress_refused(
    strict: AdminService, counter: AcceptCounter
) -> None:
    await strict.create_upstream("local-a", counter.url("localhost"), allow_http=True)
    await strict.create_upstream("local-b", counter.url("localhost") + "/b", allow_http=True)
    await strict.create_registry("r")
    await strict.add("r", "local-a")
    await strict.add("r", "local-b")
    details = error_details(await _resolve_error(strict, "r"))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EGRESS_REFUSED")
    assert "nothing was sent" in details.message
    assert [a.reason for a in details.attempts] == ["EGRESS_REFUSED", "EGRESS_REFUSED"]
    assert all(a.http_status == 0 and a.latency_ms == 0 for a in details.attempts)
    assert counter.accepts == 0


async def test_a_refused_upstream_beside_a_reachable_one_does_not_hide_it(
    counter: AcceptCounter, open_registry: RegistryServer
) -> None:
    # The operator's upstream (from YAML) may reach the loopback registry; the one created
    # through ConfigService may not. Position 1 is refused without contact, 2 answers.
    seed = make_config([upstream_entry("open", open_registry.url)], egress_allow_cidrs=[])
    svc = await start_admin_service(seed, seed=True)
    try:
        await svc.create_upstream("local", counter.url("localhost"), group="default")
        await svc.create_registry("mixed", group="default")
        await svc.add("mixed", "local", group="default")
        await svc.add("mixed", "open", group="default")
        reply = await svc.resolve_stub.ResolveUpstream(
            pb.ResolveUpstreamRequest(registry_id="mixed", path="library/alpine/manifests/latest"),
            timeout=10,
        )
        assert reply.upstream.id == "open"
        assert [(a.upstream_id, a.reason) for a in reply.attempts] == [
            ("local", "EGRESS_REFUSED"),
            ("open", ""),
        ]
        assert counter.accepts == 0
    finally:
        await svc.close()
