"""The model: what an upstream, a registry and the service's settings are, and what
the three questions answer. Plain frozen dataclasses, one definition each.

Everything else is derived from these: the YAML loader (config.py) and the admin
records build them, the stores serialise them field by field, and the gRPC faces
map them to messages; tests/unit/test_model_drift.py fails when a field here is
missing from any of those. This module imports nothing from the package.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_MAX_UPSTREAMS_PER_REGISTRY = 20
DEFAULT_MAX_REGISTRIES_PER_GROUP = 20
MAX_CACHE_VALIDITY_HOURS = 24 * 365
# The group of an upstream or registry that does not name one (the YAML file, the seed).
DEFAULT_GROUP = "default"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password; the repr never shows the password.

    The fingerprint is computed once, when the credentials are built (at config
    load, by the admin API, or by a store load in a worker thread, which caches
    it by sealed value), so no request ever pays for the slow hash.

    ``unreadable`` marks stored credentials that did not open (the record was
    changed in the store without the key, or sealed for another url or group): it
    holds the sealed value as stored, so the record can be written back unchanged,
    and there is no username or password. The resolver refuses such an upstream
    (CREDENTIALS_UNREADABLE) before any network call; see ``Credentials.unreadable_as``.
    """

    username: str
    password: str = field(repr=False)
    fingerprint: str = field(default="", repr=False, compare=False)
    unreadable: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.fingerprint and not self.unreadable:
            object.__setattr__(
                self, "fingerprint", credential_fingerprint(self.username, self.password)
            )

    @classmethod
    def unreadable_as(cls, sealed: str) -> Credentials:
        """The marker for a sealed value that does not open."""
        return cls(username="", password="", fingerprint="unreadable", unreadable=sealed)

    def __repr__(self) -> str:
        if self.unreadable:
            return "Credentials(unreadable)"
        return f"Credentials(username={self.username!r}, password='***')"


@functools.lru_cache(maxsize=1024)
def credential_fingerprint(username: str, password: str) -> str:
    """A slow, salted hash of the credentials, for cache keys.

    Cache keys live in Redis where other tools can read them; a plain hash of a
    short password is cheap to reverse, a PBKDF2 one is not. It is the same on
    every replica, so they share tokens; memoised, so a configuration reload
    does not pay for it again.
    """
    salt = b"vregistry-credential-fingerprint-v1:" + username.encode()
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000).hex()[:32]


TokenFlow = Literal["auto", "get", "oauth2"]
UpstreamSource = Literal["operator", "api"]


@dataclass(frozen=True, slots=True)
class Upstream:
    id: str
    name: str
    url: str
    credentials: Credentials | None = None
    description: str = ""
    cache_validity_hours: int = 24
    allow_http: bool = False
    token_flow: TokenFlow = "auto"
    client_id: str = "vregistry"
    # Token realm hosts trusted beyond the upstream's own registrable domain ("*.example.com" allowed).
    realm_allow_hosts: tuple[str, ...] = ()
    # The token actions a caller may ask for with these credentials (pull, push, delete, "*"):
    # the service hands out read access unless the operator grants more.
    allowed_actions: tuple[str, ...] = ("pull",)
    # The tenant it belongs to: callers see only the upstreams of their groups.
    group: str = DEFAULT_GROUP
    # Who wrote the URL, which decides what its connections may reach (oci/egress.py):
    # "operator" (the YAML file) or "api" (created or changed through ConfigService).
    source: UpstreamSource = "operator"

    def url_for(self, api_path: str) -> str:
        return f"{self.url}/v2/{api_path}"


# The defaults of Upstream's optional fields, for the places that fill an upstream from
# partial input (the YAML schema, old stored documents, requests that leave a field unset).
UPSTREAM_DEFAULTS: Mapping[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Upstream) if f.default is not dataclasses.MISSING
}


@dataclass(frozen=True, slots=True)
class RegistryUpstream:
    upstream: Upstream
    position: int


@dataclass(frozen=True, slots=True)
class Registry:
    id: str
    name: str
    description: str
    upstreams: tuple[RegistryUpstream, ...]
    group: str = DEFAULT_GROUP  # its upstreams are all of this group


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    # A CA bundle (PEM) that verifies a rediss:// server, for a private CA (every Redis client).
    redis_ca_file: str | None = None
    # How long one Redis command may take before the caches count Redis as unreachable and
    # serve from process memory (every Redis client of the caches).
    redis_timeout_seconds: float = 0.5
    token_cache_max_ttl_seconds: float = 180.0
    token_near_cache_seconds: float = 5.0
    token_expiry_margin_seconds: float = 10.0
    connect_timeout_seconds: float = 3.0
    request_timeout_seconds: float = 10.0
    probe_concurrency: int = 3
    probe_timeout_seconds: float = 5.0
    probe_retries: int = 2
    retry_backoff_seconds: float = 0.1
    max_retry_after_wait_seconds: float = 1.0
    circuit_failure_threshold: int = 5
    circuit_reset_seconds: float = 30.0
    max_upstreams_per_registry: int = DEFAULT_MAX_UPSTREAMS_PER_REGISTRY
    max_registries_per_group: int = DEFAULT_MAX_REGISTRIES_PER_GROUP  # admin API (ConfigService)
    challenge_cache_seconds: float = 3600.0
    # Egress (oci/egress.py): ranges every upstream, realm and redirect may reach beyond
    # public addresses ("10.0.0.0/8"; metadata addresses only as an exact /32 or /128).
    egress_allow_cidrs: tuple[str, ...] = ()
    # Per upstream: requests in flight (abandoned ones included; more wait within their
    # budget, then UNAVAILABLE) and connections in its own pool.
    max_in_flight_per_upstream: int = 100
    max_connections_per_upstream: int = 50
    shutdown_grace_seconds: float = 10.0
    # The ResolveUpstream resolution cache (resolve_cache.py): misses are remembered only
    # when negative_cache_seconds > 0; an expired tag answer is served stale while every
    # needed upstream is unavailable, for up to stale_if_error_seconds past its validity.
    negative_cache_seconds: float = 0.0
    stale_if_error_seconds: float = 3600.0
    # Process-memory bounds of the resolution cache (LRU; 0 entries: no memory layer), and
    # the Redis TTL of answers valid until a configuration change (refreshed on use).
    resolve_cache_max_entries: int = 50_000
    resolve_cache_max_bytes: int = 64 * 1024 * 1024
    resolve_cache_redis_ttl_seconds: float = 7 * 24 * 3600.0
    # AES-256-GCM key for token values in Redis (None: stored as they are).
    token_cache_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Config:
    upstreams: Mapping[str, Upstream]
    registries: Mapping[str, Registry]
    settings: Settings = field(default_factory=Settings)
    source: str = "<memory>"


# --------------------------------------------------------------------------- answers


class Scheme(enum.Enum):
    NONE = "none"
    BASIC = "basic"
    BEARER = "bearer"


@dataclass(frozen=True, slots=True)
class Reuse:
    """How long an answer holds for the same question asked again, as the in-process
    caches that gave it see it: while ``time.monotonic()`` is before ``until`` (the token
    in this process's memory, the discovered challenge), the resolution cache's clock is
    before ``fresh_until`` (a tag answer's validity), and the resolver's ``changes`` count
    is what it was when the question was asked (nothing the answer came from was dropped
    or replaced since). The gRPC face answers repeats from it (rpc/answer_memo.py) and
    counts the cache layers named here as hits, as asking again would have counted them.
    An answer that needed Redis or an upstream to be sure has none."""

    until: float
    fresh_until: float = float("inf")
    token_layer: str = ""  # the token cache layer that answered ("near", "memory"), if one did
    answer_layer: str = ""  # the resolution cache layer that answered, if one did


@dataclass(frozen=True, slots=True)
class AuthHeaders:
    headers: dict[str, str] = field(repr=False)
    scheme: Scheme
    expires_at: float | None = None  # unix time; None when the headers do not expire
    cache_hit: bool = False
    token_key: str | None = None  # the cache key of the token, to drop it when rejected
    reuse: Reuse | None = field(default=None, compare=False, repr=False)


class Outcome(enum.Enum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    AUTH_FAILED = "auth_failed"
    UNAVAILABLE = "unavailable"
    NOT_CHECKED = "not_checked"
    RATE_LIMITED = "rate_limited"


@dataclass(slots=True)
class Attempt:
    upstream_id: str
    position: int
    outcome: Outcome
    http_status: int = 0
    latency_ms: float = 0.0
    message: str = ""
    retry_after_seconds: int = 0
    reason: str = ""  # the error reason (errors.py) that failed the attempt, if one did
    # The caller's deadline, not the upstream, ended it: no verdict on the upstream (its
    # circuit) and no answer to remember or share (a lower position answered only because
    # this one was not heard out).
    cut_by_deadline: bool = False


@dataclass(frozen=True, slots=True)
class Hit:
    member: RegistryUpstream
    url: str
    headers: dict[str, str] = field(repr=False)
    digest: str
    media_type: str
    size: int  # -1 when the upstream sent no Content-Length


@dataclass(frozen=True, slots=True)
class Resolution:
    hit: Hit
    attempts: list[Attempt]
    cache_hit: bool = False  # answered from the resolution cache (headers fresh regardless)
    stale: bool = False  # an expired cached answer, served because the upstreams were down
    # A higher position's probe was ended by the caller's deadline (Attempt.cut_by_deadline):
    # right for this caller, but neither cached nor given to callers with more time.
    cut_short: bool = False
    checked_at: float = 0.0  # unix time an upstream last confirmed the answer
    # The immutable cache entry it was answered from (resolve_cache.CachedAnswer), or None:
    # an identity the gRPC face memoises the answer's message by (headers never in it).
    entry: object = field(default=None, compare=False, repr=False)
    reuse: Reuse | None = field(default=None, compare=False, repr=False)
