"""Ending an RPC with a google.rpc.Status that Go, Java and TypeScript callers can read.

Both services answer errors the same way: the gRPC code, a message for a person,
a google.rpc.ErrorInfo (domain "vregistry.dev", the reason callers match on) and
any further detail messages, in the ``grpc-status-details-bin`` trailer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vregistry_server.errors import ERROR_DOMAIN, Internal


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    reason: str,
    *,
    metadata: Mapping[str, str] | None = None,
    details: Sequence[Message] = (),
) -> NoReturn:
    context.set_code(code)  # tells interceptors (tracing) the code abort_with_status sends
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    status = status_pb2.Status(
        code=code.value[0], message=message, details=[_pack(d) for d in (info, *details)]
    )
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")


async def abort_internal(context: grpc.aio.ServicerContext) -> NoReturn:
    """An unexpected failure: a generic message, the details stay in the server log."""
    await abort(
        context, grpc.StatusCode.INTERNAL, "internal error; see server logs", Internal.reason
    )


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
