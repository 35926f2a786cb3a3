"""``python -m vregistry_server.runtime.healthcheck [HOST:PORT]``: exit 0 when the server reports SERVING.

Used by the container HEALTHCHECK, so the image needs no grpc_health_probe binary.
Plaintext by default; when the server runs with TLS, point it at a CA bundle (and,
for mTLS, a client certificate and key) with flags or ``VREGISTRY_HEALTHCHECK_*``
variables. The health service needs no caller token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(
    target: str,
    timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> bool:
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if not (args.ca or args.cert):
        return None

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m vregistry_server.runtime.healthcheck")
    parser.add_argument(
        "target", nargs="?", default=env.get("VREGISTRY_HEALTHCHECK_TARGET", "127.0.0.1:50051")
    )
    parser.add_argument(
        "--ca", default=env.get("VREGISTRY_HEALTHCHECK_CA"), help="PEM CA bundle: use TLS"
    )
    parser.add_argument(
        "--cert",
        default=env.get("VREGISTRY_HEALTHCHECK_CERT"),
        help="PEM client certificate (mTLS)",
    )
    parser.add_argument(
        "--key", default=env.get("VREGISTRY_HEALTHCHECK_KEY"), help="PEM client key (mTLS)"
    )
    parser.add_argument(
        "--server-name",
        default=env.get("VREGISTRY_HEALTHCHECK_SERVER_NAME"),
        help="name to verify in the server certificate, when it does not cover the target host",
    )
    args = parser.parse_args(argv)
    healthy = check(args.target, credentials=_credentials(args), server_name=args.server_name)
    print("SERVING" if healthy else "NOT SERVING")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
