"""Every failure a caller can see, in one tree; each class carries its gRPC code and reason.

The resolver, the registry protocol layer and the admin domain raise these
without knowing about gRPC; rpc/boundary.py turns any of them into a
google.rpc.Status whose code is ``code.name`` and whose ErrorInfo (domain
"vregistry.dev") carries ``reason``, a value name of the contract's
``vregistry.v1.ErrorReason`` enum (tests/unit/test_reason_drift.py keeps the two
in step). Messages are written for the person reading them and never contain a
credential or a token.

    VRegistryError
    ├── InvalidArgument ............... INVALID_ARGUMENT   INVALID_ARGUMENT
    │   └── InvalidPath ............... INVALID_ARGUMENT   INVALID_PATH
    ├── NotFound ...................... NOT_FOUND          NOT_FOUND
    │   ├── UpstreamNotFound .......... NOT_FOUND          UPSTREAM_NOT_FOUND
    │   ├── RegistryNotFound .......... NOT_FOUND          REGISTRY_NOT_FOUND
    │   ├── UpstreamNotInRegistry ..... NOT_FOUND          UPSTREAM_NOT_IN_REGISTRY
    │   └── NotFoundOnUpstreams* ...... NOT_FOUND          NOT_FOUND_ON_UPSTREAMS
    ├── AlreadyExists ................. ALREADY_EXISTS     ALREADY_EXISTS
    │   └── DuplicateUpstream ......... ALREADY_EXISTS     DUPLICATE_UPSTREAM
    ├── EtagMismatch .................. ABORTED            ETAG_MISMATCH
    ├── FailedPrecondition ............ FAILED_PRECONDITION FAILED_PRECONDITION
    │   ├── RegistryHasNoUpstreams .... FAILED_PRECONDITION REGISTRY_HAS_NO_UPSTREAMS
    │   ├── UpstreamInUse ............. FAILED_PRECONDITION UPSTREAM_IN_USE
    │   ├── LimitReached .............. FAILED_PRECONDITION LIMIT_REACHED
    │   ├── CredentialsUnreadable ..... FAILED_PRECONDITION CREDENTIALS_UNREADABLE
    │   ├── EgressRefused ............. FAILED_PRECONDITION EGRESS_REFUSED
    │   │   └── UpstreamsEgressRefused* (same code and reason)
    │   └── CredentialsRejected ....... FAILED_PRECONDITION UPSTREAM_CREDENTIALS_REJECTED
    │       ├── RealmRefused .......... FAILED_PRECONDITION UPSTREAM_REALM_REFUSED
    │       └── UpstreamsRefusedCredentials* (same code and reason)
    ├── Unavailable ................... UNAVAILABLE        (abstract: a retry may succeed)
    │   ├── UpstreamUnreachable ....... UNAVAILABLE        UPSTREAM_UNREACHABLE
    │   │   ├── UpstreamRateLimited ... UNAVAILABLE        UPSTREAM_RATE_LIMITED (+ RetryInfo)
    │   │   └── UpstreamsUnavailable* . (same code and reason as its parent)
    │   ├── UpstreamProtocolError ..... UNAVAILABLE        UPSTREAM_PROTOCOL_ERROR
    │   └── StoreUnavailable .......... UNAVAILABLE        STORE_UNAVAILABLE
    ├── DeadlineExceeded .............. DEADLINE_EXCEEDED  DEADLINE_EXCEEDED
    │   └── ResolveDeadlineExceeded* .. (same)
    ├── Unauthenticated ............... UNAUTHENTICATED    UNAUTHENTICATED
    ├── PermissionDenied .............. PERMISSION_DENIED  PERMISSION_DENIED
    │   └── ActionNotAllowed .......... PERMISSION_DENIED  ACTION_NOT_ALLOWED
    └── Internal ...................... INTERNAL           INTERNAL

``*`` ResolveUpstream failures: they also inherit ``ResolveFailed`` and carry
every upstream's attempt, sent as a vregistry.v1.ResolveUpstreamFailure detail.
Unauthenticated and PermissionDenied are answered by the caller interceptor
(rpc/interceptors.py) before any servicer runs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

from vregistry_server.model import Attempt

ERROR_DOMAIN = "vregistry.dev"


class Code(enum.Enum):
    """The gRPC status codes this service answers with (names as in grpc.StatusCode)."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    FAILED_PRECONDITION = 9
    ABORTED = 10
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class VRegistryError(Exception):
    """Base of every error reported to a caller: a message, a code, a reason, metadata."""

    code: Code = Code.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(VRegistryError):
    code, reason = Code.INVALID_ARGUMENT, "INVALID_ARGUMENT"


class InvalidPath(InvalidArgument):
    reason = "INVALID_PATH"


class NotFound(VRegistryError):
    code, reason = Code.NOT_FOUND, "NOT_FOUND"


class UpstreamNotFound(NotFound):
    reason = "UPSTREAM_NOT_FOUND"


class RegistryNotFound(NotFound):
    reason = "REGISTRY_NOT_FOUND"


class UpstreamNotInRegistry(NotFound):
    reason = "UPSTREAM_NOT_IN_REGISTRY"


class AlreadyExists(VRegistryError):
    code, reason = Code.ALREADY_EXISTS, "ALREADY_EXISTS"


class DuplicateUpstream(AlreadyExists):
    """Same url and credentials as another upstream of the group."""

    reason = "DUPLICATE_UPSTREAM"


class EtagMismatch(VRegistryError):
    """The resource changed since the caller read it (optimistic concurrency)."""

    code, reason = Code.ABORTED, "ETAG_MISMATCH"


class FailedPrecondition(VRegistryError):
    code, reason = Code.FAILED_PRECONDITION, "FAILED_PRECONDITION"


class RegistryHasNoUpstreams(FailedPrecondition):
    reason = "REGISTRY_HAS_NO_UPSTREAMS"


class UpstreamInUse(FailedPrecondition):
    reason = "UPSTREAM_IN_USE"


class LimitReached(FailedPrecondition):
    reason = "LIMIT_REACHED"


class CredentialsRejected(FailedPrecondition):
    """The upstream or its token server refused the configured credentials."""

    reason = "UPSTREAM_CREDENTIALS_REJECTED"


class CredentialsUnreadable(FailedPrecondition):
    """The stored credentials do not decrypt for this record (tampered, or no key)."""

    reason = "CREDENTIALS_UNREADABLE"


class EgressRefused(FailedPrecondition):
    """The address a connection would reach is refused by the egress policy."""

    reason = "EGRESS_REFUSED"


class RealmRefused(CredentialsRejected):
    """The token realm breaks the realm policy; no credential was sent to it."""

    reason = "UPSTREAM_REALM_REFUSED"

    def __init__(
        self, rule: str, message: str, *, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.rule = rule  # "host" or "address": which rule of the realm policy refused it


class Unavailable(VRegistryError):
    """Something we depend on failed in a way a retry may fix."""

    code, reason = Code.UNAVAILABLE, "UPSTREAM_UNREACHABLE"


class UpstreamUnreachable(Unavailable):
    """Connection refused, timed out, 5xx: a retry may succeed."""

    reason = "UPSTREAM_UNREACHABLE"


class UpstreamRateLimited(UpstreamUnreachable):
    """The upstream (its /v2/ or its token server) answered 429; retry after the delay."""

    reason = "UPSTREAM_RATE_LIMITED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: int = 0,
        http_status: int = 429,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds
        self.http_status = http_status


class UpstreamProtocolError(Unavailable):
    """The upstream answered something the distribution or token spec does not allow."""

    reason = "UPSTREAM_PROTOCOL_ERROR"


class StoreUnavailable(Unavailable):
    """The configuration store (SQLite, Redis) cannot be read or written now."""

    reason = "STORE_UNAVAILABLE"


class DeadlineExceeded(VRegistryError):
    """The caller's deadline passed before we could answer."""

    code, reason = Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"


class Unauthenticated(VRegistryError):
    """The caller sent no bearer token, or one the callers file does not know."""

    code, reason = Code.UNAUTHENTICATED, "UNAUTHENTICATED"


class PermissionDenied(VRegistryError):
    """The caller is known but lacks the role the service needs."""

    code, reason = Code.PERMISSION_DENIED, "PERMISSION_DENIED"


class ActionNotAllowed(PermissionDenied):
    """A token action the upstream's allowed_actions does not grant."""

    reason = "ACTION_NOT_ALLOWED"


class Internal(VRegistryError):
    """A bug: the caller gets a generic message, the details stay in the server log."""

    code, reason = Code.INTERNAL, "INTERNAL"


# --------------------------------------------------------------------------- ResolveUpstream


class ResolveFailed(VRegistryError):
    """No upstream served the path; carries every upstream's attempt (one subclass per outcome)."""

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[Attempt],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.attempts = list(attempts)


class NotFoundOnUpstreams(ResolveFailed, NotFound):
    reason = "NOT_FOUND_ON_UPSTREAMS"


class UpstreamsUnavailable(ResolveFailed, UpstreamUnreachable):
    """Nothing served the path and some upstreams could not be checked."""


class UpstreamsRefusedCredentials(ResolveFailed, CredentialsRejected):
    """Nothing served the path and some upstreams refused the credentials."""


class UpstreamsEgressRefused(ResolveFailed, EgressRefused):
    """The egress policy refused every upstream of the registry; none was contacted."""


class ResolveDeadlineExceeded(ResolveFailed, DeadlineExceeded):
    """The caller's deadline ended the checks; the attempts say how far they got."""


def all_classes() -> list[type[VRegistryError]]:
    """Every error class (for the reason-drift test and the docs)."""
    seen: list[type[VRegistryError]] = []
    pending: list[type[VRegistryError]] = [VRegistryError]
    while pending:
        cls = pending.pop()
        if cls not in seen:
            seen.append(cls)
            pending.extend(cls.__subclasses__())
    return seen
