"""Caller authentication: per-caller bearer tokens with roles (rpc/interceptors.py checks them).

The callers file holds one caller per line, never a token, only its SHA-256::

    # sha256 of the token            caller name   roles
    sha256:9f86d081884c7d65...        resolver-a    resolver
    sha256:2c26b46b68ffc68f...        ops           admin,resolver

A token is a random secret (``python -m vregistry_server.admin.callers new NAME ROLES``
prints one and its line); a caller sends it as ``authorization: Bearer TOKEN``.
Role ``resolver`` opens UpstreamService, role ``admin`` opens ConfigService;
health and reflection stay open. No or an unknown token gives UNAUTHENTICATED,
a known token without the role PERMISSION_DENIED; each refusal is logged with
the caller's name (if known), the method and the peer, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROLE_RESOLVER = "resolver"
ROLE_ADMIN = "admin"
ROLES = frozenset({ROLE_RESOLVER, ROLE_ADMIN})
# Which role each service needs; a service not listed here is open (health, reflection).
SERVICE_ROLES: Mapping[str, str] = {
    "vregistry.v1.UpstreamService": ROLE_RESOLVER,
    "vregistry.v1.ConfigService": ROLE_ADMIN,
}
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class CallersError(Exception):
    """The callers file cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    roles: frozenset[str]


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class Callers:
    def __init__(self, by_hash: Mapping[str, Caller]) -> None:
        self._by_hash = dict(by_hash)

    def __len__(self) -> int:
        return len(self._by_hash)

    @classmethod
    def load(cls, path: str | Path) -> Callers:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CallersError(f"{path}: cannot read callers file: {exc.strerror}") from None
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "callers") -> Callers:
        by_hash: dict[str, Caller] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            where = f"{source}: line {number}"
            if len(parts) != 3:
                raise CallersError(f"{where}: expected 'sha256:HEX NAME ROLE[,ROLE]'")
            digest, name, roles_text = parts
            if not _HASH.match(digest):
                raise CallersError(f"{where}: the token hash must read sha256: and 64 hex digits")
            if not _NAME.match(name):
                raise CallersError(f"{where}: invalid caller name {name[:40]!r}")
            roles = frozenset(r for r in roles_text.split(",") if r)
            unknown = roles - ROLES
            if unknown or not roles:
                raise CallersError(
                    f"{where}: unknown role(s) {', '.join(sorted(unknown)) or '(none)'};"
                    f" known: {', '.join(sorted(ROLES))}"
                )
            if digest in by_hash:
                raise CallersError(f"{where}: the same token hash appears twice")
            by_hash[digest] = Caller(name, roles)
        return cls(by_hash)

    def identify(self, token: str) -> Caller | None:
        digest = hash_token(token)
        found = None
        for known, caller in self._by_hash.items():  # compare every entry in constant time
            if hmac.compare_digest(known, digest):
                found = caller
        return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 3 and args[0] == "new":
        token = secrets.token_urlsafe(32)
        print(f"token: {token}")
        print(f"line:  {hash_token(token)} {args[1]} {args[2]}")
        return 0
    if len(args) == 1 and args[0] == "hash":
        token = sys.stdin.readline().strip()
        print(hash_token(token))
        return 0
    print(
        "usage: python -m vregistry_server.admin.callers new NAME ROLE[,ROLE]\n"
        "       python -m vregistry_server.admin.callers hash   (token on stdin)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
