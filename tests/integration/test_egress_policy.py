"""The egress policy through gRPC (oci/egress.py): who wrote the URL decides what it may reach.

Real parts: the in-process server with ConfigService, the real docker-registry, real
sockets. Stand-ins (tests/support/hostile.py) only where an attack needs behaviour no real
server has: a token realm that answers its POST with a 307 to another loopback address
(127.0.0.2), an upstream that redirects its ping, a listening socket that only counts
accepts. Forms that would point at a private, link-local or metadata address are shown
refused by the absence of any connection attempt (``connect_log``, which also refuses,
rather than reaches, anything outside loopback).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from tests.support.admin import (
    LOOPBACK_EGRESS,
    AdminService,
    CapturedLogs,
    empty_config,
    start_admin_service,
)
from tests.support.hostile import (
    AcceptCounter,
    Answer,
    RecordingServer,
    Tarpit,
    connect_log,
    start_recording,
)
from tests.support.registry import RegistryServer
from tests.support.service import Service, error_details, make_config, upstream_entry
from tests.support.waiting import until
from vregistry.v1 import config_service_pb2 as cpb
from vregistry.v1 import upstream_service_pb2 as pb

PASSWORD = "egress-pw-never-forwarded-5521"
OTHER_HOST = "127.0.0.2"


@pytest.fixture(autouse=True)
def _no_password_in_logs() -> Iterator[None]:
    captured = CapturedLogs()
    logger = logging.getLogger("vregistry_server")
    previous = logger.level
    logger.addHandler(captured)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(captured)
        logger.setLevel(previous)
    assert PASSWORD not in captured.text


@pytest.fixture
async def strict() -> AsyncIterator[AdminService]:
    """ConfigService WITHOUT settings.egress_allow_cidrs: API upstreams reach public only."""
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


async def _auth_error(svc: AdminService, upstream_id: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await svc.resolve_stub.GetAuthHeaders(
            pb.GetAuthHeadersRequest(upstream_id=upstream_id, path="library/alpine"), timeout=10
        )
    return info.value


async def _create_error(svc: AdminService, upstream_id: str, url: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await svc.create_upstream(upstream_id, url, allow_http=url.startswith("http:"))
    return info.value


# --------------------------------------------------------------------------- API upstreams


async def test_api_upstream_on_loopback_is_refused_before_any_byte(
    strict: AdminService, counter: AcceptCounter
) -> None:
    # A host name that resolves to 127.0.0.1 passes validation; the connection is refused.
    await strict.create_upstream("local", counter.url("localhost"), allow_http=True)
    error = await _auth_error(strict, "local")
    details = error_details(error)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "EGRESS_REFUSED"
    assert "loopback" in details.message and "nothing was sent" in details.message
    # The IP literal is refused at create already.
    literal = error_details(await _create_error(strict, "literal", counter.url()))
    assert (literal.code, literal.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EGRESS_REFUSED")
    assert "field 'url'" in literal.message
    assert counter.accepts == 0


async def test_update_through_the_api_makes_an_operator_upstream_an_api_one(
    counter: AcceptCounter,
) -> None:
    # Seeded from YAML (the operator's), the upstream may reach loopback; once its url is
    # changed through ConfigService, it is the API's, and the same host is refused.
    seed = make_config([upstream_entry("seeded", counter.url("localhost"))])
    svc = await start_admin_service(seed, seed=True)
    try:
        error = await _auth_error(svc, "seeded")
        assert error_details(error).reason == "UPSTREAM_UNREACHABLE"  # connected, then closed
        assert counter.accepts >= 1
        before = counter.accepts
        name = "groups/default/upstreams/seeded"
        await svc.update_upstream(name, ["url"], url=counter.url("localhost") + "/")
        assert svc.resolver.config.upstreams["seeded"].source == "api"
        assert error_details(await _auth_error(svc, "seeded")).reason == "EGRESS_REFUSED"
        assert counter.accepts == before
    finally:
        await svc.close()


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0177.0.0.1", "0x7f000001", "127.1", "[::ffff:127.0.0.1]",
     "[::ffff:a9fe:a9fe]", "0251.0376.0251.0376", "2852039166"],
)  # fmt: skip
async def test_non_canonical_literal_forms_are_invalid(
    strict: AdminService, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect_log(monkeypatch) as log:
        details = error_details(await _create_error(strict, "odd", f"http://{host}:5000"))
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "non-canonical" in details.message
        # TestUpstream of the same unsaved upstream: refused by the same validation.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await strict.admin.TestUpstream(
                cpb.TestUpstreamRequest(
                    upstream=cpb.UpstreamConfig(
                        display_name="Odd", url=f"http://{host}:5000", allow_http=True
                    )
                ),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert log.attempts == []


REFUSED_LITERALS = [
    "127.0.0.1", "127.0.0.2", "[::1]", "10.0.0.5", "172.16.0.9", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "169.254.170.2", "[fd00:ec2::254]", "100.100.100.200", "0.0.0.0",
    "[fe80::1]", "[64:ff9b::a9fe:a9fe]",
]  # fmt: skip


@pytest.mark.parametrize("host", REFUSED_LITERALS)
async def test_refused_literal_is_refused_at_create_and_in_test_upstream(
    strict: AdminService, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://{host}:5000"
    with connect_log(monkeypatch) as log:
        details = error_details(await _create_error(strict, "lit", url))
        assert (details.code, details.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "EGRESS_REFUSED",
        )
        reply = await strict.admin.TestUpstream(
            cpb.TestUpstreamRequest(
                upstream=cpb.UpstreamConfig(display_name="Lit", url=url, allow_http=True)
            ),
            timeout=10,
        )
    _assert_only_the_refusal(reply)
    assert log.attempts == [], "a refused address was never connected to"


def _assert_only_the_refusal(reply: cpb.TestUpstreamResponse) -> None:
    """TestUpstream of a refused target: the refusal, and nothing measured or read there."""
    assert not reply.ok and reply.scheme == ""
    ping, token, head = reply.steps
    assert ping.kind == cpb.TEST_STEP_KIND_PING
    assert ping.outcome == cpb.TEST_STEP_OUTCOME_FAILED
    assert ping.http_status == 0 and ping.latency_ms == 0
    assert "egress refused" in ping.message
    assert token.outcome == head.outcome == cpb.TEST_STEP_OUTCOME_SKIPPED
    assert token.http_status == head.http_status == 0
    assert token.latency_ms == head.latency_ms == 0


async def test_test_upstream_of_a_refused_host_name_reports_only_the_refusal(
    strict: AdminService, counter: AcceptCounter, open_registry: RegistryServer
) -> None:
    for url in (counter.url("localhost"), open_registry.url.replace("127.0.0.1", "localhost")):
        reply = await strict.admin.TestUpstream(
            cpb.TestUpstreamRequest(
                upstream=cpb.UpstreamConfig(display_name="Scan", url=url, allow_http=True)
            ),
            timeout=10,
        )
        _assert_only_the_refusal(reply)
    assert counter.accepts == 0


async def test_the_same_url_works_from_yaml_and_with_the_allow_list(
    open_registry: RegistryServer, service_factory: object
) -> None:
    url = open_registry.url.replace("127.0.0.1", "localhost")
    # From the operator's YAML: the operator chose a loopback registry.
    seed = make_config([upstream_entry("yaml", url)])
    svc = await start_admin_service(seed, seed=True)
    try:
        reply = await svc.resolve_stub.GetAuthHeaders(
            pb.GetAuthHeadersRequest(upstream_id="yaml", path="library/alpine"), timeout=10
        )
        assert reply.scheme == "none"
        # The same url through ConfigService, no allow-list: refused.
        await svc.create_upstream("api", url, allow_http=True)
        assert error_details(await _auth_error(svc, "api")).reason == "EGRESS_REFUSED"
    finally:
        await svc.close()
    # With the operator's allow-list, the API upstream reaches it too.
    listed = await start_admin_service(empty_config(egress_allow_cidrs=LOOPBACK_EGRESS))
    try:
        await listed.create_upstream("api", url, allow_http=True)
        reply = await listed.resolve_stub.GetAuthHeaders(
            pb.GetAuthHeadersRequest(upstream_id="api", path="library/alpine"), timeout=10
        )
        assert reply.scheme == "none"
    finally:
        await listed.close()


# --------------------------------------------------------------------------- redirects


def _realm_redirecting_to(target: RecordingServer, status: int) -> RecordingServer:
    """A registry whose token endpoint answers every request with ``status`` to ``target``.
    A stand-in: no real token server redirects its POST to another host."""
    holder: dict[str, RecordingServer] = {}

    def script(method: str, path: str) -> Answer:
        if path.startswith("/v2/"):
            realm = f"{holder['self'].url}/token"
            return Answer(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})
        return Answer(status, {"Location": f"{target.url}/token?moved=1"})

    holder["self"] = start_recording(script)
    return holder["self"]


def _token_answer(method: str, path: str) -> Answer:
    return Answer(200, body=b'{"access_token": "stolen", "expires_in": 300}')


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_oauth2_form_never_follows_a_redirect_to_another_host(
    service_factory: object, status: int
) -> None:
    elsewhere = start_recording(_token_answer, host=OTHER_HOST)
    realm = _realm_redirecting_to(elsewhere, status)
    try:
        env: dict[str, str] = {}
        # Even allow-listed by the realm rule, the form is not replayed to another host.
        entry = upstream_entry(
            "up", realm.url, credentials=("carol", PASSWORD), env=env, token_flow="oauth2",
            realm_allow_hosts=[OTHER_HOST],
        )  # fmt: skip
        service: Service = await service_factory(make_config([entry], env=env))  # type: ignore[operator]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.auth("up", "library/alpine")
        details = error_details(info.value)
        assert details.code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.reason == "UPSTREAM_REALM_REFUSED"
        assert "were not sent" in details.message
        posts = [s for s in realm.seen if s.path.startswith("/token")]
        assert posts and PASSWORD.encode() in posts[0].body  # the realm itself got the form
        assert elsewhere.seen == [], "127.0.0.2 received nothing"
        assert PASSWORD not in details.message
    finally:
        realm.stop()
        elsewhere.stop()


async def test_token_redirect_hop_is_rechecked_against_the_realm_rule(
    service_factory: object,
) -> None:
    elsewhere = start_recording(_token_answer, host=OTHER_HOST)
    realm = _realm_redirecting_to(elsewhere, 302)
    try:
        env: dict[str, str] = {}
        entry = upstream_entry(
            "up", realm.url, credentials=("carol", PASSWORD), env=env, token_flow="get"
        )
        service: Service = await service_factory(make_config([entry], env=env))  # type: ignore[operator]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.auth("up", "library/alpine")
        details = error_details(info.value)
        assert details.reason == "UPSTREAM_REALM_REFUSED"
        assert OTHER_HOST in details.message
        assert elsewhere.seen == [], "the hop to a host outside the realm rule was not made"
    finally:
        realm.stop()
        elsewhere.stop()


def _ping_redirecting_to(location: str, host: str = "127.0.0.1") -> RecordingServer:
    """An upstream whose /v2/ redirects (a stand-in: registries answer /v2/ themselves)."""
    return start_recording(lambda m, p: Answer(302, {"Location": location}), host=host)


@pytest.mark.parametrize(
    "location",
    ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.5/v2/", "http://[fd00:ec2::254]/",
     "http://0.0.0.0:80/v2/"],
)  # fmt: skip
async def test_ping_redirect_to_a_refused_address_is_refused_without_connecting(
    service_factory: object, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = _ping_redirecting_to(location)
    try:
        # An operator upstream on loopback: its own host is fine, a redirect elsewhere is not.
        service: Service = await service_factory(  # type: ignore[operator]
            make_config([upstream_entry("up", upstream.url)])
        )
        with connect_log(monkeypatch) as log, pytest.raises(grpc.aio.AioRpcError) as info:
            await service.auth("up", "library/alpine")
        details = error_details(info.value)
        assert (details.code, details.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "EGRESS_REFUSED",
        )
        assert [port for _, port in log.attempts] == [upstream.port] * len(log.attempts)
        assert all(host.startswith("127.") for host, _ in log.attempts)
    finally:
        upstream.stop()


async def test_api_upstream_ping_redirect_to_another_loopback_host_is_refused() -> None:
    other = start_recording(lambda m, p: Answer(200, body=b"{}"), host=OTHER_HOST)
    upstream = _ping_redirecting_to(f"{other.url}/v2/")
    # The operator allowed exactly the upstream's address, not 127.0.0.2.
    svc = await start_admin_service(empty_config(egress_allow_cidrs=["127.0.0.1/32"]))
    try:
        await svc.create_upstream("api", upstream.url, allow_http=True)
        details = error_details(await _auth_error(svc, "api"))
        assert details.reason == "EGRESS_REFUSED"
        assert upstream.seen and other.seen == []
    finally:
        await svc.close()
        upstream.stop()
        other.stop()


# --------------------------------------------------------------------------- bounded per upstream


async def _timed_resolve(service: Service, registry: str) -> float:
    started = time.perf_counter()
    # refresh: each call asks the upstream (a cached answer would not touch its pool).
    await service.resolve(registry, "library/alpine/manifests/latest", timeout=10, refresh=True)
    return time.perf_counter() - started


async def _abandoned_call(service: Service, timeout: float = 1.0, tag: str = "held") -> None:
    # Each held call asks for its own tag: identical misses in flight share one check.
    with pytest.raises(grpc.aio.AioRpcError):
        await service.resolve("slow", f"library/alpine/manifests/{tag}", timeout=timeout)


async def test_a_tarpit_upstream_costs_its_own_budget_only(
    service_factory: object, open_registry: RegistryServer
) -> None:
    """The tarpit (a stand-in: one byte every 0.5 s, no real registry does that) holds 20
    calls; the second upstream's calls stay fast, the 21st call into the tarpit waits for a
    slot only within its own deadline, and the tarpit's connections are closed by the hard
    deadline."""
    tarpit = Tarpit(interval=0.5)
    try:
        config = make_config(
            [upstream_entry("tarpit", tarpit.url), upstream_entry("fast", open_registry.url)],
            {"slow": ["tarpit"], "fast": ["fast"]},
            request_timeout_seconds=3, probe_timeout_seconds=3, probe_retries=0,
            circuit_failure_threshold=1000, max_in_flight_per_upstream=20,
            max_connections_per_upstream=20,
        )  # fmt: skip
        service: Service = await service_factory(config)  # type: ignore[operator]
        await _timed_resolve(service, "fast")  # warm: discovery and connection
        baseline = [await _timed_resolve(service, "fast") for _ in range(20)]

        started = time.monotonic()
        slow = [asyncio.create_task(_abandoned_call(service, tag=f"held-{n}")) for n in range(20)]
        await until(lambda: tarpit.open_connections >= 20, 5, shown=lambda: tarpit.open_connections)
        during = [await _timed_resolve(service, "fast") for _ in range(20)]
        assert tarpit.open_connections >= 20, "the tarpit held its 20 calls during the measure"

        # The in-flight limit: one more call into the tarpit waits for a slot within its
        # own deadline, never reaches the tarpit, and is answered before that deadline.
        accepted = tarpit.accepted
        t0 = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.resolve("slow", "library/alpine/manifests/latest", timeout=0.5)
        refused_after = time.perf_counter() - t0
        details = error_details(info.value)
        assert details.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert "in flight" in details.attempts[0].message
        assert refused_after < 0.5, refused_after
        assert tarpit.accepted == accepted, "the 21st call never reached the tarpit"
        await asyncio.gather(*slow)

        # The hard deadline (request_timeout_seconds = 3) closes every abandoned exchange.
        await until(lambda: tarpit.open_connections == 0, 6, shown=lambda: tarpit.open_connections)
        closed_after = time.monotonic() - started
    finally:
        tarpit.stop()
    p50_base, p50_during = statistics.median(baseline), statistics.median(during)
    print(
        f"\ntarpit isolation: second upstream p50 {p50_base * 1000:.1f} ms without the tarpit, "
        f"{p50_during * 1000:.1f} ms (max {max(during) * 1000:.1f} ms) while it holds 20 calls; "
        f"21st tarpit call answered in {refused_after * 1000:.1f} ms (its deadline 500 ms); "
        f"tarpit connections closed {closed_after:.1f} s after the calls started"
    )
    assert p50_during < 0.5
    assert closed_after < 3 + 3


async def test_in_flight_limit_waits_within_the_budget_and_frees_up(
    service_factory: object,
) -> None:
    """With max_in_flight_per_upstream = 2 and the tarpit (a stand-in) holding both slots, a
    third call waits for a slot until its budget ends and never reaches the tarpit; once the
    hard deadline ended the held exchanges, calls are admitted again.

    The held exchanges run for their whole 3 s budget, so the third call's 0.8 s ends first
    however long the set-up took on a loaded machine (with 1 s, a set-up slower than 0.2 s
    let a held exchange end and hand the third call its slot)."""
    tarpit = Tarpit(interval=0.5)
    try:
        config = make_config(
            [upstream_entry("tarpit", tarpit.url)], {"slow": ["tarpit"]},
            request_timeout_seconds=3.0, probe_timeout_seconds=3.0, probe_retries=0,
            circuit_failure_threshold=1000, max_in_flight_per_upstream=2,
        )  # fmt: skip
        service: Service = await service_factory(config)  # type: ignore[operator]
        held = [
            asyncio.create_task(_abandoned_call(service, timeout=3.5, tag=f"held-{n}"))
            for n in range(2)
        ]
        await until(lambda: tarpit.open_connections >= 2, 5, shown=lambda: tarpit.open_connections)
        accepted = tarpit.accepted
        with pytest.raises(grpc.aio.AioRpcError) as info:
            # its deadline ends before the held exchanges' hard deadline (3 s) frees a slot
            await service.resolve("slow", "library/alpine/manifests/latest", timeout=0.8)
        message = error_details(info.value).attempts[0].message
        assert "max_in_flight_per_upstream" in message and "none ended" in message
        assert tarpit.accepted == accepted
        await asyncio.gather(*held)
        await until(lambda: tarpit.open_connections == 0, 5, shown=lambda: tarpit.open_connections)
        await _abandoned_call(service)  # admitted again: it reaches the tarpit
        assert tarpit.accepted > accepted
    finally:
        tarpit.stop()


# --------------------------------------------------------------------------- ResolveUpstream
# Every upstream refused: nothing was contacted and a retry cannot change that, so the answer
# is the operator's FAILED_PRECONDITION EGRESS_REFUSED, with each attempt's reason.


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
