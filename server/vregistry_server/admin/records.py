"""The stored resources: an upstream or a registry of a group, at a version.

A record is the model object (model.Upstream; a registry's own fields) plus what
only the store knows: the group, the version and the times. Documents are
built from the model's fields by name, so a field added to the model reaches
the stores, the seed and the API without being spelled out again
(tests/unit/test_model_drift.py checks that it does). A ``State`` is one
consistent snapshot of the store at a generation, and turns into the runtime
``Config`` the resolver reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vregistry_server.admin.crypto import Keyring
from vregistry_server.errors import InvalidArgument
from vregistry_server.model import (
    Config,
    Credentials,
    Registry,
    RegistryUpstream,
    Settings,
    Upstream,
)
from vregistry_server.rules import FieldError, check_token_flow
from vregistry_server.rules import check_id as _check_id

SEED_GROUP = "default"

# Model fields that the requests and responses (config_service.proto) call otherwise.
REQUEST_FIELD_NAMES: Mapping[str, str] = {"name": "display_name", "id": "upstream_id"}
# What a stored upstream document holds besides the model's fields.
RECORD_FIELDS = ("group", "version", "create_time", "update_time")
# Model fields that are not stored as they are (credentials are sealed; see upstream_to_doc).
_UPSTREAM_PLAIN_FIELDS = tuple(
    f.name for f in dataclasses.fields(Upstream) if f.name != "credentials"
)
_UPSTREAM_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Upstream) if f.default is not dataclasses.MISSING
}
# Written before the model and the documents shared their field names.
_LEGACY_DOC_KEYS: Mapping[str, str] = {"name": "display_name"}


def invalid(exc: FieldError, *, rename: Mapping[str, str] = REQUEST_FIELD_NAMES) -> InvalidArgument:
    """A broken rule, named as the request names the field."""
    return InvalidArgument(f"field '{rename.get(exc.field, exc.field)}': {exc.message}")


@dataclass(frozen=True, slots=True)
class UpstreamRecord:
    group: str
    upstream: Upstream
    version: int = 0
    create_time: float = 0.0
    update_time: float = 0.0

    @property
    def id(self) -> str:
        return self.upstream.id

    @property
    def resource_name(self) -> str:
        return upstream_name(self.group, self.id)

    @property
    def etag(self) -> str:
        return make_etag("upstream", self.id, self.version)


@dataclass(frozen=True, slots=True)
class RegistryRecord:
    """A registry's own fields (named as in model.Registry) and its members by id."""

    group: str
    id: str
    name: str
    description: str = ""
    members: tuple[str, ...] = ()  # upstream ids; position = index + 1 (model: upstreams)
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
        upstreams = {uid: record.upstream for uid, record in self.upstreams.items()}
        registries: dict[str, Registry] = {}
        for rid, record in self.registries.items():
            members = tuple(
                RegistryUpstream(upstream=upstreams[uid], position=index)
                for index, uid in enumerate(record.members, start=1)
                if uid in upstreams
            )
            registries[rid] = Registry(
                id=rid, name=record.name, description=record.description, upstreams=members
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


def check_id(field_name: str, value: str) -> str:
    try:
        return _check_id(field_name, value)
    except FieldError as exc:
        raise invalid(exc, rename={}) from None


# --------------------------------------------------------------------------- documents


def credentials_aad(upstream_id: str) -> bytes:
    return f"vregistry-upstream-credentials:{upstream_id}".encode()


def upstream_to_doc(record: UpstreamRecord, keyring: Keyring | None) -> dict[str, Any]:
    upstream = record.upstream
    doc: dict[str, Any] = {name: getattr(upstream, name) for name in _UPSTREAM_PLAIN_FIELDS}
    doc["realm_allow_hosts"] = list(upstream.realm_allow_hosts)
    doc.update({name: getattr(record, name) for name in RECORD_FIELDS})
    doc["credentials"] = None
    if upstream.credentials is not None:
        if keyring is None:
            raise RuntimeError("no encryption key configured; credentials cannot be stored")
        plain = json.dumps(
            {"u": upstream.credentials.username, "p": upstream.credentials.password}
        ).encode()
        doc["credentials"] = keyring.seal(plain, credentials_aad(upstream.id))
    return doc


def upstream_from_doc(doc: Mapping[str, Any], keyring: Keyring | None) -> UpstreamRecord:
    credentials: Credentials | None = None
    sealed = doc.get("credentials")
    if sealed:
        if keyring is None:
            raise RuntimeError("stored credentials need an encryption key; none is configured")
        plain = json.loads(keyring.open(str(sealed), credentials_aad(str(doc["id"]))))
        credentials = Credentials(username=str(plain["u"]), password=str(plain["p"]))
    values = {name: _doc_value(doc, name) for name in _UPSTREAM_PLAIN_FIELDS}
    values["realm_allow_hosts"] = tuple(str(h) for h in values["realm_allow_hosts"])
    values["token_flow"] = check_token_flow(str(values["token_flow"]))
    upstream = Upstream(**values, credentials=credentials)
    return UpstreamRecord(
        group=str(doc["group"]),
        upstream=upstream,
        version=int(doc.get("version", 0)),
        create_time=float(doc.get("create_time", 0.0)),
        update_time=float(doc.get("update_time", 0.0)),
    )


def _doc_value(doc: Mapping[str, Any], name: str) -> Any:
    if name in doc:
        return doc[name]
    legacy = _LEGACY_DOC_KEYS.get(name)
    if legacy is not None and legacy in doc:
        return doc[legacy]
    if name in _UPSTREAM_DEFAULTS:
        return _UPSTREAM_DEFAULTS[name]
    raise KeyError(name)


def registry_to_doc(record: RegistryRecord) -> dict[str, Any]:
    doc = {f.name: getattr(record, f.name) for f in dataclasses.fields(RegistryRecord)}
    doc["members"] = list(record.members)
    return doc


def registry_from_doc(doc: Mapping[str, Any]) -> RegistryRecord:
    return RegistryRecord(
        group=str(doc["group"]),
        id=str(doc["id"]),
        name=str(doc.get("name", doc.get("display_name", ""))),
        description=str(doc.get("description", "")),
        members=tuple(str(m) for m in doc.get("members", ())),
        version=int(doc.get("version", 0)),
        create_time=float(doc.get("create_time", 0.0)),
        update_time=float(doc.get("update_time", 0.0)),
    )


def sealed_needs_rotation(doc: Mapping[str, Any], keyring: Keyring | None) -> bool:
    sealed = doc.get("credentials")
    return bool(sealed) and keyring is not None and not keyring.is_current(str(sealed))
