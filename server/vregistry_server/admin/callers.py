"""Caller authentication: callers with roles and groups (rpc/interceptors.py checks them).

The callers file holds one caller per line, never a token, only its SHA-256, or
the identity its mTLS client certificate carries::

    # who                                         name        roles           groups
    sha256:9f86d081884c7d65...                    resolver-a  resolver        team-a
    sha256:2c26b46b68ffc68f...                    ops         admin,resolver  *
    id:spiffe://mesh.local/ns/team-a/sa/puller    puller-a    resolver        team-a,shared
    id:dns:builder.team-b.internal                builder-b   resolver        team-b

A token is a random secret (``python -m vregistry_server.admin.callers new NAME ROLES
GROUPS`` prints one and its line); a caller sends it as ``authorization: Bearer TOKEN``.
An ``id:`` line names a URI SAN (a SPIFFE ID) or, with ``dns:``, a DNS SAN of a client
certificate that the ``--tls-client-ca`` signed.
Role ``resolver`` opens UpstreamService, role ``admin`` opens ConfigService;
health and reflection stay open. The groups column limits both to the
resources of those groups; ``*`` is every group (platform operators). A line
without it is refused (fail closed): before groups existed every caller reached
every group, so append `` *`` to keep that, or name the caller's groups.
No or an unknown token gives UNAUTHENTICATED, a known token without the role
PERMISSION_DENIED; each refusal is logged with the caller's name (if known),
the method and the peer, never the token.
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

from vregistry_server.rules import FieldError, check_id

log = logging.getLogger(__name__)

ROLE_RESOLVER = "resolver"
ROLE_ADMIN = "admin"
ROLES = frozenset({ROLE_RESOLVER, ROLE_ADMIN})
# Which role each service needs; a service not listed here is open (health, reflection).
SERVICE_ROLES: Mapping[str, str] = {
    "vregistry.v1.UpstreamService": ROLE_RESOLVER,
    "vregistry.v1.ConfigService": ROLE_ADMIN,
}
ALL_GROUPS = "*"
_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
# A URI SAN: scheme ":" and printable, non-space characters (SPIFFE: spiffe://trust-domain/path).
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]{1,2040}")
_DNS = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)
_LINE_FORM = "'sha256:HEX NAME ROLE[,ROLE] GROUP[,GROUP]|*' or 'id:IDENTITY NAME ROLE[,ROLE] GROUP[,GROUP]|*'"


class CallersError(Exception):
    """The callers file cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    roles: frozenset[str]
    groups: frozenset[str]  # group names, or {"*"}: every group

    @property
    def all_groups(self) -> bool:
        return ALL_GROUPS in self.groups

    def may_use(self, group: str) -> bool:
        return self.all_groups or group in self.groups


# The caller of every call when no callers file is configured: auth off reaches every group.
ANYONE = Caller("anonymous", ROLES, frozenset({ALL_GROUPS}))


def uri_identity(uri: str) -> str:
    """The callers-file key of a URI SAN (SPIFFE IDs are compared exactly)."""
    return uri


def dns_identity(name: str) -> str:
    """The callers-file key of a DNS SAN (DNS names are case-insensitive)."""
    return "dns:" + name.lower().rstrip(".")


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class Callers:
    def __init__(
        self, by_hash: Mapping[str, Caller], by_identity: Mapping[str, Caller] | None = None
    ) -> None:
        self._by_hash = dict(by_hash)
        self._by_identity = dict(by_identity or {})

    def __len__(self) -> int:
        return len(self._by_hash) + len(self._by_identity)

    @property
    def has_identities(self) -> bool:
        """Whether any line names a certificate identity (mTLS callers)."""
        return bool(self._by_identity)

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
        by_identity: dict[str, Caller] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}: line {number}"
            who, caller = _parse_line(line.split(), where)
            if who.startswith("sha256:"):
                if who in by_hash:
                    raise CallersError(f"{where}: the same token hash appears twice")
                by_hash[who] = caller
            else:
                if who in by_identity:
                    raise CallersError(f"{where}: the same identity appears twice")
                by_identity[who] = caller
        return cls(by_hash, by_identity)

    def identify(self, token: str) -> Caller | None:
        digest = hash_token(token)
        found = None
        for known, caller in self._by_hash.items():  # compare every entry in constant time
            if hmac.compare_digest(known, digest):
                found = caller
        return found

    def identify_certificate(self, identities: Sequence[str]) -> list[Caller]:
        """The callers that a verified certificate's identities (uri_identity/dns_identity) name."""
        found: list[Caller] = []
        for identity in identities:
            caller = self._by_identity.get(identity)
            if caller is not None and caller not in found:
                found.append(caller)
        return found


def _parse_line(parts: list[str], where: str) -> tuple[str, Caller]:
    if len(parts) == 3 and (_HASH.fullmatch(parts[0]) or parts[0].startswith("id:")):
        raise CallersError(
            f"{where}: no groups column. Callers now belong to groups: append ' *' to keep"
            " this caller's access to every group (what it had before), or a comma list of"
            f" its groups, e.g. '{parts[0][:20]}… {parts[1]} {parts[2]} team-a'"
        )
    if len(parts) != 4:
        raise CallersError(f"{where}: expected {_LINE_FORM}")
    who, name, roles_text, groups_text = parts
    if who.startswith("id:"):
        who = _identity(who.removeprefix("id:"), where)
    elif not _HASH.fullmatch(who):
        raise CallersError(f"{where}: the token hash must read sha256: and 64 hex digits")
    if not _NAME.fullmatch(name):
        raise CallersError(f"{where}: invalid caller name {name[:40]!r}")
    return who, Caller(name, _roles(roles_text, where), _groups(groups_text, where))


def _identity(text: str, where: str) -> str:
    if text.startswith("dns:"):
        name = text.removeprefix("dns:").lower().rstrip(".")
        if not _DNS.fullmatch(name):
            raise CallersError(f"{where}: invalid DNS name {text[:80]!r} after 'id:dns:'")
        return dns_identity(name)
    if not _URI.fullmatch(text):
        raise CallersError(
            f"{where}: 'id:' takes a URI SAN (spiffe://trust-domain/path) or dns:NAME,"
            f" got {text[:80]!r}"
        )
    return uri_identity(text)


def _roles(text: str, where: str) -> frozenset[str]:
    roles = frozenset(r for r in text.split(",") if r)
    unknown = roles - ROLES
    if unknown or not roles:
        raise CallersError(
            f"{where}: unknown role(s) {', '.join(sorted(unknown)) or '(none)'};"
            f" known: {', '.join(sorted(ROLES))}"
        )
    return roles


def _groups(text: str, where: str) -> frozenset[str]:
    if text == ALL_GROUPS:
        return frozenset({ALL_GROUPS})
    groups = [g for g in text.split(",") if g]
    if not groups:
        raise CallersError(f"{where}: the groups column is empty; give group names or '*'")
    for group in groups:
        if group == ALL_GROUPS:
            raise CallersError(f"{where}: '*' means every group and stands alone")
        try:
            check_id("group", group)
        except FieldError as exc:
            raise CallersError(f"{where}: {exc}") from None
    return frozenset(groups)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 4 and args[0] == "new":
        token = secrets.token_urlsafe(32)
        line = f"{hash_token(token)} {args[1]} {args[2]} {args[3]}"
        try:
            Callers.parse(line, source="new")  # the same rules as at start
        except CallersError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"token: {token}")
        print(f"line:  {line}")
        return 0
    if len(args) == 1 and args[0] == "hash":
        token = sys.stdin.readline().strip()
        print(hash_token(token))
        return 0
    print(
        "usage: python -m vregistry_server.admin.callers new NAME ROLE[,ROLE] GROUP[,GROUP]|'*'\n"
        "       python -m vregistry_server.admin.callers hash   (token on stdin)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
