"""The stored resources: an upstream or a registry of a group, at a version.

A record is the model object (model.Upstream; a registry's own fields) plus what
only the store knows: the version and the times (the group is the model's). Documents are
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
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vregistry_server.admin.crypto import DecryptError, Keyring
from vregistry_server.errors import InvalidArgument
from vregistry_server.model import (
    DEFAULT_GROUP,
    UPSTREAM_DEFAULTS,
    Config,
    Credentials,
    Registry,
    RegistryUpstream,
    Settings,
    Upstream,
)
from vregistry_server.rules import FieldError, check_token_flow
from vregistry_server.rules import check_id as _check_id

log = logging.getLogger(__name__)

SEED_GROUP = DEFAULT_GROUP

# Model fields that the requests and responses (config_service.proto) call otherwise.
REQUEST_FIELD_NAMES: Mapping[str, str] = {"name": "display_name", "id": "upstream_id"}
# What a stored upstream document holds besides the model's fields (the group is one of those).
RECORD_FIELDS = ("version", "create_time", "update_time")
# Model fields that are not stored as they are (credentials are sealed; see upstream_to_doc).
_UPSTREAM_PLAIN_FIELDS = tuple(
    f.name for f in dataclasses.fields(Upstream) if f.name != "credentials"
)
# Written before the model and the documents shared their field names.
_LEGACY_DOC_KEYS: Mapping[str, str] = {"name": "display_name"}
# Fields a document written before them lacks, read fail-closed rather than as the model's
# default: who wrote a stored url cannot be told, so it may reach public addresses only.
_MISSING_DOC_VALUES: Mapping[str, Any] = {"source": "api"}


def invalid(exc: FieldError, *, rename: Mapping[str, str] = REQUEST_FIELD_NAMES) -> InvalidArgument:
    """A broken rule, named as the request names the field."""
    return InvalidArgument(f"field '{rename.get(exc.field, exc.field)}': {exc.message}")


@dataclass(frozen=True, slots=True)
class UpstreamRecord:
    upstream: Upstream
    version: int = 0
    create_time: float = 0.0
    update_time: float = 0.0

    @property
    def id(self) -> str:
        return self.upstream.id

    @property
    def group(self) -> str:
        # The model holds the group (one definition), so the resolver knows it too.
        return self.upstream.group

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
                id=rid,
                name=record.name,
                description=record.description,
                upstreams=members,
                group=record.group,
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


def credentials_aad(upstream: Upstream) -> bytes:
    """What sealed credentials are bound to: id, group, url (normalised when it was stored)
    and allow_http. The username travels inside the sealed plaintext, so AES-GCM
    authenticates it too. A record whose url or group is changed in the store without
    the key no longer opens, so its credentials cannot be sent to the new url."""
    bound = ["vregistry-upstream-credentials/v2", upstream.id, upstream.group, upstream.url]
    return json.dumps([*bound, upstream.allow_http], separators=(",", ":")).encode()


def legacy_credentials_aad(upstream_id: str) -> bytes:
    """The associated data before it bound url and group; only ``reseal_doc`` accepts it,
    at start, to re-seal such a record with ``credentials_aad``."""
    return f"vregistry-upstream-credentials:{upstream_id}".encode()


# Opened credentials by (sealed value, associated data): a reload of an unchanged record
# neither decrypts nor derives the fingerprint again. Filled from worker threads.
_OPENED_LIMIT = 65_536
_opened: OrderedDict[tuple[str, bytes], Credentials] = OrderedDict()
_opened_lock = threading.Lock()


def _remember(key: tuple[str, bytes], credentials: Credentials) -> None:
    with _opened_lock:
        _opened[key] = credentials
        _opened.move_to_end(key)
        while len(_opened) > _OPENED_LIMIT:
            _opened.popitem(last=False)


def open_credentials(sealed: str, associated: bytes, keyring: Keyring) -> Credentials:
    """The credentials of a sealed value, or the unreadable marker when it does not open.

    A miss derives the fingerprint (PBKDF2, tens of milliseconds): the stores call
    this from a worker thread, never on the event loop.
    """
    key = (sealed, associated)
    with _opened_lock:
        hit = _opened.get(key)
    if hit is not None:
        return hit
    try:
        plain = json.loads(keyring.open(sealed, associated))
    except DecryptError:
        return Credentials.unreadable_as(sealed)
    credentials = Credentials(username=str(plain["u"]), password=str(plain["p"]))
    _remember(key, credentials)
    return credentials


def upstream_to_doc(record: UpstreamRecord, keyring: Keyring | None) -> dict[str, Any]:
    upstream = record.upstream
    doc: dict[str, Any] = {name: getattr(upstream, name) for name in _UPSTREAM_PLAIN_FIELDS}
    doc["realm_allow_hosts"] = list(upstream.realm_allow_hosts)
    doc["allowed_actions"] = list(upstream.allowed_actions)
    doc.update({name: getattr(record, name) for name in RECORD_FIELDS})
    doc["credentials"] = None
    credentials = upstream.credentials
    if credentials is not None and credentials.unreadable:
        doc["credentials"] = credentials.unreadable  # written back as it was: still unusable
    elif credentials is not None:
        if keyring is None:
            raise RuntimeError("no encryption key configured; credentials cannot be stored")
        plain = json.dumps({"u": credentials.username, "p": credentials.password}).encode()
        associated = credentials_aad(upstream)
        doc["credentials"] = keyring.seal(plain, associated)
        _remember((doc["credentials"], associated), credentials)
    return doc


def upstream_from_doc(doc: Mapping[str, Any], keyring: Keyring | None) -> UpstreamRecord:
    """A stored record; credentials that do not open become the unreadable marker (the
    other records still load). May derive fingerprints: call it off the event loop."""
    upstream = _upstream_without_credentials(doc)
    sealed = doc.get("credentials")
    if sealed:
        if keyring is None:
            raise RuntimeError("stored credentials need an encryption key; none is configured")
        credentials = open_credentials(str(sealed), credentials_aad(upstream), keyring)
        upstream = dataclasses.replace(upstream, credentials=credentials)
    return UpstreamRecord(
        upstream=upstream,
        version=int(doc.get("version", 0)),
        create_time=float(doc.get("create_time", 0.0)),
        update_time=float(doc.get("update_time", 0.0)),
    )


class RecordCache:
    """The upstream records of the last load, by their stored document (one per store).

    A reload parses, validates and opens only the documents that changed; the others
    are the same records as before. That keeps the worker thread's share of the GIL
    small, so the event loop is not held up even by a store of thousands of upstreams.
    """

    def __init__(self) -> None:
        self._by_doc: dict[str | bytes, UpstreamRecord] = {}

    def upstreams(
        self, upstream_docs: Iterable[str | bytes], keyring: Keyring | None
    ) -> dict[str, UpstreamRecord]:
        previous, current = self._by_doc, {}
        for raw in upstream_docs:
            record = previous.get(raw)
            current[raw] = (
                record if record is not None else upstream_from_doc(json.loads(raw), keyring)
            )
        self._by_doc = current  # loads may overlap: either result is a valid cache
        return {record.id: record for record in current.values()}


def state_from_docs(
    generation: int,
    upstream_docs: Iterable[str | bytes],
    registry_docs: Iterable[str | bytes],
    keyring: Keyring | None,
    cache: RecordCache | None = None,
) -> State:
    """A snapshot from stored JSON documents. Opens credentials (a cache miss derives a
    fingerprint): the stores run it in a worker thread, so a reload of thousands of
    credentialed upstreams does not hold up the event loop."""
    upstreams = (cache or RecordCache()).upstreams(upstream_docs, keyring)
    registries = {}
    for raw in registry_docs:
        registry = registry_from_doc(json.loads(raw))
        registries[registry.id] = registry
    return State(generation, upstreams, registries)


def _upstream_without_credentials(doc: Mapping[str, Any]) -> Upstream:
    values = {name: _doc_value(doc, name) for name in _UPSTREAM_PLAIN_FIELDS}
    values["realm_allow_hosts"] = tuple(str(h) for h in values["realm_allow_hosts"])
    values["allowed_actions"] = tuple(str(a) for a in values["allowed_actions"])
    values["token_flow"] = check_token_flow(str(values["token_flow"]))
    return Upstream(**values)


def _doc_value(doc: Mapping[str, Any], name: str) -> Any:
    if name in doc:
        return doc[name]
    legacy = _LEGACY_DOC_KEYS.get(name)
    if legacy is not None and legacy in doc:
        return doc[legacy]
    if name in _MISSING_DOC_VALUES:
        return _MISSING_DOC_VALUES[name]
    if name in UPSTREAM_DEFAULTS:
        return UPSTREAM_DEFAULTS[name]
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


# --------------------------------------------------------------------------- re-sealing at start

ResealOutcome = Literal["none", "current", "resealed", "unreadable"]


def reseal_doc(doc: Mapping[str, Any], keyring: Keyring) -> tuple[ResealOutcome, dict[str, Any]]:
    """Check one stored document at start; re-seal it when it needs it.

    Re-sealed: credentials sealed with an older key (rotation), or with the legacy
    associated data that bound only the id (the migration to ``credentials_aad``).
    A value whose key the keyring lacks raises DecryptError (refuse to start rather
    than lose credentials); one that opens with neither associated data is
    "unreadable" and left as it is. Only the plaintext is re-sealed: no fingerprint.
    """
    sealed = doc.get("credentials")
    if not sealed:
        return "none", dict(doc)
    sealed = str(sealed)
    keyring.check_holds(sealed)
    upstream = _upstream_without_credentials(doc)
    associated = credentials_aad(upstream)
    try:
        plain = keyring.open(sealed, associated)
        legacy = False
    except DecryptError:
        try:
            plain = keyring.open(sealed, legacy_credentials_aad(upstream.id))
            legacy = True
        except DecryptError:
            return "unreadable", dict(doc)
    if not legacy and keyring.is_current(sealed):
        return "current", dict(doc)
    return "resealed", {**doc, "credentials": keyring.seal(plain, associated)}


def check_resealed(outcomes: Mapping[str, ResealOutcome], source: str) -> None:
    """Refuse a keyring that opens none of the stored credentials (a wrong key looks
    like that); report single records that do not open (edited without the key)."""
    credentialed = [uid for uid, outcome in outcomes.items() if outcome != "none"]
    unreadable = sorted(uid for uid, outcome in outcomes.items() if outcome == "unreadable")
    if credentialed and len(unreadable) == len(credentialed):
        raise DecryptError(
            f"{source}: cannot decrypt any stored credentials ({len(unreadable)}):"
            " wrong key or tampered data"
        )
    if unreadable:
        log.warning(
            "stored credentials do not open for these upstreams (changed in the store without"
            " the key?); they are unusable until new credentials are set",
            extra={"upstreams": ",".join(unreadable[:50]), "count": len(unreadable)},
        )
