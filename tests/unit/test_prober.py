"""The Prober (ResolveUpstream) against upstreams played by a mock wire (tests/support/mock_http.py).

Tables: which positions have the manifest (the hit is the lowest position that has it,
whatever the listing order and however slow the others are), and how a miss everywhere
is reported (NOT_FOUND only when every upstream said 404). Then the one re-authentication
after a 401. No process, no socket; built the way resolver.Resolver builds it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import pytest

from tests.support.mock_http import (
    MockUpstreams,
    basic,
    bearer_challenge,
    token_response,
    use_fake_dns,
)
from vregistry_server.errors import ResolveFailed
from vregistry_server.model import (
    Credentials,
    Outcome,
    Registry,
    RegistryUpstream,
    Settings,
    Upstream,
)
from vregistry_server.oci.auth import Authenticator
from vregistry_server.oci.http import Budget, HttpClient
from vregistry_server.oci.paths import parse_path
from vregistry_server.oci.probe import Prober
from vregistry_server.oci.token_cache import MemoryTokenCache

PATH = "library/alpine/manifests/latest"
DIGEST = "sha256:" + "d" * 64
HOSTS = ("one.registry.test", "two.registry.test", "three.registry.test")


@pytest.fixture(autouse=True)
def _fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_dns(monkeypatch)


def _upstream(host: str, credentials: Credentials | None = None) -> Upstream:
    name = host.split(".")[0]
    return Upstream(id=name, name=name.title(), url=f"https://{host}", credentials=credentials)


def _registry(*upstreams: Upstream) -> Registry:
    # Listed last position first: the order that counts is the position, not the listing.
    members = [RegistryUpstream(upstream=u, position=i + 1) for i, u in enumerate(upstreams)]
    return Registry(id="r", name="R", description="", upstreams=tuple(reversed(members)))


def _prober(client: HttpClient, settings: Settings) -> tuple[Authenticator, Prober]:
    authenticator = Authenticator(client=client, cache=MemoryTokenCache(), settings=settings)
    return authenticator, Prober(client=client, authenticator=authenticator, settings=settings)


def _open_registry(manifest_status: int, delay: float = 0.0):  # type: ignore[no-untyped-def]
    """An upstream without auth whose manifest HEAD answers ``manifest_status``."""

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        await asyncio.sleep(delay)
        headers = {}
        if manifest_status == 200:
            headers = {
                "Docker-Content-Digest": DIGEST,
                "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                "Content-Length": "512",
            }
        return httpx.Response(manifest_status, headers=headers)

    return handle


@pytest.mark.parametrize("concurrency", [1, 2, 3])
async def test_at_most_probe_concurrency_upstreams_in_flight_lowest_first(
    concurrency: int,
) -> None:
    in_flight: list[str] = []
    started: list[str] = []
    peak = 0

    def counting(host: str):  # type: ignore[no-untyped-def]
        async def handle(request: httpx.Request) -> httpx.Response:
            nonlocal peak
            if request.url.path == "/v2/":
                return httpx.Response(200)
            in_flight.append(host)
            started.append(host)
            peak = max(peak, len(in_flight))
            await asyncio.sleep(0.05)
            in_flight.remove(host)
            return httpx.Response(404)

        return handle

    mock = MockUpstreams({h: counting(h) for h in HOSTS})
    async with mock.client() as client:
        _, prober = _prober(client, Settings(probe_concurrency=concurrency, probe_retries=0))
        registry = _registry(*(_upstream(h) for h in HOSTS))
        with pytest.raises(ResolveFailed):
            await prober.resolve(registry, parse_path(PATH), Budget.start(10.0))
    assert peak == concurrency
    if concurrency == 1:
        assert started == list(HOSTS), "one at a time, in position order"


# --------------------------------------------------------------------------- position order


@dataclass(frozen=True)
class OrderCase:
    id: str
    statuses: tuple[int, ...]  # the manifest HEAD's status at positions 1, 2, ...
    hit_position: int
    outcomes: tuple[Outcome, ...]
    delays: tuple[float, ...] = ()


ORDER_CASES = [
    OrderCase(
        "first-has-it", (200, 200), 1, (Outcome.FOUND, Outcome.NOT_CHECKED)
    ),
    OrderCase(
        "only-second-has-it", (404, 200), 2, (Outcome.NOT_FOUND, Outcome.FOUND)
    ),
    OrderCase(
        "third-of-three", (404, 404, 200), 3,
        (Outcome.NOT_FOUND, Outcome.NOT_FOUND, Outcome.FOUND),
    ),
    OrderCase(
        "middle-of-three", (404, 200, 200), 2,
        (Outcome.NOT_FOUND, Outcome.FOUND, Outcome.NOT_CHECKED),
    ),
    OrderCase(
        # Position 1 answers last; its answer still wins over a faster position 2.
        "slow-first-still-wins", (200, 200), 1, (Outcome.FOUND, Outcome.NOT_CHECKED),
        delays=(0.1, 0.0),
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", ORDER_CASES, ids=[c.id for c in ORDER_CASES])
async def test_position_order(case: OrderCase) -> None:
    hosts = HOSTS[: len(case.statuses)]
    delays = case.delays or (0.0,) * len(hosts)
    mock = MockUpstreams(
        {h: _open_registry(s, d) for h, s, d in zip(hosts, case.statuses, delays, strict=True)}
    )
    async with mock.client() as client:
        _, prober = _prober(client, Settings())
        registry = _registry(*(_upstream(h) for h in hosts))
        resolution = await prober.resolve(registry, parse_path(PATH), Budget.start(10.0))

    hit_host = hosts[case.hit_position - 1]
    assert resolution.hit.member.position == case.hit_position
    assert resolution.hit.member.upstream.id == hit_host.split(".")[0]
    assert resolution.hit.url == f"https://{hit_host}/v2/{PATH}"
    assert resolution.hit.digest == DIGEST
    assert resolution.hit.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert resolution.hit.size == 512
    assert [a.position for a in resolution.attempts] == list(range(1, len(hosts) + 1))
    assert tuple(a.outcome for a in resolution.attempts) == case.outcomes
    checked = [a for a in resolution.attempts if a.outcome is not Outcome.NOT_CHECKED]
    assert [a.http_status for a in checked] == list(case.statuses[: len(checked)])
    # Every manifest probe asked for the OCI and Docker manifest types.
    for request in mock.seen(method="HEAD"):
        assert "application/vnd.oci.image.manifest.v1+json" in request.headers["Accept"]


# --------------------------------------------------------------------------- misses


@dataclass(frozen=True)
class MissCase:
    id: str
    statuses: tuple[int, ...]
    outcomes: tuple[Outcome, ...]
    code: str  # the gRPC status code name of the failure
    reason: str


MISS_CASES = [
    MissCase(
        "404-everywhere", (404, 404), (Outcome.NOT_FOUND, Outcome.NOT_FOUND),
        "NOT_FOUND", "NOT_FOUND_ON_UPSTREAMS",
    ),
    MissCase(
        "404-and-refused", (404, 403), (Outcome.NOT_FOUND, Outcome.AUTH_FAILED),
        "FAILED_PRECONDITION", "UPSTREAM_CREDENTIALS_REJECTED",
    ),
    MissCase(
        # One upstream could not be checked: not "not found", a retry may still find it.
        "404-and-unavailable", (404, 503), (Outcome.NOT_FOUND, Outcome.UNAVAILABLE),
        "UNAVAILABLE", "UPSTREAM_UNREACHABLE",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", MISS_CASES, ids=[c.id for c in MISS_CASES])
async def test_miss_everywhere(case: MissCase) -> None:
    hosts = HOSTS[: len(case.statuses)]
    mock = MockUpstreams({h: _open_registry(s) for h, s in zip(hosts, case.statuses, strict=True)})
    async with mock.client() as client:
        _, prober = _prober(client, Settings(probe_retries=0))
        with pytest.raises(ResolveFailed) as info:
            await prober.resolve(
                _registry(*(_upstream(h) for h in hosts)), parse_path(PATH), Budget.start(10.0)
            )
    failure = info.value
    assert failure.code.name == case.code
    assert failure.reason == case.reason
    assert [a.position for a in failure.attempts] == [1, 2]
    assert tuple(a.outcome for a in failure.attempts) == case.outcomes
    assert [a.http_status for a in failure.attempts] == list(case.statuses)
    assert failure.metadata["registry_id"] == "r"
    # Each upstream was asked exactly once for the manifest (no retries configured).
    assert [r.url.host for r in mock.seen(method="HEAD")].count(hosts[0]) == 1


# --------------------------------------------------------------------------- 401, then re-auth


async def test_revoked_cached_token_is_replaced_once() -> None:
    """A cached token the registry no longer accepts: one new token, one retry, found."""
    realm = "https://auth.registry.test/token"
    issued: list[str] = []
    valid: set[str] = set()

    def token_server(request: httpx.Request) -> httpx.Response:
        issued.append(f"tok-{len(issued) + 1}")
        valid.add(issued[-1])
        return token_response(issued[-1])

    def registry(request: httpx.Request) -> httpx.Response:
        challenge = bearer_challenge(realm, "registry.test")
        if request.url.path == "/v2/":
            return httpx.Response(401, headers=challenge)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in valid:
            return httpx.Response(401, headers=challenge)
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    mock = MockUpstreams({"one.registry.test": registry, "auth.registry.test": token_server})
    registry_config = _registry(_upstream("one.registry.test"))
    path = parse_path(PATH)
    async with mock.client() as client:
        _, prober = _prober(client, Settings())
        first = await prober.resolve(registry_config, path, Budget.start(10.0))
        assert first.hit.headers["Authorization"] == "Bearer tok-1"
        valid.clear()  # the registry revokes tok-1 (still in our cache)
        before = len(mock.requests)
        second = await prober.resolve(registry_config, path, Budget.start(10.0))
        again = mock.requests[before:]
        third_before = len(mock.requests)
        third = await prober.resolve(registry_config, path, Budget.start(10.0))
        third_requests = mock.requests[third_before:]

    assert second.hit.member.position == 1
    assert [a.outcome for a in second.attempts] == [Outcome.FOUND]
    assert second.hit.headers["Authorization"] == "Bearer tok-2"
    assert issued == ["tok-1", "tok-2"]
    # HEAD with the cached token (401), one token request, HEAD with the new one (200).
    assert [(r.method, r.url.host) for r in again] == [
        ("HEAD", "one.registry.test"),
        ("GET", "auth.registry.test"),
        ("HEAD", "one.registry.test"),
    ]
    assert [r.headers["Authorization"] for r in again if r.method == "HEAD"] == [
        "Bearer tok-1",
        "Bearer tok-2",
    ]
    # The new token replaced the revoked one in the cache.
    assert third.hit.headers["Authorization"] == "Bearer tok-2"
    assert [(r.method, r.url.host) for r in third_requests] == [("HEAD", "one.registry.test")]


async def test_resource_asking_for_another_scheme_gets_it() -> None:
    """/v2/ is open but the manifest answers 401 with a Basic challenge: retried with Basic."""

    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        if request.headers.get("Authorization") != basic("alice", "s3cret-basic"):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    mock = MockUpstreams({"one.registry.test": registry})
    upstream = _upstream("one.registry.test", Credentials("alice", "s3cret-basic"))
    async with mock.client() as client:
        _, prober = _prober(client, Settings())
        resolution = await prober.resolve(_registry(upstream), parse_path(PATH), Budget.start(10.0))

    assert [a.outcome for a in resolution.attempts] == [Outcome.FOUND]
    assert resolution.hit.headers["Authorization"] == basic("alice", "s3cret-basic")
    heads = mock.seen(method="HEAD")
    assert [r.headers.get("Authorization") for r in heads] == [
        None,
        basic("alice", "s3cret-basic"),
    ]


async def test_401_after_a_fresh_token_is_auth_failed_not_retried() -> None:
    """A token just fetched and still refused: the credentials are wrong, no second try."""
    realm = "https://auth.registry.test/token"

    def registry(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers=bearer_challenge(realm, "registry.test"))

    mock = MockUpstreams(
        {
            "one.registry.test": registry,
            "auth.registry.test": lambda request: token_response("tok-useless"),
        }
    )
    async with mock.client() as client:
        _, prober = _prober(client, Settings())
        with pytest.raises(ResolveFailed) as info:
            await prober.resolve(
                _registry(_upstream("one.registry.test")), parse_path(PATH), Budget.start(10.0)
            )
    (attempt,) = info.value.attempts
    assert attempt.outcome is Outcome.AUTH_FAILED
    assert attempt.http_status == 401
    assert len(mock.seen(method="HEAD")) == 1
    assert len(mock.seen(host="auth.registry.test")) == 1
