"""VRegistryError: a failed call, with the google.rpc.Status details the server attached."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2
import google.rpc.status_pb2 as status_pb2
import grpc

from vregistry_client.v1 import upstream_service_pb2 as pb
from vregistry_client.v1.error_reason_pb2 import ErrorReason

ERROR_DOMAIN = "vregistry.dev"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class VRegistryError(Exception):
    """A failed call.

    ``code`` is the gRPC status code, ``reason``/``domain``/``metadata`` come from the
    google.rpc.ErrorInfo detail (empty when the error did not come from the server, e.g. a
    deadline), ``reason_code`` is ``reason`` as the generated :data:`ErrorReason` enum, and
    ``attempts`` is every upstream's outcome of a failed ResolveUpstream, in position order
    (from the vregistry.v1.ResolveUpstreamFailure detail).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        attempts: list[pb.UpstreamAttempt] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.attempts: list[pb.UpstreamAttempt] = list(attempts or [])
        super().__init__(str(self))

    @property
    def reason_code(self) -> ErrorReason.ValueType:
        """``reason`` as the generated enum, e.g. ``ErrorReason.NOT_FOUND_ON_UPSTREAMS``.

        ``ErrorReason.ERROR_REASON_UNSPECIFIED`` when the error carried no vregistry ErrorInfo
        (a client-side deadline, a refused connection, an ErrorInfo of another domain) or a
        reason this version of the client does not know yet; ``reason`` still has the string.
        """
        if self.domain != ERROR_DOMAIN or not self.reason:
            return ErrorReason.ERROR_REASON_UNSPECIFIED
        try:
            return ErrorReason.Value(self.reason)
        except ValueError:
            return ErrorReason.ERROR_REASON_UNSPECIFIED

    @property
    def code_name(self) -> str:
        """The canonical upper-snake-case name of the code, e.g. ``"NOT_FOUND"``."""
        return self.code.name

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.code_name}{reason}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"VRegistryError(code={self.code_name}, reason={self.reason!r}, "
            f"message={self.message!r}, metadata={self.metadata!r}, "
            f"attempts={len(self.attempts)})"
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> VRegistryError:
        """Decode the status details (ErrorInfo, ResolveUpstreamFailure) of a failed call."""
        return cls.from_status(error.code(), error.details() or "", error.trailing_metadata())

    @classmethod
    def from_status(
        cls,
        code: grpc.StatusCode,
        message: str,
        trailing_metadata: Iterable[tuple[str, Any]] | None,
    ) -> VRegistryError:
        reason, domain = "", ""
        metadata: dict[str, str] = {}
        attempts: list[pb.UpstreamAttempt] = []
        for key, value in trailing_metadata or ():
            if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
                continue
            status = status_pb2.Status.FromString(value)
            for packed in status.details:
                # Any.Unpack returns False (and leaves the message alone) on a type mismatch.
                info = error_details_pb2.ErrorInfo()
                failure = pb.ResolveUpstreamFailure()
                if packed.Unpack(info):
                    reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
                elif packed.Unpack(failure):
                    attempts = list(failure.attempts)
        return cls(
            code, message, reason=reason, domain=domain, metadata=metadata, attempts=attempts
        )
