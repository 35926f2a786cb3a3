"""What every call shares: the default deadline, the caller token, the error conversion, and
the gRPC service config (retries of UNAVAILABLE, round_robin over DNS addresses)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import grpc

from vregistry_client._errors import VRegistryError

# The default deadline of every call, in seconds; the same in every vregistry client. It is
# longer than the server's own per-request budget (10 s by default), so a slow upstream comes
# back as UNAVAILABLE with the attempts rather than as DEADLINE_EXCEEDED.
DEFAULT_TIMEOUT = 30.0

# A copy of clients/service_config.json (scripts/gen_clients.sh keeps it identical): the
# standard gRPC retryPolicy for UNAVAILABLE and the round_robin load balancer.
SERVICE_CONFIG: Final = files("vregistry_client").joinpath("service_config.json").read_text()


class _Default(Enum):
    VALUE = "the client's default"


DEFAULT: Final = _Default.VALUE
Timeout = float | None | Literal[_Default.VALUE]
Token = str | None | Literal[_Default.VALUE]

Request = TypeVar("Request")
Reply = TypeVar("Reply")


def channel_options(
    service_config: str | None, options: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """The channel arguments: the service config (unless ``None``), then the caller's own."""
    merged: list[tuple[str, Any]] = []
    if service_config is not None:
        merged += [("grpc.service_config", service_config), ("grpc.enable_retries", 1)]
    return merged + list(options)


def tls_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS trusting ``ca_file`` (PEM; ``None``: the system roots) and, with ``cert_file`` and
    ``key_file``, presenting that client certificate (mTLS)."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("give both cert_file and key_file, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file else None,
        private_key=Path(key_file).read_bytes() if key_file else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
    )


class Calls:
    """Runs unary calls with the client's deadline and token; failures become VRegistryError."""

    def __init__(self, timeout: float | None, token: str | None) -> None:
        self.timeout = timeout
        self._token = token

    def __repr__(self) -> str:  # never the token
        return f"Calls(timeout={self.timeout!r}, token={'set' if self._token else None})"

    def metadata(self, token: Token) -> tuple[tuple[str, str], ...]:
        value = self._token if token is DEFAULT else token
        return (("authorization", f"Bearer {value}"),) if value else ()

    async def unary(
        self,
        method: Callable[..., Awaitable[Reply]],
        request: Request,
        timeout: Timeout,
        token: Token,
    ) -> Reply:
        deadline = self.timeout if timeout is DEFAULT else timeout
        try:
            return await method(request, timeout=deadline, metadata=self.metadata(token))
        except grpc.aio.AioRpcError as error:
            raise VRegistryError.from_rpc_error(error) from None
