"""Domain errors of the resolver, each with the reason callers match on.

The gRPC servicer maps these to status codes and a google.rpc.ErrorInfo; the
registry logic raises them without knowing about gRPC. Messages are written for
the person reading them and never contain a credential or a token.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vregistry_server.model import Attempt

ERROR_DOMAIN = "vregistry.dev"


class Kind(enum.Enum):
    """The class of failure; the servicer maps each to one gRPC status code."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"


class ResolverError(Exception):
    """Base of every error the resolver reports to a caller."""

    kind: Kind = Kind.UNAVAILABLE
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidPath(ResolverError):
    kind = Kind.INVALID_ARGUMENT
    reason = "INVALID_PATH"


class InvalidArgument(ResolverError):
    kind = Kind.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class UpstreamNotFound(ResolverError):
    kind = Kind.NOT_FOUND
    reason = "UPSTREAM_NOT_FOUND"


class RegistryNotFound(ResolverError):
    kind = Kind.NOT_FOUND
    reason = "REGISTRY_NOT_FOUND"


class RegistryHasNoUpstreams(ResolverError):
    kind = Kind.FAILED_PRECONDITION
    reason = "REGISTRY_HAS_NO_UPSTREAMS"


class CredentialsRejected(ResolverError):
    """The upstream or its token server refused the configured credentials."""

    kind = Kind.FAILED_PRECONDITION
    reason = "UPSTREAM_CREDENTIALS_REJECTED"


class UpstreamUnreachable(ResolverError):
    """Connection refused, timed out, 5xx or 429: a retry may succeed."""

    kind = Kind.UNAVAILABLE
    reason = "UPSTREAM_UNREACHABLE"


class UpstreamProtocolError(ResolverError):
    """The upstream answered something the distribution or token spec does not allow."""

    kind = Kind.UNAVAILABLE
    reason = "UPSTREAM_PROTOCOL_ERROR"


class DeadlineExceeded(ResolverError):
    """The caller's deadline had passed before any work could start."""

    kind = Kind.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class ResolveFailed(ResolverError):
    """No upstream served the path; carries every upstream's attempt."""

    def __init__(
        self,
        message: str,
        *,
        kind: Kind,
        reason: str,
        attempts: Sequence[Attempt],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.kind = kind
        self.reason = reason
        self.attempts = list(attempts)
