"""asyncio client for the vregistry UpstreamService and ConfigService.

    async with VRegistryClient("127.0.0.1:50051", insecure=True) as client:
        url = await client.url_for("dockerhub", "library/alpine/manifests/latest")
        async for upstream in client.config.list_upstreams("acme"):
            print(upstream.name, upstream.etag)

The generated messages live in :mod:`vregistry_client.v1` (``upstream_service_pb2``,
``config_service_pb2``); the error reasons are the generated enum :data:`ErrorReason`
(``error_reason_pb2``).
"""

from vregistry_client._calls import DEFAULT_TIMEOUT, SERVICE_CONFIG, tls_credentials
from vregistry_client._client import VRegistryClient
from vregistry_client._config import (
    DEFAULT_PAGE_SIZE,
    ConfigClient,
    field_mask,
    group_name,
    registry_name,
    upstream_name,
)
from vregistry_client._errors import ERROR_DOMAIN, VRegistryError
from vregistry_client.v1.config_service_pb2 import (
    RegistryConfig,
    RegistryMember,
    TestUpstreamResponse,
    TokenFlow,
    UpstreamConfig,
)
from vregistry_client.v1.error_reason_pb2 import ErrorReason
from vregistry_client.v1.upstream_service_pb2 import (
    AttemptOutcome,
    GetAuthHeadersResponse,
    ResolveUpstreamResponse,
    Upstream,
    UpstreamAttempt,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TIMEOUT",
    "ERROR_DOMAIN",
    "SERVICE_CONFIG",
    "AttemptOutcome",
    "ConfigClient",
    "ErrorReason",
    "GetAuthHeadersResponse",
    "RegistryConfig",
    "RegistryMember",
    "ResolveUpstreamResponse",
    "TestUpstreamResponse",
    "TokenFlow",
    "Upstream",
    "UpstreamAttempt",
    "UpstreamConfig",
    "VRegistryClient",
    "VRegistryError",
    "field_mask",
    "group_name",
    "registry_name",
    "tls_credentials",
    "upstream_name",
]
