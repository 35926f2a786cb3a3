"""Caller authentication at the gRPC edge: the bearer token and role of every call.

The callers themselves (the file, hashes, roles) are admin/callers.py; this
interceptor only reads ``authorization: Bearer`` and refuses before any servicer
runs. Refusals carry an ErrorInfo (reason UNAUTHENTICATED or PERMISSION_DENIED)
and are logged with the caller's name (if known), the method and the peer,
never the token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from vregistry_server.admin.callers import SERVICE_ROLES, Callers
from vregistry_server.errors import PermissionDenied, Unauthenticated
from vregistry_server.rpc import status

log = logging.getLogger(__name__)

Handler = Any


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, callers: Callers) -> None:
        self._callers = callers

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method: str = handler_call_details.method
        service = method.lstrip("/").split("/", 1)[0]
        needed = SERVICE_ROLES.get(service)
        if needed is None:
            return await continuation(handler_call_details)
        token = _bearer(handler_call_details.invocation_metadata or ())
        if token is None:
            return _deny(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing bearer token: send 'authorization: Bearer <token>'",
                method,
                None,
                "missing_token",
            )
        caller = self._callers.identify(token)
        if caller is None:
            return _deny(
                grpc.StatusCode.UNAUTHENTICATED, "unknown token", method, None, "unknown_token"
            )
        if needed not in caller.roles:
            return _deny(
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller {caller.name!r} lacks the role {needed!r} needed for {service}",
                method,
                caller.name,
                "missing_role",
            )
        return await continuation(handler_call_details)


def _bearer(metadata: Sequence[Any]) -> str | None:
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


def _deny(
    code: grpc.StatusCode, message: str, method: str, caller: str | None, why: str
) -> Handler:
    log.warning(
        "caller refused",
        extra={"method": method, "caller": caller or "", "why": why, "code": code.name},
    )

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        peer = context.peer()
        log.info("caller refused (peer)", extra={"method": method, "peer": peer, "why": why})
        reason = (
            Unauthenticated.reason
            if code is grpc.StatusCode.UNAUTHENTICATED
            else PermissionDenied.reason
        )
        await status.abort(context, code, message, reason)

    return grpc.unary_unary_rpc_method_handler(refuse)
