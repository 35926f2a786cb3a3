"""Hostile input through a live gRPC channel: only documented statuses, no crash, no stall.

Hypothesis explores every RPC field with grammar-shaped and arbitrary values;
a volume run sends 10,000 generated requests concurrently. The server is a real
``vregistry-server`` process in front of real registries, so a crash, a hang
or an undocumented status cannot hide behind the test harness.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.processes import free_port
from tests.support.registry import RegistryServer
from tests.support.server_process import ServerProcess, launch
from vregistry.v1 import upstream_service_pb2 as pb
from vregistry.v1 import upstream_service_pb2_grpc as pb_grpc

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.PERMISSION_DENIED,  # ACTION_NOT_ALLOWED: push, delete, * on pull-only upstreams
}
KNOWN_IDS = ["open", "token", "basic", "down", "all", "empty"]
DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory,
    open_registry: RegistryServer,
    token_registry: RegistryServer,
    basic_registry: RegistryServer,
) -> Iterator[ServerProcess]:
    document = {
        "upstreams": [
            {"id": "open", "name": "Open", "url": open_registry.url, "allow_http": True},
            {
                "id": "token",
                "name": "Token",
                "url": token_registry.url,
                "allow_http": True,
                "username": "bob",
                "password_env": "PW_TOKEN",
            },
            {
                "id": "basic",
                "name": "Basic",
                "url": basic_registry.url,
                "allow_http": True,
                "username": "alice",
                "password_env": "PW_BASIC",
            },
            {
                "id": "down",
                "name": "Down",
                "url": f"http://127.0.0.1:{free_port()}",
                "allow_http": True,
            },
        ],
        "registries": [
            {"id": "all", "name": "All", "upstreams": ["open", "token", "basic", "down"]},
            {"id": "empty", "name": "Empty", "upstreams": []},
        ],
        "settings": {"request_timeout_seconds": 3, "probe_timeout_seconds": 2},
    }
    env = {"PW_TOKEN": "s3cret-token-pw", "PW_BASIC": "s3cret-basic-pw"}
    server = launch(tmp_path_factory.mktemp("fuzz"), document, env=env)
    yield server
    assert server.process.poll() is None, f"server died during fuzzing:\n{server.logs()[-3000:]}"
    assert server.stop() == 0


@pytest.fixture(scope="module")
def stub(fuzz_server: ServerProcess) -> Iterator[pb_grpc.UpstreamServiceStub]:
    with grpc.insecure_channel(fuzz_server.target) as channel:
        yield pb_grpc.UpstreamServiceStub(channel)


# --------------------------------------------------------------------------- strategies

segment = st.text(alphabet=string.ascii_lowercase + string.digits + "._-", min_size=1, max_size=12)
name = st.lists(segment, min_size=1, max_size=4).map("/".join)
tag = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=130)
digest = st.one_of(
    st.just(DIGEST),
    st.text(alphabet="0123456789abcdef", min_size=60, max_size=68).map(lambda h: "sha256:" + h),
    st.text(min_size=1, max_size=40).map(lambda t: "sha512:" + t),
)
grammar_path = st.one_of(
    st.tuples(name, tag | digest).map(lambda p: f"{p[0]}/manifests/{p[1]}"),
    st.tuples(name, digest).map(lambda p: f"{p[0]}/blobs/{p[1]}"),
    name.map(lambda n: f"{n}/tags/list"),
    st.tuples(name, digest).map(lambda p: f"{p[0]}/referrers/{p[1]}"),
    name,
)
hostile_path = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="/.?#%:@ \\\x00\t\nAa0-_", max_size=80),
    grammar_path.map(lambda p: p.upper()),
    grammar_path.map(lambda p: "/" + p + "/"),
    grammar_path.map(lambda p: p.replace("/", "//", 1)),
    grammar_path.map(lambda p: p + "?" + p),
    grammar_path.map(lambda p: "../" + p),
    st.integers(2040, 5000).map(lambda n: "a/" * (n // 2) + "manifests/latest"),
)
path = st.one_of(grammar_path, hostile_path)
identifier = st.one_of(
    st.sampled_from(KNOWN_IDS), st.text(max_size=40), st.integers(250, 400).map(lambda n: "x" * n)
)
actions = st.lists(
    st.one_of(st.sampled_from(["pull", "push", "delete", "*"]), st.text(max_size=12)), max_size=10
)


def _check(error: grpc.RpcError | None) -> grpc.StatusCode:
    if error is None:
        return grpc.StatusCode.OK
    code = error.code()  # type: ignore[attr-defined]
    assert code in DOCUMENTED, f"undocumented status {code}: {error.details()}"  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    assert details and len(details) < 2000
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert any(d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) for d in status.details)
    return code  # type: ignore[no-any-return]


def _call(method: object, request: object) -> grpc.StatusCode:
    try:
        method(request, timeout=10)  # type: ignore[operator]
    except grpc.RpcError as error:
        return _check(error)
    return grpc.StatusCode.OK


FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(upstream_id=identifier, path=path)
def test_fuzz_url_for(stub: pb_grpc.UpstreamServiceStub, upstream_id: str, path: str) -> None:
    _call(stub.UrlFor, pb.UrlForRequest(upstream_id=upstream_id, path=path))


@FUZZ
@given(upstream_id=identifier, path=path, actions=actions)
def test_fuzz_get_auth_headers(
    stub: pb_grpc.UpstreamServiceStub, upstream_id: str, path: str, actions: list[str]
) -> None:
    _call(
        stub.GetAuthHeaders,
        pb.GetAuthHeadersRequest(upstream_id=upstream_id, path=path, actions=actions),
    )


@FUZZ
@given(registry_id=identifier, path=path)
def test_fuzz_resolve_upstream(
    stub: pb_grpc.UpstreamServiceStub, registry_id: str, path: str
) -> None:
    _call(stub.ResolveUpstream, pb.ResolveUpstreamRequest(registry_id=registry_id, path=path))


# --------------------------------------------------------------------------- volume

VOLUME = 10_000
CONCURRENCY = 64


def _random_request(rng: random.Random) -> tuple[str, object]:
    ingredients = [
        "library/alpine/manifests/latest",
        "public/alpine/manifests/latest",
        "private/app/manifests/v1",
        "team/app/manifests/v1",
        f"library/alpine/blobs/{DIGEST}",
        "library/alpine/tags/list",
        "Library/Alpine/manifests/latest",
        "a/../b/manifests/x",
        "a//b/manifests/x",
        "x?y=1",
        "",
        "library/alpine",
        "%2e%2e/manifests/latest",
        "a/" * 1100 + "manifests/latest",
        "\x00\n\t",
    ]
    noise = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))
    chosen = rng.choice(
        [*ingredients, noise, noise + "/manifests/latest", rng.choice(ingredients) + noise]
    )
    ident = rng.choice([*KNOWN_IDS, noise, "x" * 300])
    kind = rng.randrange(3)
    if kind == 0:
        return "UrlFor", pb.UrlForRequest(upstream_id=ident, path=chosen)
    if kind == 1:
        acts = rng.sample(["pull", "push", "delete", "*", noise or "bogus"], rng.randint(0, 3))
        return "GetAuthHeaders", pb.GetAuthHeadersRequest(
            upstream_id=ident, path=chosen, actions=acts
        )
    return "ResolveUpstream", pb.ResolveUpstreamRequest(registry_id=ident, path=chosen)


async def test_ten_thousand_generated_requests(fuzz_server: ServerProcess) -> None:
    rng = random.Random(20261127)
    requests = [_random_request(rng) for _ in range(VOLUME)]
    codes: Counter[grpc.StatusCode] = Counter()
    async with grpc.aio.insecure_channel(fuzz_server.target) as channel:
        stub = pb_grpc.UpstreamServiceStub(channel)
        queue = iter(requests)

        async def worker() -> None:
            for method, request in queue:
                try:
                    await getattr(stub, method)(request, timeout=10)
                    codes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as error:
                    codes[_check(error)] += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert sum(codes.values()) == VOLUME
    assert set(codes) <= DOCUMENTED
    assert codes[grpc.StatusCode.OK] > 0 and codes[grpc.StatusCode.INVALID_ARGUMENT] > 0
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    print(f"\n10,000 generated requests: { {c.name: n for c, n in codes.items()} }")


def test_oversized_messages_are_refused_cleanly(stub: pb_grpc.UpstreamServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.UrlFor(pb.UrlForRequest(upstream_id="open", path="a" * (2 * 1024 * 1024)), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert (
        _call(stub.UrlFor, pb.UrlForRequest(upstream_id="open", path="a" * 100_000))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_oversized_headers_are_refused_cleanly(stub: pb_grpc.UpstreamServiceStub) -> None:
    request = pb.UrlForRequest(upstream_id="open", path="")
    with pytest.raises(grpc.RpcError) as info:
        stub.UrlFor(request, metadata=[("x-padding", "a" * 40_000)], timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert stub.UrlFor(request, metadata=[("x-padding", "a" * 4_000)], timeout=10).url.endswith(
        "/v2/"
    )


def test_logs_show_no_tracebacks(fuzz_server: ServerProcess) -> None:
    # Runs after the fuzz tests in this module: nothing reached the "unexpected error" path.
    logs = fuzz_server.logs()
    assert "unexpected error" not in logs
    assert "Traceback" not in logs
