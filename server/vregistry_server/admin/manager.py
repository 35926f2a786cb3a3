"""Validated changes to the managed configuration, and live reload into the resolver.

Every write reads a fresh snapshot from the store, checks it (etag, ids,
group rules, limits, duplicates), and commits with compare-and-set on the
store's generation; when another writer got there first it starts over on
the new snapshot. After a commit, and whenever the store reports a change made
elsewhere, the snapshot becomes the resolver's configuration in one step.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from vregistry_server.admin.records import (
    REQUEST_FIELD_NAMES,
    RegistryRecord,
    State,
    UpstreamRecord,
    check_id,
    invalid,
    parse_name,
    parse_parent,
)
from vregistry_server.admin.stores.base import Changes, Conflict, Store
from vregistry_server.errors import (
    AlreadyExists,
    DuplicateUpstream,
    EtagMismatch,
    InvalidArgument,
    LimitReached,
    RegistryNotFound,
    StoreUnavailable,
    UpstreamInUse,
    UpstreamNotFound,
    UpstreamNotInRegistry,
)
from vregistry_server.model import UPSTREAM_DEFAULTS, Config, Credentials, Settings, Upstream
from vregistry_server.oci.egress import check_egress_literal
from vregistry_server.resolver import Resolver
from vregistry_server.rules import (
    FieldError,
    check_credentials,
    validate_registry_fields,
    validate_upstream,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
COMMIT_ATTEMPTS = 8
WATCH_TIMEOUT_SECONDS = 1.0

# The request fields of an upstream: the model's fields under their request names, with the
# credentials as username and password (write-only), and the id and group in the resource name.
# "source" is set by the service, never by a request: every create or update makes it "api".
UPSTREAM_FIELDS: tuple[str, ...] = (
    *(
        REQUEST_FIELD_NAMES.get(f.name, f.name)
        for f in dataclasses.fields(Upstream)
        if f.name not in {"id", "credentials", "group", "source"}
    ),
    "username",
    "password",
)
UPSTREAM_OUTPUT_ONLY = (
    "name",
    "has_credentials",
    "credentials_unreadable",
    "etag",
    "create_time",
    "update_time",
)
REGISTRY_FIELDS = ("display_name", "description")
REGISTRY_OUTPUT_ONLY = ("name", "upstreams", "etag", "create_time", "update_time")
_MODEL_FIELD_NAMES = {request: model for model, request in REQUEST_FIELD_NAMES.items()}


@dataclass(frozen=True, slots=True)
class UpstreamInput:
    """What a request says about an upstream (absent fields hold their defaults)."""

    display_name: str = ""
    url: str = ""
    description: str = ""
    username: str = ""
    password: str = ""
    cache_validity_hours: int | None = None
    allow_http: bool = False
    token_flow: str = ""
    client_id: str = ""
    realm_allow_hosts: tuple[str, ...] = ()
    allowed_actions: tuple[str, ...] = ()  # empty: the model's default (pull)

    def __repr__(self) -> str:
        return f"UpstreamInput(display_name={self.display_name!r}, url={self.url!r}, password=***)"

    def present(self) -> set[str]:
        """The fields set to a non-default value (the implied update mask)."""
        fields = {
            name
            for name in ("display_name", "url", "description", "username", "password", "client_id")
            if getattr(self, name)
        }
        if self.cache_validity_hours is not None:
            fields.add("cache_validity_hours")
        if self.allow_http:
            fields.add("allow_http")
        if self.token_flow:
            fields.add("token_flow")
        if self.realm_allow_hosts:
            fields.add("realm_allow_hosts")
        if self.allowed_actions:
            fields.add("allowed_actions")
        return fields

    def model_value(self, request_field: str) -> object:
        """The value of a request field as the model holds it (defaults for unset ones)."""
        if request_field == "cache_validity_hours" and self.cache_validity_hours is None:
            return UPSTREAM_DEFAULTS["cache_validity_hours"]
        value = getattr(self, request_field)
        if request_field in {"token_flow", "client_id", "allowed_actions"} and not value:
            return UPSTREAM_DEFAULTS[request_field]
        return value


@dataclass(frozen=True, slots=True)
class RegistryInput:
    display_name: str = ""
    description: str = ""

    def present(self) -> set[str]:
        return {name for name in REGISTRY_FIELDS if getattr(self, name)}


class ConfigManager:
    def __init__(self, store: Store, resolver: Resolver, settings: Settings) -> None:
        self.store = store
        self.resolver = resolver
        self.settings = settings
        self.generation = -1
        self._fingerprint: frozenset[tuple[str, str, int]] = frozenset()
        self._write_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self.last_applied_at = 0.0

    @property
    def source(self) -> str:
        return f"{self.store.name} store ({self.store.location})"

    # ------------------------------------------------------------------ lifecycle

    async def start(self, seed: Config | None) -> None:
        await self.store.open()
        rotated = await self.store.reencrypt()
        if rotated:
            log.info("re-encrypted credentials with the primary key", extra={"count": rotated})
        if seed is not None:
            await self.apply_seed(seed)
        await self.refresh()
        self._watcher = asyncio.create_task(self._watch(), name="config-store-watch")

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.store.aclose()

    async def _watch(self) -> None:
        while True:
            try:
                if await self.store.wait_for_change(self.generation, WATCH_TIMEOUT_SECONDS):
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "config store watch failed; retrying",
                    extra={"error": type(exc).__name__, "detail": str(exc)[:200]},
                )
                await asyncio.sleep(WATCH_TIMEOUT_SECONDS)

    async def refresh(self, state: State | None = None) -> None:
        """Make the store's current snapshot the resolver's configuration (if it is newer)."""
        async with self._apply_lock:
            state = state if state is not None else await self.store.load()
            # The generation alone is not enough: a Redis that lost its data starts over
            # at 0, so the record versions are part of what "changed" means. Both walk every
            # record: a worker thread does it, so a store of thousands does not stall the loop.
            fingerprint, config = await asyncio.to_thread(self._snapshot, state)
            if state.generation == self.generation and fingerprint == self._fingerprint:
                return
            self._fingerprint = fingerprint
            changed = await self.resolver.apply_config(config)
            previous, self.generation = self.generation, state.generation
            self.last_applied_at = time.time()
            log.info(
                "configuration applied",
                extra={
                    "generation": state.generation,
                    "previous_generation": previous,
                    "upstreams": len(state.upstreams),
                    "registries": len(state.registries),
                    "invalidated_upstreams": ",".join(sorted(changed)),
                },
            )

    def _snapshot(self, state: State) -> tuple[frozenset[tuple[str, str, int]], Config]:
        return _fingerprint(state), state.to_config(self.settings, self.source)

    async def apply_seed(self, seed: Config) -> None:
        """Create what the YAML file declares and the store lacks; keep what the store has."""

        def plan(state: State, version: int, now: float) -> tuple[Changes, int]:
            upstreams = [
                UpstreamRecord(
                    upstream=_validated(u),
                    version=version,
                    create_time=now,
                    update_time=now,
                )
                for u in seed.upstreams.values()
                if u.id not in state.upstreams
            ]
            # id -> group: a registry only takes members of its own group, even when an id
            # of the seed was taken at runtime by another group's upstream.
            known = {u.id: u.group for u in (*state.upstreams.values(), *upstreams)}
            registries = [
                RegistryRecord(
                    group=r.group,  # the YAML entry's group (config.py: default "default")
                    id=r.id,
                    name=r.name,
                    description=r.description,
                    members=tuple(
                        m.upstream.id
                        for m in sorted(r.upstreams, key=lambda m: m.position)
                        if known.get(m.upstream.id) == r.group
                    ),
                    version=version,
                    create_time=now,
                    update_time=now,
                )
                for r in seed.registries.values()
                if r.id not in state.registries
            ]
            return Changes(put_upstreams=tuple(upstreams), put_registries=tuple(registries)), len(
                upstreams
            ) + len(registries)

        created = await self._mutate(plan, allow_empty=True)
        log.info("seed applied", extra={"seed": seed.source, "created_count": created})

    # ------------------------------------------------------------------ reads

    async def get_upstream(self, name: str) -> UpstreamRecord:
        return _find_upstream(await self.store.load(), "name", name)

    async def get_registry(self, name: str) -> RegistryRecord:
        return _find_registry(await self.store.load(), "name", name)

    async def list_upstreams(
        self,
        parent: str,
        page_size: int,
        page_token: str,
        visible: Callable[[str], bool] = lambda group: True,
    ) -> tuple[list[UpstreamRecord], str]:
        """``visible`` says which groups the caller may see (``groups/-`` lists only those)."""
        group = parse_parent("parent", parent, allow_wildcard=True)
        state = await self.store.load()
        records = [
            u for u in state.upstreams.values() if group in ("-", u.group) and visible(u.group)
        ]
        return _page(records, parent, page_size, page_token)

    async def list_registries(
        self,
        parent: str,
        page_size: int,
        page_token: str,
        visible: Callable[[str], bool] = lambda group: True,
    ) -> tuple[list[RegistryRecord], str]:
        group = parse_parent("parent", parent, allow_wildcard=True)
        state = await self.store.load()
        records = [
            r for r in state.registries.values() if group in ("-", r.group) and visible(r.group)
        ]
        return _page(records, parent, page_size, page_token)

    async def resolve_for_test(self, name: str) -> UpstreamRecord:
        return await self.get_upstream(name)

    # ------------------------------------------------------------------ upstream writes

    async def create_upstream(
        self, parent: str, upstream_id: str, data: UpstreamInput
    ) -> UpstreamRecord:
        group = parse_parent("parent", parent)
        record = build_unsaved_upstream(group, upstream_id, data)
        check_egress_literal(record.upstream, self.settings)

        def plan(state: State, version: int, now: float) -> tuple[Changes, UpstreamRecord]:
            existing = state.upstreams.get(record.id)
            if existing is not None:
                raise _id_taken("upstream", existing.group, record.resource_name, record.id)
            stored = dataclasses.replace(record, version=version, create_time=now, update_time=now)
            _check_duplicate(state, stored)
            return Changes(put_upstreams=(stored,)), stored

        return await self._mutate(plan)

    async def update_upstream(
        self, name: str, etag: str, mask: Sequence[str], data: UpstreamInput
    ) -> UpstreamRecord:
        paths = _mask(mask, data.present(), UPSTREAM_FIELDS, UPSTREAM_OUTPUT_ONLY, {"credentials"})
        if "credentials" in paths:
            paths |= {"username", "password"}

        def plan(state: State, version: int, now: float) -> tuple[Changes, UpstreamRecord]:
            old = _find_upstream(state, "upstream.name", name)
            _check_etag(etag, old.etag, old.resource_name)
            values = {
                _MODEL_FIELD_NAMES.get(path, path): data.model_value(path)
                for path in paths - {"username", "password", "credentials"}
            }
            credentials = old.upstream.credentials
            if paths & {"username", "password"}:
                username = data.username if "username" in paths else _username(credentials)
                password = data.password if "password" in paths else _password(credentials)
                credentials = _checked_credentials(username, password)
            candidate = dataclasses.replace(
                old,
                upstream=_validated(
                    dataclasses.replace(
                        old.upstream,
                        credentials=credentials,
                        source="api",  # changed through ConfigService: see oci/egress.py
                        **values,  # type: ignore[arg-type]
                    )
                ),
                version=version,
                update_time=now,
            )
            if _moved(old.upstream, candidate.upstream) and not (
                "password" in paths and data.password
            ):
                # A password belongs to the host it was given for: a new url (or scheme) does
                # not inherit it, whatever the mask says ([url, username] used to keep it and
                # hand the old password to the new host).
                candidate = dataclasses.replace(
                    candidate, upstream=dataclasses.replace(candidate.upstream, credentials=None)
                )
            _check_duplicate(state, candidate)
            check_egress_literal(candidate.upstream, self.settings)
            return Changes(put_upstreams=(candidate,)), candidate

        return await self._mutate(plan)

    async def delete_upstream(self, name: str, etag: str, force: bool) -> list[str]:
        def plan(state: State, version: int, now: float) -> tuple[Changes, list[str]]:
            old = _find_upstream(state, "name", name)
            _check_etag(etag, old.etag, old.resource_name)
            users = sorted(
                (r for r in state.registries.values() if old.id in r.members), key=lambda r: r.id
            )
            if users and not force:
                raise UpstreamInUse(
                    f"upstream {old.resource_name} is in registries "
                    f"{', '.join(r.resource_name for r in users)}; remove it from them first,"
                    " or set force to do both"
                )
            updated = tuple(
                dataclasses.replace(
                    r,
                    members=tuple(m for m in r.members if m != old.id),
                    version=version,
                    update_time=now,
                )
                for r in users
            )
            return Changes(delete_upstreams=(old.id,), put_registries=updated), [
                r.resource_name for r in users
            ]

        return await self._mutate(plan)

    # ------------------------------------------------------------------ registry writes

    async def create_registry(
        self, parent: str, registry_id: str, data: RegistryInput
    ) -> RegistryRecord:
        group = parse_parent("parent", parent)
        check_id("registry_id", registry_id)
        record = _validated_registry(
            RegistryRecord(
                group=group,
                id=registry_id,
                name=data.display_name,
                description=data.description,
            )
        )

        def plan(state: State, version: int, now: float) -> tuple[Changes, RegistryRecord]:
            existing = state.registries.get(record.id)
            if existing is not None:
                raise _id_taken("registry", existing.group, record.resource_name, record.id)
            count = sum(1 for r in state.registries.values() if r.group == group)
            limit = self.settings.max_registries_per_group
            if count >= limit:
                raise LimitReached(
                    f"group {group!r} already has {count} registries, at most {limit} allowed"
                    " (settings.max_registries_per_group)"
                )
            stored = dataclasses.replace(record, version=version, create_time=now, update_time=now)
            return Changes(put_registries=(stored,)), stored

        return await self._mutate(plan)

    async def update_registry(
        self, name: str, etag: str, mask: Sequence[str], data: RegistryInput
    ) -> RegistryRecord:
        paths = _mask(mask, data.present(), REGISTRY_FIELDS, REGISTRY_OUTPUT_ONLY, set())

        def plan(state: State, version: int, now: float) -> tuple[Changes, RegistryRecord]:
            old = _find_registry(state, "registry.name", name)
            _check_etag(etag, old.etag, old.resource_name)
            values = {_MODEL_FIELD_NAMES.get(path, path): getattr(data, path) for path in paths}
            stored = _validated_registry(
                dataclasses.replace(old, version=version, update_time=now, **values)
            )
            return Changes(put_registries=(stored,)), stored

        return await self._mutate(plan)

    async def delete_registry(self, name: str, etag: str) -> None:
        def plan(state: State, version: int, now: float) -> tuple[Changes, None]:
            old = _find_registry(state, "name", name)
            _check_etag(etag, old.etag, old.resource_name)
            return Changes(delete_registries=(old.id,)), None

        await self._mutate(plan)

    async def add_upstream(
        self, registry: str, upstream: str, position: int, etag: str
    ) -> RegistryRecord:
        def plan(state: State, version: int, now: float) -> tuple[Changes, RegistryRecord]:
            old = _find_registry(state, "registry", registry)
            _check_etag(etag, old.etag, old.resource_name)
            member = _find_upstream(state, "upstream", upstream)
            if member.group != old.group:
                raise InvalidArgument(
                    f"field 'upstream': {member.resource_name} belongs to group {member.group!r},"
                    f" the registry to group {old.group!r}; an upstream can only join a registry"
                    " of its own group"
                )
            if member.id in old.members:
                raise InvalidArgument(
                    f"field 'upstream': {member.resource_name} is already in {old.resource_name}"
                    f" at position {old.members.index(member.id) + 1}"
                )
            limit = self.settings.max_upstreams_per_registry
            if len(old.members) >= limit:
                raise LimitReached(
                    f"{old.resource_name} already has {len(old.members)} upstreams, at most"
                    f" {limit} allowed (settings.max_upstreams_per_registry)"
                )
            count = len(old.members)
            at = count + 1 if position == 0 else position
            if not 1 <= at <= count + 1:
                raise InvalidArgument(
                    f"field 'position': {position} is out of range: 1 to {count + 1}"
                    " (0 appends at the end)"
                )
            members = list(old.members)
            members.insert(at - 1, member.id)
            stored = dataclasses.replace(
                old, members=tuple(members), version=version, update_time=now
            )
            return Changes(put_registries=(stored,)), stored

        return await self._mutate(plan)

    async def remove_upstream(self, registry: str, upstream: str, etag: str) -> RegistryRecord:
        group, upstream_id = parse_name("upstream", upstream, "upstreams")

        def plan(state: State, version: int, now: float) -> tuple[Changes, RegistryRecord]:
            old = _find_registry(state, "registry", registry)
            _check_etag(etag, old.etag, old.resource_name)
            if upstream_id not in old.members or group != old.group:
                raise UpstreamNotInRegistry(f"{upstream} is not in {old.resource_name}")
            stored = dataclasses.replace(
                old,
                members=tuple(m for m in old.members if m != upstream_id),
                version=version,
                update_time=now,
            )
            return Changes(put_registries=(stored,)), stored

        return await self._mutate(plan)

    async def reorder_upstreams(
        self, registry: str, order: Sequence[tuple[str, int]], etag: str
    ) -> RegistryRecord:
        def plan(state: State, version: int, now: float) -> tuple[Changes, RegistryRecord]:
            old = _find_registry(state, "registry", registry)
            _check_etag(etag, old.etag, old.resource_name)
            by_position: dict[int, str] = {}
            seen: set[str] = set()
            for index, (name, position) in enumerate(order):
                where = f"field 'upstreams[{index}]'"
                group, upstream_id = parse_name(f"upstreams[{index}].upstream", name, "upstreams")
                if group != old.group or upstream_id not in old.members:
                    raise InvalidArgument(f"{where}: {name} is not in {old.resource_name}")
                if upstream_id in seen:
                    raise InvalidArgument(f"{where}: {name} is listed twice (duplicate upstream)")
                seen.add(upstream_id)
                if position in by_position:
                    raise InvalidArgument(
                        f"{where}: position {position} is given twice; positions must be unique"
                    )
                if not 1 <= position <= len(old.members):
                    raise InvalidArgument(
                        f"{where}: position {position} is out of range: 1 to {len(old.members)}"
                    )
                by_position[position] = upstream_id
            missing = [m for m in old.members if m not in seen]
            if missing:
                names = ", ".join(f"groups/{old.group}/upstreams/{m}" for m in missing)
                raise InvalidArgument(
                    f"field 'upstreams': every upstream of the registry must be given; missing: {names}"
                )
            members = tuple(by_position[p] for p in sorted(by_position))
            stored = dataclasses.replace(old, members=members, version=version, update_time=now)
            return Changes(put_registries=(stored,)), stored

        return await self._mutate(plan)

    # ------------------------------------------------------------------ commit loop

    async def _mutate(
        self, plan: Callable[[State, int, float], tuple[Changes, T]], *, allow_empty: bool = False
    ) -> T:
        async with self._write_lock:
            for _ in range(COMMIT_ATTEMPTS):
                state = await self.store.load()
                changes, result = plan(state, state.generation + 1, time.time())
                if not changes and allow_empty:
                    await self.refresh(state)
                    return result
                try:
                    await self.store.commit(state.generation, changes)
                except Conflict:
                    await asyncio.sleep(random.uniform(0.005, 0.05))
                    continue
                await self.refresh()
                return result
        raise StoreUnavailable("the configuration kept changing during this write; retry it")


# --------------------------------------------------------------------------- helpers


def build_unsaved_upstream(group: str, upstream_id: str, data: UpstreamInput) -> UpstreamRecord:
    """An upstream from a create (or TestUpstream) request, validated, not stored."""
    check_id("upstream_id", upstream_id)
    values = {
        _MODEL_FIELD_NAMES.get(path, path): data.model_value(path)
        for path in UPSTREAM_FIELDS
        if path not in {"username", "password"}
    }
    credentials = _checked_credentials(data.username, data.password)
    return UpstreamRecord(
        upstream=_validated(
            # source "api": written through ConfigService, it may reach public addresses only
            # (and settings.egress_allow_cidrs), see oci/egress.py.
            Upstream(id=upstream_id, group=group, credentials=credentials, source="api", **values)  # type: ignore[arg-type]
        ),
    )


def _id_taken(kind: str, taken_by: str, name: str, resource_id: str) -> AlreadyExists:
    """ALREADY_EXISTS that never names another group's resource.

    Ids are unique across groups (UpstreamService takes the id alone), so an id of
    another group is refused too, but the answer does not say which group has it.
    """
    if name.split("/")[1] == taken_by:
        return AlreadyExists(f"{kind} {name} already exists")
    return AlreadyExists(
        f"{kind} id {resource_id!r} already exists in another group (ids are unique across"
        " groups); choose another"
    )


def _validated(upstream: Upstream) -> Upstream:
    try:
        return validate_upstream(upstream)
    except FieldError as exc:
        raise invalid(exc) from None


def _checked_credentials(username: str, password: str) -> Credentials | None:
    try:
        return check_credentials(username, password)
    except FieldError as exc:
        raise invalid(exc) from None


def _validated_registry(record: RegistryRecord) -> RegistryRecord:
    try:
        validate_registry_fields(record.id, record.name, record.description)
    except FieldError as exc:
        raise invalid(exc, rename={"name": "display_name", "id": "registry_id"}) from None
    return record


def _fingerprint(state: State) -> frozenset[tuple[str, str, int]]:
    return frozenset(
        [("u", u.id, u.version) for u in state.upstreams.values()]
        + [("r", r.id, r.version) for r in state.registries.values()]
    )


def _moved(old: Upstream, new: Upstream) -> bool:
    """Whether an update points the upstream somewhere else (url, or http instead of https)."""
    return new.url != old.url or new.allow_http != old.allow_http


def _username(credentials: Credentials | None) -> str:
    return credentials.username if credentials else ""


def _password(credentials: Credentials | None) -> str:
    return credentials.password if credentials else ""


def _find_upstream(state: State, field_name: str, name: str) -> UpstreamRecord:
    group, upstream_id = parse_name(field_name, name, "upstreams")
    record = state.upstreams.get(upstream_id)
    if record is None or record.group != group:
        raise UpstreamNotFound(f"upstream {name} does not exist")
    return record


def _find_registry(state: State, field_name: str, name: str) -> RegistryRecord:
    group, registry_id = parse_name(field_name, name, "registries")
    record = state.registries.get(registry_id)
    if record is None or record.group != group:
        raise RegistryNotFound(f"registry {name} does not exist")
    return record


def _check_etag(given: str, current: str, name: str) -> None:
    if given and given != current:
        raise EtagMismatch(
            f"{name} changed since it was read (etag {given} is not the current {current});"
            " read it again and retry"
        )


def _check_duplicate(state: State, record: UpstreamRecord) -> None:
    for other in state.upstreams.values():
        if other.id == record.id or other.group != record.group:
            continue
        same_credentials = other.upstream.credentials == record.upstream.credentials
        if other.upstream.url == record.upstream.url and same_credentials:
            raise DuplicateUpstream(
                f"upstream {other.resource_name} already has url {record.upstream.url} with the same"
                " credentials; the same url and credentials may appear once per group"
            )


def _mask(
    mask: Sequence[str],
    present: set[str],
    allowed: Sequence[str],
    output_only: Sequence[str],
    aliases: set[str],
) -> set[str]:
    if not mask:
        if not present:
            raise InvalidArgument(
                "field 'update_mask': nothing to update (no mask and no field set)"
            )
        return present
    if list(mask) == ["*"]:
        return set(allowed)
    paths: set[str] = set()
    for path in mask:
        if path in output_only:
            raise InvalidArgument(
                f"field 'update_mask': {path!r} is output only and cannot be changed"
            )
        if path not in allowed and path not in aliases:
            raise InvalidArgument(
                f"field 'update_mask': unknown field {path!r}; allowed: {', '.join(allowed)}"
                + (f", {', '.join(sorted(aliases))}" if aliases else "")
                + ", or '*'"
            )
        paths.add(path)
    return paths


def _page(
    records: Sequence[UpstreamRecord] | Sequence[RegistryRecord],
    parent: str,
    page_size: int,
    page_token: str,
) -> tuple[list[T], str]:
    if page_size < 0:
        raise InvalidArgument("field 'page_size': must not be negative")
    size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
    after = ""
    if page_token:
        try:
            token = json.loads(base64.urlsafe_b64decode(page_token.encode()))
            token_parent, after = str(token["p"]), str(token["a"])
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise InvalidArgument("field 'page_token': not a token this API issued") from None
        if token_parent != parent:
            raise InvalidArgument("field 'page_token': issued for another parent")
    ordered = sorted((r for r in records if r.id > after), key=lambda r: r.id)
    page = ordered[:size]
    next_token = ""
    if len(ordered) > size:
        next_token = base64.urlsafe_b64encode(
            json.dumps({"p": parent, "a": page[-1].id}).encode()
        ).decode()
    return list(page), next_token  # type: ignore[arg-type]
