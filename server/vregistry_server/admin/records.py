"""The stored resources (upstreams and registries of a group) and their rules.

Records are plain frozen dataclasses; a ``State`` is one consistent snapshot of
the store at a generation, and turns into the runtime ``Config`` the resolver
reads. Validation reuses config.py's URL rules and limits, and every message
names the field and says what to fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast, get_args

from vregistry_server.admin.crypto import Keyring
from vregistry_server.config import normalize_upstream_url
from vregistry_server.errors import InvalidArgument
from vregistry_server.model import (
    MAX_CACHE_VALIDITY_HOURS,
    Config,
    Credentials,
    Registry,
    RegistryUpstream,
    Settings,
    TokenFlow,
    Upstream,
)

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_NAME = 255
MAX_DESCRIPTION = 1024
MAX_URL = 255
MAX_USERNAME = 255
MAX_PASSWORD = 4096
MAX_CLIENT_ID = 255
TOKEN_FLOWS: tuple[str, ...] = get_args(TokenFlow)
SEED_GROUP = "default"


@dataclass(frozen=True, slots=True)
class UpstreamRecord:
    group: str
    id: str
    display_name: str
    url: str
    description: str = ""
    credentials: Credentials | None = None
    cache_validity_hours: int = 24
    allow_http: bool = False
    token_flow: TokenFlow = "auto"
    client_id: str = "vregistry"
    version: int = 0
    create_time: float = 0.0
    update_time: float = 0.0

    @property
    def resource_name(self) -> str:
        return upstream_name(self.group, self.id)

    @property
    def etag(self) -> str:
        return make_etag("upstream", self.id, self.version)

    def to_upstream(self) -> Upstream:
        return Upstream(
            id=self.id,
            name=self.display_name,
            url=self.url,
            credentials=self.credentials,
            description=self.description,
            cache_validity_hours=self.cache_validity_hours,
            allow_http=self.allow_http,
            token_flow=self.token_flow,
            client_id=self.client_id,
        )


@dataclass(frozen=True, slots=True)
class RegistryRecord:
    group: str
    id: str
    display_name: str
    description: str = ""
    members: tuple[str, ...] = ()  # upstream ids; position = index + 1
    version: int = 0
    create_time: float = 0.0
    update_time: float = 0.0

    @property
    def resource_name(self) -> str:
        return registry_name(self.group, self.id)

    @property
    def etag(self) -> str:
        return make_etag("registry", self.id, self.version)


@dataclass(frozen=True, slots=True)
class State:
    generation: int = 0
    upstreams: Mapping[str, UpstreamRecord] = field(default_factory=dict)
    registries: Mapping[str, RegistryRecord] = field(default_factory=dict)

    def to_config(self, settings: Settings, source: str) -> Config:
        upstreams = {uid: record.to_upstream() for uid, record in self.upstreams.items()}
        registries: dict[str, Registry] = {}
        for rid, record in self.registries.items():
            members = tuple(
                RegistryUpstream(upstream=upstreams[uid], position=index)
                for index, uid in enumerate(record.members, start=1)
                if uid in upstreams
            )
            registries[rid] = Registry(
                id=rid, name=record.display_name, description=record.description, upstreams=members
            )
        return Config(upstreams=upstreams, registries=registries, settings=settings, source=source)


def make_etag(kind: str, record_id: str, version: int) -> str:
    digest = hashlib.sha256(f"{kind}\x00{record_id}\x00{version}".encode()).hexdigest()
    return f'"{digest[:16]}"'


# --------------------------------------------------------------------------- resource names


def upstream_name(group: str, upstream_id: str) -> str:
    return f"groups/{group}/upstreams/{upstream_id}"


def registry_name(group: str, registry_id: str) -> str:
    return f"groups/{group}/registries/{registry_id}"


def check_id(field_name: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"field '{field_name}': is required")
    if not ID_PATTERN.match(value):
        raise InvalidArgument(
            f"field '{field_name}': {value[:80]!r} is not a valid id: 1 to 63 letters, digits,"
            " '.', '_' or '-', starting with a letter or digit"
        )
    return value


def parse_parent(field_name: str, parent: str, *, allow_wildcard: bool = False) -> str:
    """``groups/{group}`` -> group; ``groups/-`` -> "-" where allowed."""
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != "groups":
        raise InvalidArgument(
            f"field '{field_name}': expected 'groups/{{group}}', got {parent[:120]!r}"
        )
    if allow_wildcard and parts[1] == "-":
        return "-"
    return check_id(f"{field_name} (group)", parts[1])


def parse_name(field_name: str, name: str, collection: str) -> tuple[str, str]:
    """``groups/{group}/{collection}/{id}`` -> (group, id)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "groups" or parts[2] != collection:
        raise InvalidArgument(
            f"field '{field_name}': expected 'groups/{{group}}/{collection}/{{id}}', got {name[:120]!r}"
        )
    return check_id(f"{field_name} (group)", parts[1]), check_id(f"{field_name} (id)", parts[3])


# --------------------------------------------------------------------------- validation


def check_text(field_name: str, value: str, *, required: bool, limit: int) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"field '{field_name}': is required")
    if len(value) > limit:
        raise InvalidArgument(
            f"field '{field_name}': is {len(value)} characters, at most {limit} allowed"
        )
    return value


def check_url(value: str, *, allow_http: bool) -> str:
    if not value.strip():
        raise InvalidArgument("field 'url': is required")
    if len(value) > MAX_URL:
        raise InvalidArgument(f"field 'url': is {len(value)} characters, at most {MAX_URL} allowed")
    try:
        return normalize_upstream_url(value, allow_http=allow_http)
    except ValueError as exc:
        message = str(exc).replace("allow_http: true", "allow_http")
        message = message.replace("username and password_env", "username and password")
        raise InvalidArgument(f"field 'url': {message}") from None


def check_credentials(username: str, password: str) -> Credentials | None:
    """Both or neither; both empty means no credentials."""
    if not username and not password:
        return None
    if not username:
        raise InvalidArgument(
            "field 'username': a password is given without a username (give both or neither)"
        )
    if not password:
        raise InvalidArgument(
            "field 'password': a username is given without a password (give both or neither)"
        )
    check_text("username", username, required=True, limit=MAX_USERNAME)
    if len(password) > MAX_PASSWORD:
        raise InvalidArgument(f"field 'password': is longer than {MAX_PASSWORD} characters")
    if any(ch in username for ch in ":\r\n"):
        raise InvalidArgument("field 'username': must not contain ':' or line breaks")
    return Credentials(username=username, password=password)


def check_cache_validity(value: int) -> int:
    if not 0 <= value <= MAX_CACHE_VALIDITY_HOURS:
        raise InvalidArgument(
            f"field 'cache_validity_hours': {value} is out of range: 0 to {MAX_CACHE_VALIDITY_HOURS}"
            " (0 means never re-check)"
        )
    return value


def check_token_flow(value: str) -> TokenFlow:
    if value not in TOKEN_FLOWS:
        raise InvalidArgument(f"field 'token_flow': must be one of {', '.join(TOKEN_FLOWS)}")
    return cast(TokenFlow, value)


def validate_upstream(record: UpstreamRecord) -> UpstreamRecord:
    """Check every field of a record about to be stored; returns it with a normalized URL."""
    check_id("upstream_id", record.id)
    check_text("display_name", record.display_name, required=True, limit=MAX_NAME)
    check_text("description", record.description, required=False, limit=MAX_DESCRIPTION)
    check_text("client_id", record.client_id, required=True, limit=MAX_CLIENT_ID)
    check_cache_validity(record.cache_validity_hours)
    check_token_flow(record.token_flow)
    url = check_url(record.url, allow_http=record.allow_http)
    if record.credentials is not None:
        check_credentials(record.credentials.username, record.credentials.password)
    return record if url == record.url else replace(record, url=url)


def validate_registry(record: RegistryRecord) -> RegistryRecord:
    check_id("registry_id", record.id)
    check_text("display_name", record.display_name, required=True, limit=MAX_NAME)
    check_text("description", record.description, required=False, limit=MAX_DESCRIPTION)
    return record


# --------------------------------------------------------------------------- documents


def credentials_aad(upstream_id: str) -> bytes:
    return f"vregistry-upstream-credentials:{upstream_id}".encode()


def upstream_to_doc(record: UpstreamRecord, keyring: Keyring | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "group": record.group,
        "id": record.id,
        "display_name": record.display_name,
        "url": record.url,
        "description": record.description,
        "cache_validity_hours": record.cache_validity_hours,
        "allow_http": record.allow_http,
        "token_flow": record.token_flow,
        "client_id": record.client_id,
        "version": record.version,
        "create_time": record.create_time,
        "update_time": record.update_time,
        "credentials": None,
    }
    if record.credentials is not None:
        if keyring is None:
            raise RuntimeError("no encryption key configured; credentials cannot be stored")
        plain = json.dumps(
            {"u": record.credentials.username, "p": record.credentials.password}
        ).encode()
        doc["credentials"] = keyring.seal(plain, credentials_aad(record.id))
    return doc


def upstream_from_doc(doc: Mapping[str, Any], keyring: Keyring | None) -> UpstreamRecord:
    credentials: Credentials | None = None
    sealed = doc.get("credentials")
    if sealed:
        if keyring is None:
            raise RuntimeError("stored credentials need an encryption key; none is configured")
        plain = json.loads(keyring.open(str(sealed), credentials_aad(str(doc["id"]))))
        credentials = Credentials(username=str(plain["u"]), password=str(plain["p"]))
    return UpstreamRecord(
        group=str(doc["group"]),
        id=str(doc["id"]),
        display_name=str(doc["display_name"]),
        url=str(doc["url"]),
        description=str(doc.get("description", "")),
        credentials=credentials,
        cache_validity_hours=int(doc.get("cache_validity_hours", 24)),
        allow_http=bool(doc.get("allow_http", False)),
        token_flow=check_token_flow(str(doc.get("token_flow", "auto"))),
        client_id=str(doc.get("client_id", "vregistry")),
        version=int(doc.get("version", 0)),
        create_time=float(doc.get("create_time", 0.0)),
        update_time=float(doc.get("update_time", 0.0)),
    )


def registry_to_doc(record: RegistryRecord) -> dict[str, Any]:
    return {
        "group": record.group,
        "id": record.id,
        "display_name": record.display_name,
        "description": record.description,
        "members": list(record.members),
        "version": record.version,
        "create_time": record.create_time,
        "update_time": record.update_time,
    }


def registry_from_doc(doc: Mapping[str, Any]) -> RegistryRecord:
    return RegistryRecord(
        group=str(doc["group"]),
        id=str(doc["id"]),
        display_name=str(doc["display_name"]),
        description=str(doc.get("description", "")),
        members=tuple(str(m) for m in doc.get("members", ())),
        version=int(doc.get("version", 0)),
        create_time=float(doc.get("create_time", 0.0)),
        update_time=float(doc.get("update_time", 0.0)),
    )


def sealed_needs_rotation(doc: Mapping[str, Any], keyring: Keyring | None) -> bool:
    sealed = doc.get("credentials")
    return bool(sealed) and keyring is not None and not keyring.is_current(str(sealed))
