"""Where a credential must never show up: gRPC answers, the log, the metrics page, the store.

``assert_secret_absent(secret, responses=..., log_text=..., metrics_text=..., store_bytes=...)``
searches each place for the secret, as text and as bytes. ``responses`` are what gRPC handed
back: messages (their wire bytes and their text form) and ``grpc.RpcError`` (code, details,
debug string and every trailer, binary ``-bin`` trailers such as the google.rpc.Status
included). ``store_bytes`` is the store as an attacker who can read it sees it:
``files_bytes`` for the SQLite files of a ``--data-dir``, ``redis_dump`` for every Redis key.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import redis
from google.protobuf.message import Message


def basic_value(username: str, password: str) -> str:
    """The value of ``Authorization: Basic …`` for these credentials."""
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def response_bytes(response: Any) -> bytes:
    """Everything a caller can read from one gRPC answer or error."""
    if isinstance(response, Message):
        return response.SerializeToString() + str(response).encode()
    if isinstance(response, grpc.RpcError):
        parts = [str(response.code()), response.details() or ""]  # type: ignore[attr-defined]
        debug = getattr(response, "debug_error_string", None)
        parts.append(debug() if callable(debug) else "")
        text = "\n".join(parts).encode()
        trailers = response.trailing_metadata() or ()  # type: ignore[attr-defined]
        for key, value in trailers:
            text += f"\n{key}: ".encode() + (value if isinstance(value, bytes) else value.encode())
        return text
    return str(response).encode()


def files_bytes(directory: Path) -> bytes:
    """The bytes of every file below ``directory`` (the SQLite database, its WAL and journal)."""
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def redis_dump(url: str, match: str = "*") -> bytes:
    """Every key and value in Redis (SCAN, then GET/HGETALL/LRANGE/SMEMBERS/ZRANGE by type)."""
    client = redis.Redis.from_url(url)
    out: list[bytes] = []
    try:
        for key in client.scan_iter(match=match):
            kind = client.type(key)
            value: Any
            if kind == b"string":
                value = client.get(key)
            elif kind == b"hash":
                value = client.hgetall(key)
            elif kind == b"list":
                value = client.lrange(key, 0, -1)
            elif kind == b"set":
                value = client.smembers(key)
            elif kind == b"zset":
                value = client.zrange(key, 0, -1)
            else:
                value = b""
            out.append(key + b"=" + repr(value).encode())
    finally:
        client.close()
    return b"\n".join(out)


def assert_secret_absent(
    secret: str,
    *,
    responses: Iterable[Any] = (),
    log_text: str = "",
    metrics_text: str = "",
    store_bytes: bytes = b"",
) -> None:
    """Fail naming the place where ``secret`` (a password, a Basic value, a token) appears."""
    assert secret, "an empty secret proves nothing"
    raw = secret.encode()
    for index, response in enumerate(responses):
        assert raw not in response_bytes(response), f"secret in gRPC response #{index}"
    assert secret not in log_text, "secret in the process log"
    assert secret not in metrics_text, "secret in the Prometheus scrape"
    assert raw not in store_bytes, "secret in the store"
