"""Server reflection answers as grpc.reflection.v1 (what current grpcurl, grpcui and Postman
ask first) and as grpc.reflection.v1alpha: the service list and the file containing a symbol,
over a real channel to the in-process server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.support.service import Service, make_config, start_service, upstream_entry

# The method of each protocol version. The v1 messages are the v1alpha ones under another
# package (same fields, same numbers), so the v1alpha classes encode and decode both.
METHODS = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}
EXPECTED_SERVICES = {
    "vregistry.v1.UpstreamService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture(scope="module")
async def service() -> AsyncIterator[Service]:
    config = make_config([upstream_entry("local", "http://127.0.0.1:1")], {"reg": ["local"]})
    service = await start_service(config)
    yield service
    await service.close()


async def _ask(
    channel: grpc.aio.Channel, version: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    call = channel.stream_stream(
        METHODS[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = [response async for response in call(iter([request]), timeout=5)]
    assert len(responses) == 1
    response: reflection_pb2.ServerReflectionResponse = responses[0]
    assert not response.HasField("error_response"), response.error_response
    return response


def _files(
    response: reflection_pb2.ServerReflectionResponse,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files[proto.name] = proto
    return files


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_list_services(service: Service, version: str) -> None:
    response = await _ask(
        service.channel, version, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    names = {s.name for s in response.list_services_response.service}
    assert names >= EXPECTED_SERVICES


@pytest.mark.parametrize(
    "symbol",
    [
        "vregistry.v1.UpstreamService",
        # A method, as `grpcurl describe SERVICE.METHOD` asks (upb's pool alone misses it).
        "vregistry.v1.UpstreamService.UrlFor",
        "vregistry.v1.UrlForRequest",
    ],
)
@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_file_containing_symbol(service: Service, version: str, symbol: str) -> None:
    response = await _ask(
        service.channel,
        version,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol),
    )
    files = _files(response)
    contract = files["vregistry/v1/upstream_service.proto"]
    assert [m.name for m in contract.service[0].method] == [
        "UrlFor",
        "GetAuthHeaders",
        "ResolveUpstream",
    ]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
@pytest.mark.parametrize(
    "symbol", ["vregistry.v1.UpstreamService.NoSuchMethod", "vregistry.v1.NoSuchService"]
)
async def test_unknown_symbol_is_not_found(service: Service, version: str, symbol: str) -> None:
    call = service.channel.stream_stream(
        METHODS[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    (response,) = [r async for r in call(iter([request]), timeout=5)]
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_every_listed_service_can_be_described(service: Service, version: str) -> None:
    """grpcui and Postman describe every listed service: none may be NOT_FOUND, including
    the v1 reflection service, whose descriptor the server derives from v1alpha's."""
    listed = await _ask(
        service.channel, version, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    for entry in listed.list_services_response.service:
        response = await _ask(
            service.channel,
            version,
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=entry.name),
        )
        package, _, name = entry.name.rpartition(".")
        assert any(
            proto.package == package and name in {s.name for s in proto.service}
            for proto in _files(response).values()
        ), entry.name


async def test_v1_descriptor_matches_the_v1alpha_wire_format(service: Service) -> None:
    """The v1 file as a v1 client reads it: the official path and package, and the same
    messages and field numbers as v1alpha (what makes one servicer right for both)."""
    v1 = _files(
        await _ask(
            service.channel,
            "v1",
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflectionRequest"
            ),
        )
    )["grpc/reflection/v1/reflection.proto"]
    v1alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1alpha)
    assert v1.package == "grpc.reflection.v1"

    def shape(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, list[tuple[str, int, int]]]:
        return {m.name: [(f.name, f.number, f.type) for f in m.field] for m in proto.message_type}

    assert shape(v1) == shape(v1alpha)
    method = v1.service[0].method[0]
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
    )
    assert all(
        not f.type_name or f.type_name.startswith(".grpc.reflection.v1.")
        for m in v1.message_type
        for f in m.field
    )
