"""Configuration: a YAML file of upstreams and registries, validated at start.

The file never holds a secret itself: passwords come by reference
(``password_env`` or ``password_file``). Every error names the file, the entry
and the field, so a bad deploy fails loudly at start instead of at the first pull.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vregistry_server.model import (
    DEFAULT_GROUP,
    DEFAULT_MAX_REGISTRIES_PER_GROUP,
    DEFAULT_MAX_UPSTREAMS_PER_REGISTRY,
    UPSTREAM_DEFAULTS,
    Config,
    Credentials,
    Registry,
    RegistryUpstream,
    Settings,
    TokenFlow,
    Upstream,
)
from vregistry_server.redis_topology import parse_redis_url
from vregistry_server.rules import (
    FieldError,
    check_credentials,
    check_id,
    parse_allow_cidrs,
    validate_registry_fields,
    validate_upstream,
)


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


# --------------------------------------------------------------------------- file schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamEntry(_Strict):
    """An upstream as the file spells it: the model's fields (same names, same defaults),
    with the credentials by reference. Values are checked by rules.validate_upstream."""

    id: str
    name: str
    url: str
    description: str = UPSTREAM_DEFAULTS["description"]
    username: str | None = None
    password_env: str | None = Field(default=None, min_length=1)
    password_file: str | None = Field(default=None, min_length=1)
    cache_validity_hours: int = UPSTREAM_DEFAULTS["cache_validity_hours"]
    allow_http: bool = UPSTREAM_DEFAULTS["allow_http"]
    token_flow: TokenFlow = UPSTREAM_DEFAULTS["token_flow"]
    client_id: str = UPSTREAM_DEFAULTS["client_id"]
    realm_allow_hosts: list[str] = Field(default_factory=list)
    allowed_actions: list[str] = Field(
        default_factory=lambda: list(UPSTREAM_DEFAULTS["allowed_actions"])
    )
    group: str = UPSTREAM_DEFAULTS["group"]


class RegistryEntry(_Strict):
    id: str
    name: str
    description: str = ""
    upstreams: list[str] = Field(default_factory=list)
    group: str = DEFAULT_GROUP  # lists only upstreams of the same group


class SettingsEntry(_Strict):
    listen: str | None = None
    redis_url: str | None = None
    redis_ca_file: str | None = Field(default=None, min_length=1)
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    token_cache_max_ttl_seconds: float = Field(default=180.0, gt=0, le=86400)
    # In-process layer in front of Redis (0 turns it off); see token_cache.RedisTokenCache.
    token_near_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    token_expiry_margin_seconds: float = Field(default=10.0, ge=0, le=300)
    connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    request_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    probe_concurrency: int = Field(default=3, ge=1, le=64)
    probe_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    probe_retries: int = Field(default=2, ge=0, le=5)
    retry_backoff_seconds: float = Field(default=0.1, ge=0, le=10)
    max_retry_after_wait_seconds: float = Field(default=1.0, ge=0, le=60)
    circuit_failure_threshold: int = Field(default=5, ge=1, le=1000)
    circuit_reset_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_upstreams_per_registry: int = Field(
        default=DEFAULT_MAX_UPSTREAMS_PER_REGISTRY, ge=1, le=1000
    )
    max_registries_per_group: int = Field(default=DEFAULT_MAX_REGISTRIES_PER_GROUP, ge=1, le=1000)
    challenge_cache_seconds: float = Field(default=3600.0, ge=0, le=86400)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    # The ResolveUpstream resolution cache (resolve_cache.py; model.Settings says what each is).
    negative_cache_seconds: float = Field(default=0.0, ge=0, le=86400)
    stale_if_error_seconds: float = Field(default=3600.0, ge=0, le=7 * 86400)
    resolve_cache_max_entries: int = Field(default=50_000, ge=0, le=10_000_000)
    resolve_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0, le=2**34)
    resolve_cache_redis_ttl_seconds: float = Field(default=7 * 86400.0, gt=0, le=90 * 86400)
    # A base64 32-byte key that encrypts token values in Redis, by reference like passwords.
    token_cache_key_env: str | None = Field(default=None, min_length=1)
    token_cache_key_file: str | None = Field(default=None, min_length=1)
    # Egress and per-upstream bounds (oci/egress.py, oci/http.py).
    egress_allow_cidrs: list[str] = Field(default_factory=list, max_length=256)
    max_in_flight_per_upstream: int = Field(default=100, ge=1, le=10000)
    max_connections_per_upstream: int = Field(default=50, ge=1, le=1000)

    @field_validator("egress_allow_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        parse_allow_cidrs(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_redis_url(value)  # raises ValueError saying what is wrong with it
        return value


class ConfigFile(_Strict):
    upstreams: list[UpstreamEntry] = Field(default_factory=list)
    registries: list[RegistryEntry] = Field(default_factory=list)
    settings: SettingsEntry = Field(default_factory=SettingsEntry)


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a YAML config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    return build_config(data if data is not None else {}, source=source, env=env)


def build_config(
    data: Any, *, source: str = "<memory>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed document (as from YAML) into a Config."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping with 'upstreams' and 'registries'"
        )
    try:
        parsed = ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(source, data, exc)) from None
    environ = os.environ if env is None else env
    settings = _build_settings(parsed.settings, source, environ)
    upstreams: dict[str, Upstream] = {}
    for index, entry in enumerate(parsed.upstreams):
        where = f"{source}: upstreams[{index}] (id {entry.id!r})"
        if entry.id in upstreams:
            raise ConfigError(f"{where}: field 'id': duplicate upstream id")
        upstreams[entry.id] = _build_upstream(entry, where, environ)
    registries: dict[str, Registry] = {}
    for index, reg in enumerate(parsed.registries):
        where = f"{source}: registries[{index}] (id {reg.id!r})"
        if reg.id in registries:
            raise ConfigError(f"{where}: field 'id': duplicate registry id")
        registries[reg.id] = _build_registry(reg, where, upstreams, settings)
    return Config(upstreams=upstreams, registries=registries, settings=settings, source=source)


def _build_settings(entry: SettingsEntry, source: str, env: Mapping[str, str]) -> Settings:
    values = entry.model_dump(exclude_none=True)
    key_env = values.pop("token_cache_key_env", None)
    key_file = values.pop("token_cache_key_file", None)
    values["token_cache_key"] = _cache_key(source, key_env, key_file, env)
    values["egress_allow_cidrs"] = tuple(entry.egress_allow_cidrs)
    return Settings(**values)


def _cache_key(
    source: str, key_env: str | None, key_file: str | None, env: Mapping[str, str]
) -> bytes | None:
    if key_env and key_file:
        raise ConfigError(
            f"{source}: settings: field 'token_cache_key_env': give token_cache_key_env or token_cache_key_file, not both"
        )
    if not key_env and not key_file:
        return None
    field_name = "token_cache_key_env" if key_env else "token_cache_key_file"
    where = f"{source}: settings: field '{field_name}'"
    if key_env:
        text = env.get(key_env)
        if not text:
            raise ConfigError(f"{where}: environment variable {key_env} is not set or empty")
    else:
        assert key_file is not None
        try:
            text = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {key_file}: {exc.strerror}") from None
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"{where}: the key must be 32 random bytes, base64-encoded (openssl rand -base64 32)"
        )
    return key


def _build_upstream(entry: UpstreamEntry, where: str, env: Mapping[str, str]) -> Upstream:
    values = entry.model_dump(exclude={"username", "password_env", "password_file"})
    values["realm_allow_hosts"] = tuple(entry.realm_allow_hosts)
    values["allowed_actions"] = tuple(entry.allowed_actions)
    try:
        return validate_upstream(
            Upstream(**values, credentials=_resolve_credentials(entry, where, env))
        )
    except FieldError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _resolve_credentials(
    entry: UpstreamEntry, where: str, env: Mapping[str, str]
) -> Credentials | None:
    if entry.password_env and entry.password_file:
        raise ConfigError(
            f"{where}: field 'password_env': give password_env or password_file, not both"
        )
    has_password_ref = bool(entry.password_env or entry.password_file)
    if entry.username is None and not has_password_ref:
        return None
    if entry.username is None:
        raise ConfigError(
            f"{where}: field 'username': a password is set but no username (give both or neither)"
        )
    if not has_password_ref:
        raise ConfigError(
            f"{where}: field 'password_env': a username is set but no password_env or password_file (give both or neither)"
        )
    if entry.password_env:
        password = env.get(entry.password_env)
        if not password:
            raise ConfigError(
                f"{where}: field 'password_env': environment variable {entry.password_env} is not set or empty"
            )
    else:
        assert entry.password_file is not None
        try:
            password = Path(entry.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"{where}: field 'password_file': cannot read {entry.password_file}: {exc.strerror}"
            ) from None
        if not password:
            raise ConfigError(f"{where}: field 'password_file': {entry.password_file} is empty")
    try:
        return check_credentials(entry.username, password)
    except FieldError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _build_registry(
    entry: RegistryEntry, where: str, upstreams: Mapping[str, Upstream], settings: Settings
) -> Registry:
    limit = settings.max_upstreams_per_registry
    if len(entry.upstreams) > limit:
        raise ConfigError(
            f"{where}: field 'upstreams': {len(entry.upstreams)} upstreams, at most {limit} allowed"
            " (settings.max_upstreams_per_registry)"
        )
    try:
        validate_registry_fields(entry.id, entry.name, entry.description)
        check_id("group", entry.group)
    except FieldError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    members: list[RegistryUpstream] = []
    seen: set[str] = set()
    for position, upstream_id in enumerate(entry.upstreams, start=1):
        if upstream_id in seen:
            raise ConfigError(
                f"{where}: field 'upstreams': upstream {upstream_id!r} is listed twice"
            )
        seen.add(upstream_id)
        upstream = upstreams.get(upstream_id)
        if upstream is None:
            raise ConfigError(f"{where}: field 'upstreams': unknown upstream {upstream_id!r}")
        if upstream.group != entry.group:
            raise ConfigError(
                f"{where}: field 'upstreams': upstream {upstream_id!r} is in group"
                f" {upstream.group!r}, the registry in group {entry.group!r}; a registry lists"
                " only upstreams of its own group"
            )
        members.append(RegistryUpstream(upstream=upstream, position=position))
    return Registry(
        id=entry.id,
        name=entry.name,
        description=entry.description,
        upstreams=tuple(members),
        group=entry.group,
    )


def _describe_validation_error(source: str, data: Mapping[str, Any], exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = list(err["loc"])
        where = source
        if len(loc) >= 2 and loc[0] in {"upstreams", "registries"} and isinstance(loc[1], int):
            section, index = loc[0], loc[1]
            where += f": {section}[{index}]"
            entries = data.get(section)
            if (
                isinstance(entries, list)
                and index < len(entries)
                and isinstance(entries[index], dict)
            ):
                entry_id = entries[index].get("id")
                if isinstance(entry_id, str):
                    where += f" (id {entry_id!r})"
            loc = loc[2:]
        field_name = ".".join(str(part) for part in loc) or "(entry)"
        lines.append(f"{where}: field '{field_name}': {err['msg']}")
    return "\n".join(lines)
