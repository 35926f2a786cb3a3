"""Server reflection as both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection (1.85) implements only v1alpha, while current grpcurl, grpcui and
Postman ask for v1 first. The v1 protocol is the v1alpha one under another package name:
the same messages with the same field numbers, so the same bytes on the wire. One servicer
therefore answers both, v1alpha registered as grpcio-reflection does it and v1 through a
handler under the v1 service name. So that a client can also describe the v1 service
itself, its descriptor (the v1alpha file renamed to the v1 package) joins the default
descriptor pool that reflection answers from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
# The path of the official v1 file (grpc/grpc-proto), so the names match what clients expect.
V1_FILE_NAME = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def enable_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Offer reflection over ``service_names`` plus both reflection services themselves."""
    _add_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer(
        [*service_names, V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME],
        pool=_MethodAwarePool(descriptor_pool.Default()),
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handlers = {
        _METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            # Wire-identical messages: v1 requests parse as v1alpha ones, and back.
            request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
            response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, handlers),)
    )
    server.add_registered_method_handlers(V1_SERVICE_NAME, handlers)


class _MethodAwarePool:
    """The descriptor pool as reflection reads it, also finding the file of a method.

    Clients ask for ``Service.Method`` (``grpcurl describe vregistry.v1.UpstreamService.UrlFor``),
    which protobuf's upb pool does not resolve; everything else is the pool's own answer.
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:  # the pool's API name
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is None or method not in service.methods_by_name:
                raise
            return service.file


def v1_file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """The v1 reflection file: the v1alpha one with the v1 name, package and type names."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old_prefix = f".{proto.package}."
    new_prefix = f".{V1_PACKAGE}."
    proto.name = V1_FILE_NAME
    proto.package = V1_PACKAGE
    # v1alpha's language options (java_package...) say nothing about the wire; drop them.
    proto.ClearField("options")

    def renamed(type_name: str) -> str:
        if type_name.startswith(old_prefix):
            return new_prefix + type_name[len(old_prefix) :]
        return type_name

    def rename_message(message: Any) -> None:
        for field in message.field:
            # Only message and enum fields have a type name (assigning one to a scalar
            # field, even "", would make it invalid).
            if field.type_name.startswith(old_prefix):
                field.type_name = renamed(field.type_name)
        for nested in message.nested_type:
            rename_message(nested)

    for message in proto.message_type:
        rename_message(message)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    return proto


def _add_v1_descriptor() -> None:
    """Once per process (every server of the process shares the default pool)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE_NAME)
    except KeyError:
        pool.AddSerializedFile(v1_file_descriptor_proto().SerializeToString())
