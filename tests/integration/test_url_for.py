"""UrlFor through a real gRPC channel: the seed's examples and every INVALID_ARGUMENT case."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.support.service import Service, error_details, make_config, start_service

DIGEST = "sha256:" + "a" * 64


@pytest.fixture(scope="module")
async def service() -> AsyncIterator[Service]:
    config = make_config(
        [
            {"id": "dockerhub", "name": "Docker Hub", "url": "https://registry-1.docker.io"},
            {"id": "trailing", "name": "Trailing", "url": "https://registry.example.com/v2/"},
            {
                "id": "artifactory",
                "name": "Artifactory",
                "url": "https://example.com/artifactory/api/docker/remote/",
            },
        ]
    )
    service = await start_service(config)
    yield service
    await service.close()


@pytest.mark.parametrize(
    ("upstream", "path", "url"),
    [
        # The seed's examples.
        (
            "dockerhub",
            "library/alpine/manifests/latest",
            "https://registry-1.docker.io/v2/library/alpine/manifests/latest",
        ),
        (
            "dockerhub",
            "nginx/nginx/tags/list",
            "https://registry-1.docker.io/v2/nginx/nginx/tags/list",
        ),
        ("dockerhub", "", "https://registry-1.docker.io/v2/"),
        (
            "dockerhub",
            "/library/alpine/manifests/latest",
            "https://registry-1.docker.io/v2/library/alpine/manifests/latest",
        ),
        (
            "dockerhub",
            f"library/alpine/blobs/{DIGEST}",
            f"https://registry-1.docker.io/v2/library/alpine/blobs/{DIGEST}",
        ),
        (
            "dockerhub",
            f"library/alpine/manifests/{DIGEST}",
            f"https://registry-1.docker.io/v2/library/alpine/manifests/{DIGEST}",
        ),
        (
            "dockerhub",
            f"library/alpine/referrers/{DIGEST}",
            f"https://registry-1.docker.io/v2/library/alpine/referrers/{DIGEST}",
        ),
        (
            "dockerhub",
            "a/manifests/b/manifests/v1.2_3-x",
            "https://registry-1.docker.io/v2/a/manifests/b/manifests/v1.2_3-x",
        ),
        ("trailing", "x/y/tags/list", "https://registry.example.com/v2/x/y/tags/list"),
        (
            "artifactory",
            "x/manifests/1",
            "https://example.com/artifactory/api/docker/remote/v2/x/manifests/1",
        ),
    ],
)
async def test_url_for(service: Service, upstream: str, path: str, url: str) -> None:
    assert (await service.url_for(upstream, path)).url == url


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("library/../alpine/manifests/latest", ".."),
        ("library//alpine/manifests/latest", "//"),
        ("library/alpine/manifests/latest?x=1", "?"),
        ("library/alpine/manifests/latest#frag", "#"),
        ("Library/alpine/manifests/latest", "lower-case"),
        ("library/alpine/blobs/sha256:abc", "digest"),
        ("library/alpine/blobs/latest", "digest"),
        ("library/alpine/referrers/latest", "digest"),
        ("library/alpine/foo/bar", "endpoint"),
        ("library/alpine", "endpoint"),
        ("library/alpine/manifests/", "/"),
        ("library/alpine/manifests/latest/", "/"),
        ("library/alpine/manifests/" + "t" * 129, "tag"),
        ("library/al%2Fpine/manifests/latest", "%"),
        ("library/al pine/manifests/latest", "whitespace"),
        ("-library/alpine/manifests/latest", "repository name"),
        ("a" * 256 + "/manifests/latest", "255"),
        ("x/" * 1100 + "manifests/latest", "2048"),
    ],
)
async def test_invalid_paths_are_invalid_argument(service: Service, path: str, needle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.url_for("dockerhub", path)
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_PATH"
    assert needle.lower() in details.message.lower(), details.message
    assert len(details.message) < 400


async def test_unknown_upstream_is_not_found(service: Service) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.url_for("nope", "library/alpine/manifests/latest")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "UPSTREAM_NOT_FOUND"
    assert details.metadata == {"upstream_id": "nope"}
    assert "nope" in details.message


@pytest.mark.parametrize("upstream_id", ["", "x" * 300])
async def test_missing_or_oversized_upstream_id(service: Service, upstream_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.url_for(upstream_id, "library/alpine/manifests/latest")
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "upstream_id" in details.message


async def test_health_and_reflection(service: Service) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "vregistry.v1.UpstreamService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(service.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for response in responses:
        names |= {s.name for s in response.list_services_response.service}
    assert "vregistry.v1.UpstreamService" in names
    assert "grpc.health.v1.Health" in names
