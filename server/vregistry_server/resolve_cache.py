"""The ResolveUpstream resolution cache: answers remembered in process memory and in Redis.

What is remembered is *where* a manifest or blob is (upstream, position, URL, digest,
media type, size, the attempts of the check, when it was made), never the headers:
those always come fresh from the authenticator and its token cache.

Keys are a hash of the registry's *fingerprint* (its id and its ordered members, each
with its auth identity: id, source, url, credentials fingerprint, auth options, and its
``cache_validity_hours``) and the path. A change of members, order, url, credentials or
auth options therefore makes every old answer unreachable on every replica at once, with
no delete to broadcast; the process-memory entries of a changed registry are also dropped
(``forget``) so they do not hold memory until the LRU pushes them out.

How long an answer lives (``CachedAnswer.expires_at``):

* digest references (``<name>/manifests/sha256:…``, ``<name>/blobs/sha256:…``): until the
  configuration changes; content-addressed, immutable;
* tag references: the answering upstream's ``cache_validity_hours`` (0: never re-check),
  answered with the manifest URL *by digest*, so what the caller fetches is exactly what was
  answered; an expired one stays readable for ``stale_if_error_seconds`` more (stale if error);
* misses (every upstream said not found): ``negative_cache_seconds``, off by default.

Redis is shared by the fleet when ``settings.redis_url`` is set. A Redis error never fails a
call: the cache degrades to process memory and tries Redis again after a short back-off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import operator
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from vregistry_server.model import (
    Attempt,
    Credentials,
    Outcome,
    Registry,
    Resolution,
    Settings,
    Upstream,
)
from vregistry_server.oci.auth import auth_identity
from vregistry_server.oci.observer import NULL_OBSERVER, Observer
from vregistry_server.oci.paths import Endpoint, PathError, RegistryPath, parse_path
from vregistry_server.redis_topology import (
    REDIS_DOWN,
    RedisClient,
    RedisOutage,
    close_bounded,
    connect,
)

log = logging.getLogger(__name__)

KEY_PREFIX = "vregistry:resolve:v1:"
# What an entry costs in process memory beyond its encoded size (the objects around it).
ENTRY_OVERHEAD_BYTES = 512
_CACHEABLE = frozenset({Endpoint.MANIFESTS, Endpoint.BLOBS})

Clock = Callable[[], float]


# Every field of an Attempt, read in one call: a copy made on every cache hit, where
# dataclasses.replace (which inspects the fields each time) cost microseconds per attempt.
_ATTEMPT_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Attempt)))


def _copy_attempt(attempt: Attempt) -> Attempt:
    return Attempt(*_ATTEMPT_FIELDS(attempt))


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One remembered answer: a hit (``found``) or, with a negative cache, a miss."""

    found: bool
    attempts: tuple[Attempt, ...]
    checked_at: float  # unix time an upstream last confirmed it
    expires_at: float | None  # unix time it must be re-checked; None: until a config change
    stale_until: float | None  # unix time it may no longer be served even stale
    upstream_id: str = ""
    position: int = 0
    url: str = ""
    digest: str = ""
    media_type: str = ""
    size: int = -1
    message: str = ""  # a miss: the NOT_FOUND message to answer with

    def fresh(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def usable(self, now: float) -> bool:
        return self.stale_until is None or now < self.stale_until

    def copied_attempts(self) -> list[Attempt]:
        """The attempts as new objects: callers may change theirs, never the cached ones."""
        return [_copy_attempt(a) for a in self.attempts]


_ANSWER_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(CachedAnswer))
_ANSWER_FIELDS = operator.attrgetter(*_ANSWER_FIELD_NAMES)


@dataclass(frozen=True, slots=True)
class Lookup:
    answer: CachedAnswer
    layer: str  # "memory" or "redis": where it was found


def cacheable(path: RegistryPath) -> bool:
    """Manifests and blobs only: a tag list or a referrers list changes with every push."""
    return path.endpoint in _CACHEABLE


def registry_fingerprint(registry: Registry) -> str:
    """What every cached answer of the registry depends on, as a hash (see the module doc)."""
    parts: list[str] = [registry.id]
    for member in sorted(registry.upstreams, key=lambda m: m.position):
        parts.append(str(member.position))
        parts.append(_identity_text(member.upstream))
        parts.append(str(member.upstream.cache_validity_hours))
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()


def _identity_text(upstream: Upstream) -> str:
    # The credentials stand as their (slow, salted) fingerprint, never as themselves.
    return "\x1f".join(
        p.fingerprint if isinstance(p, Credentials) else repr(p) for p in auth_identity(upstream)
    )


def changed_registries(old: Mapping[str, Registry], new: Mapping[str, Registry]) -> set[str]:
    """Registries gone or whose fingerprint changed: their cached answers are obsolete."""
    return {
        registry_id
        for registry_id, registry in old.items()
        if (other := new.get(registry_id)) is None
        or (other is not registry and registry_fingerprint(other) != registry_fingerprint(registry))
    }


# --------------------------------------------------------------------------- building answers


def answer_for_hit(
    path: RegistryPath, resolution: Resolution, settings: Settings, now: float
) -> CachedAnswer | None:
    """What to remember of a found answer, or None when it must not be remembered.

    Blobs: the probe does not follow a blob's redirect (to a CDN or storage host, often a
    signed URL that expires), so the answer's URL is always the upstream's own blob URL,
    and caching it is safe: the caller's fetch meets the redirect, freshly signed, itself.
    A redirected *manifest* answer (registry.k8s.io sends manifests to another registry,
    some registries to signed storage URLs) has its final URL and the headers that work
    there: that URL may expire on terms we cannot see, and serving the upstream's own URL
    instead would hand the caller a redirect and, at another host, a challenge that the
    uncached path answers for it. Such answers are not cached: each call re-checks.
    """
    hit = resolution.hit
    upstream = hit.member.upstream
    if hit.url != upstream.url_for(path.api_path):
        return None
    url = hit.url
    expires_at: float | None = None
    if not path.reference_is_digest:  # a tag: valid for the answering upstream's validity
        by_digest = _by_digest(path, hit.digest)
        if by_digest is None:
            return None  # no usable digest: the answer cannot name exactly what was seen
        url = upstream.url_for(by_digest.api_path)
        if upstream.cache_validity_hours > 0:
            expires_at = now + upstream.cache_validity_hours * 3600.0
    stale_until = None if expires_at is None else expires_at + settings.stale_if_error_seconds
    return CachedAnswer(
        found=True,
        attempts=tuple(_copy_attempt(a) for a in resolution.attempts),
        checked_at=now,
        expires_at=expires_at,
        stale_until=stale_until,
        upstream_id=upstream.id,
        position=hit.member.position,
        url=url,
        digest=hit.digest,
        media_type=hit.media_type,
        size=hit.size,
    )


def answer_for_miss(
    message: str, attempts: Collection[Attempt], settings: Settings, now: float
) -> CachedAnswer | None:
    """A miss to remember (every upstream said not found), when the negative cache is on."""
    if settings.negative_cache_seconds <= 0:
        return None
    expires_at = now + settings.negative_cache_seconds
    return CachedAnswer(
        found=False,
        attempts=tuple(dataclasses.replace(a) for a in attempts),
        checked_at=now,
        expires_at=expires_at,
        stale_until=expires_at,  # a miss is never served stale
        message=message,
    )


def _by_digest(path: RegistryPath, digest: str) -> RegistryPath | None:
    """The same manifest by the digest the upstream reported; None if that is no digest."""
    if not digest:
        return None
    try:
        by_digest = parse_path(f"{path.repository}/manifests/{digest}")
    except PathError:
        return None  # an upstream sent something else in Docker-Content-Digest
    return by_digest if by_digest.reference_is_digest else None


# --------------------------------------------------------------------------- encoding


def encode(answer: CachedAnswer) -> str:
    # The fields by name, in order, as dataclasses.asdict gives them (all plain values but
    # the attempts, replaced below); asdict would first deep-copy the attempts for nothing.
    data = dict(zip(_ANSWER_FIELD_NAMES, _ANSWER_FIELDS(answer), strict=True))
    data["attempts"] = [
        [a.upstream_id, a.position, a.outcome.value, a.http_status, a.latency_ms, a.message,
         a.retry_after_seconds, a.reason]
        for a in answer.attempts
    ]  # fmt: skip
    return json.dumps(data, separators=(",", ":"))


def decode(raw: bytes | str) -> CachedAnswer | None:
    """An answer from its encoding; None (a miss, never an error) when it cannot be read."""
    try:
        data: dict[str, Any] = json.loads(raw)
        data["attempts"] = tuple(
            Attempt(str(a[0]), int(a[1]), Outcome(a[2]), int(a[3]), float(a[4]), str(a[5]),
                    int(a[6]), str(a[7]))
            for a in data["attempts"]
        )  # fmt: skip
        return CachedAnswer(**data)
    except (ValueError, KeyError, TypeError, IndexError):
        return None


# --------------------------------------------------------------------------- process memory


class MemoryLayer:
    """An LRU bounded by entries and by bytes (the encoded size plus a fixed overhead)."""

    def __init__(self, max_entries: int, max_bytes: int, clock: Clock) -> None:
        self._entries: OrderedDict[str, tuple[CachedAnswer, str, int]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self.bytes = 0
        # Counts every entry stored, dropped or pushed out (not one merely read): an answer
        # given again from its Reuse (model.py) holds only while this has not moved.
        self.changes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry[0].usable(self._clock()):
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, registry_id: str, answer: CachedAnswer, encoded_size: int) -> None:
        size = encoded_size + ENTRY_OVERHEAD_BYTES
        self._remove(key)  # even when the new one cannot be kept: the old one is outdated
        if self._max_entries <= 0 or size > self._max_bytes:
            return
        self._entries[key] = (answer, registry_id, size)
        self.bytes += size
        self.changes += 1
        while len(self._entries) > self._max_entries or self.bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)

    def forget(self, registry_ids: Collection[str]) -> int:
        """Drop the entries of these registries; returns how many went."""
        if not registry_ids:
            return 0
        doomed = [key for key, entry in self._entries.items() if entry[1] in registry_ids]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self.changes += 1

    def remove(self, key: str) -> None:
        self._remove(key)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]
            self.changes += 1


# --------------------------------------------------------------------------- the cache


class ResolveCache:
    """Process memory in front of Redis (when configured); see the module doc."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = time.time,
        observer: Observer = NULL_OBSERVER,
        redis: RedisClient | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._observer = observer
        self.memory = MemoryLayer(
            settings.resolve_cache_max_entries, settings.resolve_cache_max_bytes, clock
        )
        if redis is None and settings.redis_url:
            redis = connect(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_seconds,
                ca_file=settings.redis_ca_file,
            )
        self._redis = redis
        # The back-off is real (monotonic) time, whatever the injected clock says.
        self._outage = RedisOutage(redis, "resolution cache", log) if redis is not None else None
        # Registry fingerprints, kept with the Registry object they were computed from:
        # the hot path pays an identity check, not a hash over every member.
        self._fingerprints: dict[str, tuple[Registry, str]] = {}

    @property
    def enabled(self) -> bool:
        return self._redis is not None or self._settings.resolve_cache_max_entries > 0

    def now(self) -> float:
        return self._clock()

    @property
    def changes(self) -> int:
        """How many times an entry in process memory was stored, dropped or pushed out."""
        return self.memory.changes

    def key(self, registry: Registry, path: RegistryPath) -> str:
        known = self._fingerprints.get(registry.id)
        if known is None or known[0] is not registry:
            known = (registry, registry_fingerprint(registry))
            self._fingerprints[registry.id] = known
        material = f"{known[1]}\x00{path.api_path}"
        return KEY_PREFIX + hashlib.sha256(material.encode()).hexdigest()

    async def get(self, key: str, registry_id: str, *, immutable: bool) -> Lookup | None:
        """The freshest usable answer: memory first, then Redis (shared by the fleet).

        ``immutable`` (a digest reference): the Redis entry's TTL is refreshed on use, so
        an answer in use stays while one nobody asks for ages out.
        """
        now = self._clock()
        answer = self.memory.get(key)
        if answer is not None and answer.fresh(now):
            self._count("memory", answer, now)
            return Lookup(answer, "memory")
        if self._settings.resolve_cache_max_entries > 0:
            self._observer.resolve_cache("memory", "miss" if answer is None else "expired")
        found = Lookup(answer, "memory") if answer is not None else None
        shared = await self._redis_get(key, immutable=immutable)
        if shared is not None and shared.usable(now):
            self._count("redis", shared, now)
            if found is None or shared.checked_at > found.answer.checked_at:
                # Another replica checked it more recently: keep that one here too.
                self.memory.put(key, registry_id, shared, len(encode(shared)))
                found = Lookup(shared, "redis")
        elif self._redis is not None and not self._skip_redis():
            self._observer.resolve_cache("redis", "miss")
        return found

    async def put(self, key: str, registry_id: str, answer: CachedAnswer) -> None:
        encoded = encode(answer)
        self.memory.put(key, registry_id, answer, len(encoded))
        ttl = self._redis_ttl(answer)
        if ttl is None or self._redis is None or self._skip_redis():
            return
        await self._drop_stale_connections()
        try:
            await self._redis.set(key, encoded, ex=ttl)
        except REDIS_DOWN as exc:
            self._mark_degraded(exc)
            return
        self._mark_healthy()

    async def drop(self, key: str) -> None:
        """Forget one answer everywhere (the upstreams now say it is not there)."""
        self.memory.remove(key)
        if self._redis is None or self._skip_redis():
            return
        await self._drop_stale_connections()
        try:
            await self._redis.delete(key)
        except REDIS_DOWN as exc:
            self._mark_degraded(exc)
            return
        self._mark_healthy()

    def served_stale(self, layer: str) -> None:
        self._observer.resolve_cache(layer, "stale")

    def forget(self, registry_ids: Collection[str]) -> int:
        """Drop the memory entries of changed registries (Redis needs no delete: their
        keys changed with the fingerprint, and the old entries age out by their TTL)."""
        for registry_id in registry_ids:
            self._fingerprints.pop(registry_id, None)
        return self.memory.forget(registry_ids)

    async def aclose(self) -> None:
        self.memory.clear()
        if self._redis is not None:
            await close_bounded(self._redis.aclose(), "resolution cache")

    # ------------------------------------------------------------------ internals

    def _count(self, layer: str, answer: CachedAnswer, now: float) -> None:
        fresh = "hit" if answer.found else "negative"
        result = fresh if answer.fresh(now) else "expired"
        self._observer.resolve_cache(layer, result)

    def _redis_ttl(self, answer: CachedAnswer) -> int | None:
        """Seconds Redis keeps the entry: long (refreshed on use) for answers valid until a
        configuration change, else until it may no longer be served even stale."""
        if answer.stale_until is None:
            return math.ceil(self._settings.resolve_cache_redis_ttl_seconds)
        ttl = math.ceil(answer.stale_until - self._clock())
        return ttl if ttl > 0 else None

    async def _redis_get(self, key: str, *, immutable: bool) -> CachedAnswer | None:
        if self._redis is None or self._skip_redis():
            return None
        await self._drop_stale_connections()
        try:
            if immutable:
                ttl = math.ceil(self._settings.resolve_cache_redis_ttl_seconds)
                raw = await self._redis.getex(key, ex=ttl)
            else:
                raw = await self._redis.get(key)
        except REDIS_DOWN as exc:
            self._mark_degraded(exc)
            return None
        self._mark_healthy()
        answer = None if raw is None else decode(raw)
        if immutable and answer is not None and answer.stale_until is not None:
            # A miss remembered under a digest key: GETEX just gave it the long TTL of a
            # digest answer; give it back its own (rare: misses are cached only on request).
            await self._expire(key, answer.stale_until)
        return answer

    async def _expire(self, key: str, until: float) -> None:
        assert self._redis is not None
        try:
            await self._redis.expire(key, max(1, math.ceil(until - self._clock())))
        except REDIS_DOWN as exc:
            self._mark_degraded(exc)

    @property
    def degraded(self) -> bool:
        return self._outage is not None and self._outage.degraded

    def _skip_redis(self) -> bool:
        return self._outage is not None and self._outage.skip()

    async def _drop_stale_connections(self) -> None:
        if self._outage is not None:
            await self._outage.before_try()

    def _mark_degraded(self, exc: Exception) -> None:
        self._observer.resolve_cache("redis", "error")
        if self._outage is not None:
            self._outage.failed(exc)

    def _mark_healthy(self) -> None:
        if self._outage is not None:
            self._outage.answered()
