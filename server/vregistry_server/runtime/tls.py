"""TLS for the gRPC port: a server certificate, and for mTLS a CA that client certificates must chain to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc


class TlsError(Exception):
    """A certificate or key file cannot be read."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{path}: cannot read {what}: {exc.strerror}") from None


def server_credentials(cert_file: str, key_file: str, client_ca_file: str | None = None) -> Any:
    """Server credentials; with ``client_ca_file`` every client must present a certificate it signed."""
    cert = _read(cert_file, "TLS certificate")
    key = _read(key_file, "TLS key")
    client_ca = _read(client_ca_file, "client CA certificate") if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
