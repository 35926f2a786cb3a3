"""The Authenticator against upstreams played by a mock wire (no process, no socket).

One table: what ``/v2/`` answers (open, Basic, Bearer), the upstream's credentials, and
what GetAuthHeaders must give: the headers, the scheme, every request made, and for a
Bearer challenge the token request's service and scope. A second call for the same
repository makes no request at all (discovery and token are cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.mock_http import (
    MockUpstreams,
    basic,
    bearer_challenge,
    token_response,
    use_fake_dns,
)
from vregistry_server.errors import CredentialsRejected
from vregistry_server.model import Credentials, Scheme, Settings, Upstream
from vregistry_server.oci.auth import Authenticator
from vregistry_server.oci.http import Budget, HttpClient
from vregistry_server.oci.paths import parse_path_or_repository
from vregistry_server.oci.realm_policy import RealmRefused
from vregistry_server.oci.token_cache import MemoryTokenCache

REGISTRY = "registry.test"
AUTH = "auth.registry.test"
REALM = f"https://{AUTH}/token"
SERVICE = "registry.test"
PATH = "library/alpine/manifests/latest"
SCOPE = "repository:library/alpine:pull"
PING = ("GET", REGISTRY, "/v2/")
TOKEN = ("GET", AUTH, "/token")


@pytest.fixture(autouse=True)
def _fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_dns(monkeypatch)


@dataclass(frozen=True)
class Case:
    id: str
    v2: httpx.Response
    credentials: tuple[str, str] | None = None
    token: str | None = None  # what the realm hands out; None: no token server
    # What must come back (headers and scheme), or the error that must be raised.
    headers: dict[str, str] = field(default_factory=dict)
    scheme: Scheme = Scheme.NONE
    raises: type[Exception] | None = None
    requests: tuple[tuple[str, str, str], ...] = (PING,)  # (method, host, path) of each


CASES = [
    Case("open-registry", v2=httpx.Response(200), headers={}, scheme=Scheme.NONE),
    Case(
        "basic-with-credentials",
        v2=httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry.test"'}),
        credentials=("alice", "s3cret-basic"),
        headers={"Authorization": basic("alice", "s3cret-basic")},
        scheme=Scheme.BASIC,
    ),
    Case(
        "basic-without-credentials",
        v2=httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry.test"'}),
        raises=CredentialsRejected,
    ),
    Case(
        "bearer-anonymous",
        v2=httpx.Response(401, headers=bearer_challenge(REALM, SERVICE)),
        token="tok-anonymous",
        headers={"Authorization": "Bearer tok-anonymous"},
        scheme=Scheme.BEARER,
        requests=(PING, TOKEN),
    ),
    Case(
        "bearer-with-credentials",
        v2=httpx.Response(401, headers=bearer_challenge(REALM, SERVICE)),
        credentials=("bob", "s3cret-token"),
        token="tok-bob",
        headers={"Authorization": "Bearer tok-bob"},
        scheme=Scheme.BEARER,
        requests=(PING, TOKEN),
    ),
    Case(
        # The realm is on a host that is neither the registry's nor its domain: the
        # credentials go nowhere, not even a request to that host.
        "bearer-realm-on-a-foreign-host",
        v2=httpx.Response(
            401, headers=bearer_challenge("https://collector.elsewhere.test/token", SERVICE)
        ),
        credentials=("bob", "s3cret-token"),
        token="never-asked-for",
        raises=RealmRefused,
    ),
]


def _upstream(case: Case) -> Upstream:
    credentials = Credentials(*case.credentials) if case.credentials else None
    return Upstream(id="up", name="Up", url=f"https://{REGISTRY}", credentials=credentials)


def _mock(case: Case) -> MockUpstreams:
    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return case.v2
        return httpx.Response(404)

    def token_server(request: httpx.Request) -> httpx.Response:
        assert case.token is not None, "no token request was expected"
        return token_response(case.token)

    return MockUpstreams(
        {REGISTRY: registry, AUTH: token_server, "collector.elsewhere.test": token_server}
    )


def _authenticator(client: HttpClient) -> Authenticator:
    return Authenticator(client=client, cache=MemoryTokenCache(), settings=Settings())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_auth_headers(case: Case) -> None:
    upstream = _upstream(case)
    path = parse_path_or_repository(PATH)
    mock = _mock(case)
    async with mock.client() as client:
        authenticator = _authenticator(client)
        if case.raises is not None:
            with pytest.raises(case.raises):
                await authenticator.headers_for(
                    upstream=upstream, path=path, budget=Budget.start(10.0)
                )
            assert mock.summary() == list(case.requests)
            return

        first = await authenticator.headers_for(
            upstream=upstream, path=path, budget=Budget.start(10.0)
        )
        assert first.headers == case.headers
        assert first.scheme is case.scheme
        assert not first.cache_hit
        assert mock.summary() == list(case.requests)

        if case.scheme is Scheme.BEARER:
            (token_request,) = mock.seen(host=AUTH)
            assert token_request.url.params.get_list("service") == [SERVICE]
            assert token_request.url.params.get_list("scope") == [SCOPE]
            if case.credentials:
                assert token_request.headers["Authorization"] == basic(*case.credentials)
            else:
                assert "Authorization" not in token_request.headers
            assert first.expires_at is not None

        # The same repository again (a blob this time): no request, the same headers.
        blob = parse_path_or_repository("library/alpine/blobs/sha256:" + "a" * 64)
        before = len(mock.requests)
        second = await authenticator.headers_for(
            upstream=upstream, path=blob, budget=Budget.start(10.0)
        )
        assert len(mock.requests) == before, mock.summary()[before:]
        assert second.headers == first.headers
        assert second.scheme is first.scheme
        assert second.cache_hit is (case.scheme is Scheme.BEARER)


async def test_bearer_token_per_repository_scope() -> None:
    """Another repository is another scope: one more token request, and only that."""
    case = next(c for c in CASES if c.id == "bearer-anonymous")
    mock = _mock(case)
    upstream = _upstream(case)
    async with mock.client() as client:
        authenticator = _authenticator(client)
        for repository in ("library/alpine", "library/busybox", "library/alpine"):
            await authenticator.headers_for(
                upstream=upstream,
                path=parse_path_or_repository(f"{repository}/manifests/latest"),
                budget=Budget.start(10.0),
            )
    assert mock.summary() == [PING, TOKEN, TOKEN]
    scopes = [r.url.params.get_list("scope") for r in mock.seen(host=AUTH)]
    assert scopes == [[SCOPE], ["repository:library/busybox:pull"]]
