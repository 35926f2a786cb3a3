"""asyncio client for the vregistry UpstreamService.

    async with VRegistryClient("127.0.0.1:50051", insecure=True) as client:
        url = await client.url_for("dockerhub", "library/alpine/manifests/latest")

The generated messages live in :mod:`vregistry_client.v1` (``upstream_service_pb2``); the
error reasons are the generated enum :data:`ErrorReason` (``error_reason_pb2``).
"""

from vregistry_client._client import DEFAULT_TIMEOUT, VRegistryClient
from vregistry_client._errors import ERROR_DOMAIN, VRegistryError
from vregistry_client.v1.error_reason_pb2 import ErrorReason
from vregistry_client.v1.upstream_service_pb2 import (
    AttemptOutcome,
    GetAuthHeadersResponse,
    ResolveUpstreamResponse,
    Upstream,
    UpstreamAttempt,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "ERROR_DOMAIN",
    "AttemptOutcome",
    "ErrorReason",
    "GetAuthHeadersResponse",
    "ResolveUpstreamResponse",
    "Upstream",
    "UpstreamAttempt",
    "VRegistryClient",
    "VRegistryError",
]
