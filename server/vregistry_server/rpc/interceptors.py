"""Caller authentication at the gRPC edge: who calls, with which roles and groups.

The callers themselves (the file, hashes, identities, roles, groups) are
admin/callers.py. This interceptor wraps the handler of every call to a
protected service: before the servicer runs it identifies the caller, from the
``authorization: Bearer`` token or from the verified mTLS client certificate,
checks the role the service needs, and holds the caller in a context variable
for the length of the call (``current_caller``), where rpc/access.py reads its
groups. The resolver and the manager never see a caller.

Precedence when both come: a token, if sent, must be known; when the client
certificate also names a caller, both must name the same one (otherwise the
call is refused rather than guessing). Without a token the certificate must be
named by an ``id:`` line; a certificate the CA signed but no line names is
UNAUTHENTICATED.

Refusals carry an ErrorInfo (reason UNAUTHENTICATED or PERMISSION_DENIED) and
are logged with the caller's name (if known), the method and the peer, never
the token.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc
from cryptography import x509

from vregistry_server.admin.callers import (
    ANYONE,
    SERVICE_ROLES,
    Caller,
    Callers,
    dns_identity,
    uri_identity,
)
from vregistry_server.errors import PermissionDenied, Unauthenticated
from vregistry_server.rpc import status

log = logging.getLogger(__name__)

Handler = Any

# Unset outside a protected call, and on a server without a callers file: every group.
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("vregistry_caller")


def current_caller() -> Caller:
    """The caller of the call in progress; ``ANYONE`` (every group) when auth is off."""
    return _CALLER.get(ANYONE)


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, why: str, caller: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.why, self.caller = code, message, why, caller


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, callers: Callers) -> None:
        self._callers = callers
        # method -> (the servicer's handler, its guarded wrapper): wrapped once, not per call.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method: str = handler_call_details.method
        service = method.lstrip("/").split("/", 1)[0]
        needed = SERVICE_ROLES.get(service)
        handler = await continuation(handler_call_details)
        if needed is None or handler is None:
            return handler
        if handler.unary_unary is None:  # both services are unary; refuse what we cannot guard
            return _refusal_handler(
                Refused(grpc.StatusCode.UNIMPLEMENTED, "streaming is not served", "streaming"),
                method,
            )
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._guarded(handler, method, service, needed))
            self._wrapped[method] = cached
        return cached[1]

    def _guarded(self, handler: Handler, method: str, service: str, needed: str) -> Handler:
        inner = handler.unary_unary

        async def guarded(request: object, context: grpc.aio.ServicerContext) -> object:
            try:
                caller = self._identify(context)
                if needed not in caller.roles:
                    raise Refused(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"caller {caller.name!r} lacks the role {needed!r} needed for {service}",
                        "missing_role",
                        caller.name,
                    )
            except Refused as refused:
                await _refuse(context, refused, method)
            token = _CALLER.set(caller)
            try:
                return await inner(request, context)
            finally:
                _CALLER.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _identify(self, context: grpc.aio.ServicerContext) -> Caller:
        token = _bearer(context.invocation_metadata() or ())
        named, identities = self._certificate_callers(context)
        if token is not None:
            caller = self._callers.identify(token)
            if caller is None:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, "unknown token", "unknown_token")
            if named and caller not in named:
                raise Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the token and the client certificate name different callers",
                    "identity_mismatch",
                    caller.name,
                )
            return caller
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "the client certificate names several callers; give it one identity",
                "ambiguous_certificate",
            )
        if identities and self._callers.has_identities:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "the client certificate's identity is not in the callers file",
                "unknown_certificate",
            )
        raise Refused(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing bearer token: send 'authorization: Bearer <token>'"
            + (
                " or a client certificate the callers file names"
                if self._callers.has_identities
                else ""
            ),
            "missing_token",
        )

    def _certificate_callers(
        self, context: grpc.aio.ServicerContext
    ) -> tuple[list[Caller], tuple[str, ...]]:
        if not self._callers.has_identities:
            return [], ()
        # Present only when the TLS layer verified the client certificate against --tls-client-ca.
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            return [], ()
        identities = certificate_identities(bytes(pems[0]))
        return self._callers.identify_certificate(identities), identities


@functools.lru_cache(maxsize=256)
def certificate_identities(pem: bytes) -> tuple[str, ...]:
    """The URI SANs and DNS SANs (as ``dns:NAME``) of a PEM certificate, in callers-file form.

    Parsed from the certificate itself: gRPC's flat ``x509_subject_alternative_name``
    list does not say which SAN is a URI and which a DNS name. Memoised: a client
    sends the same certificate on every call.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return ()
    uris = [uri_identity(u) for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    names = [dns_identity(d) for d in sans.get_values_for_type(x509.DNSName)]
    return (*uris, *names)


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


async def _refuse(context: grpc.aio.ServicerContext, refused: Refused, method: str) -> NoReturn:
    log.warning(
        "caller refused",
        extra={
            "method": method,
            "caller": refused.caller,
            "why": refused.why,
            "code": refused.code.name,
            "peer": context.peer(),
        },
    )
    reason = (
        PermissionDenied.reason
        if refused.code is grpc.StatusCode.PERMISSION_DENIED
        else Unauthenticated.reason
    )
    await status.abort(context, refused.code, refused.message, reason)


def _refusal_handler(refused: Refused, method: str) -> Handler:
    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await _refuse(context, refused, method)

    return grpc.unary_unary_rpc_method_handler(refuse)
