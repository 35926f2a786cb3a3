"""The resolver: UrlFor, GetAuthHeaders and ResolveUpstream as plain async Python.

Everything the gRPC servicer exposes lives here, so it can be tested and
embedded without gRPC. Inputs are validated first, and every failure is a
VRegistryError that says what to fix.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence

from vregistry_server.errors import (
    ActionNotAllowed,
    CredentialsUnreadable,
    DeadlineExceeded,
    InvalidArgument,
    InvalidPath,
    NotFoundOnUpstreams,
    RegistryHasNoUpstreams,
    RegistryNotFound,
    ResolveDeadlineExceeded,
    ResolveFailed,
    Unavailable,
    UpstreamNotFound,
    UpstreamsUnavailable,
    VRegistryError,
)
from vregistry_server.model import (
    AuthHeaders,
    Config,
    Hit,
    Outcome,
    Registry,
    Resolution,
    Reuse,
    Settings,
    Upstream,
)
from vregistry_server.oci.auth import Authenticator, auth_identity
from vregistry_server.oci.http import Budget, HttpClient, make_client
from vregistry_server.oci.observer import NULL_OBSERVER, Observer
from vregistry_server.oci.paths import (
    PathError,
    RegistryPath,
    check_actions,
    parse_path,
    parse_path_or_repository,
)
from vregistry_server.oci.probe import Prober, _fetch_headers
from vregistry_server.oci.singleflight import JoinTimedOut, SharedCalls
from vregistry_server.oci.token_cache import MemoryTokenCache, RedisTokenCache, TokenCache
from vregistry_server.resolve_cache import (
    CachedAnswer,
    Lookup,
    ResolveCache,
    answer_for_hit,
    answer_for_miss,
    cacheable,
    changed_registries,
)
from vregistry_server.rules import FieldError, check_id

MAX_ID_LENGTH = 256
MAX_ACTIONS = 8


class Resolver:
    def __init__(
        self,
        config: Config,
        cache: TokenCache | None = None,
        client: HttpClient | None = None,
        *,
        observer: Observer = NULL_OBSERVER,
        resolve_cache: ResolveCache | None = None,
    ) -> None:
        settings = config.settings
        self.config = config
        self.observer = observer
        self.cache = cache if cache is not None else _cache_for(settings, observer)
        self.resolve_cache = resolve_cache or ResolveCache(settings, observer=observer)
        self._owns_client = client is None
        self.client = client or make_client(
            connect_timeout=settings.connect_timeout_seconds,
            request_timeout=settings.request_timeout_seconds,
        )
        self.authenticator = Authenticator(self.client, self.cache, settings, observer=observer)
        self.prober = Prober(self.client, self.authenticator, settings, observer=observer)
        # UrlFor's answers depend on the configuration alone: its repeats check this count.
        self.configs_applied = 0
        # Identical misses in flight, keyed by their resolution-cache key.
        self._checks: SharedCalls[Resolution] = SharedCalls(
            on_join=lambda: observer.resolve_check("joined")
        )

    @property
    def changes(self) -> int:
        """Moves whenever something an answer's Reuse (model.py) relies on is replaced or
        dropped: the configuration, a discovered challenge, a token, a cached resolution.
        Read it before asking; an answer holds for a repeat only while it has not moved."""
        return self.configs_applied + self.authenticator.changes + self.resolve_cache.changes

    @property
    def checks_in_flight(self) -> int:
        """ResolveUpstream misses whose check of the upstreams is running (each shared by
        every identical miss that arrived meanwhile)."""
        return len(self._checks)

    def isolated_prober(self) -> tuple[Authenticator, Prober]:
        """A prober with its own auth memory and token cache, sharing only the HTTP client.

        For checks (the admin API's TestUpstream) that must neither read nor fill
        the caches that serve real callers.
        """
        settings = self.config.settings
        authenticator = Authenticator(self.client, MemoryTokenCache(max_entries=64), settings)
        return authenticator, Prober(self.client, authenticator, settings)

    async def apply_config(self, config: Config) -> set[str]:
        """Switch to a new configuration in one step (admin API, live reload).

        The settings stay those the resolver started with. Upstreams whose url,
        credentials, auth options or realm policy changed, or that are gone, start
        over at once: their discovered challenge, token flow, refresh tokens, realm
        address classes and cached tokens are dropped, and their circuit breaker is
        closed (an open circuit of the old url says nothing about the new one). The
        ids of those upstreams are returned. Registries whose members, order or members'
        identities changed, or that are gone, lose their cached answers in process memory
        (their resolution cache keys changed with them, on every replica: resolve_cache.py).
        """
        old = self.config.upstreams
        old_registries = self.config.registries
        # A walk over every upstream and registry: in a worker thread, off the event loop.
        changed, gone = await asyncio.to_thread(
            _changes, old, config.upstreams, old_registries, config.registries
        )
        if self.config.upstreams is not old or self.config.registries is not old_registries:
            # another apply_config ran meanwhile
            changed, gone = _changes(
                self.config.upstreams, config.upstreams, self.config.registries, config.registries
            )
        self.config = dataclasses.replace(config, settings=self.config.settings)
        self.configs_applied += 1
        self.resolve_cache.forget(gone)
        for upstream_id in changed:
            self.prober.breaker.forget(upstream_id)
        # One batched token delete for all of them (a hung Redis costs one timeout).
        await self.authenticator.invalidate(*changed)
        return changed

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()
        await self.cache.aclose()
        await self.resolve_cache.aclose()

    def _budget(self, caller_remaining: float | None) -> Budget:
        if caller_remaining is not None and caller_remaining <= 0:
            raise DeadlineExceeded(
                "the caller's deadline had passed before the request was handled"
            )
        return Budget.start(self.config.settings.request_timeout_seconds, caller_remaining)

    # ------------------------------------------------------------------ lookups

    def upstream(self, upstream_id: str) -> Upstream:
        _check_id("upstream_id", upstream_id)
        upstream = self.config.upstreams.get(upstream_id)
        if upstream is None:
            raise UpstreamNotFound(
                f"no upstream with id {upstream_id!r} is configured",
                metadata={"upstream_id": upstream_id},
            )
        return upstream

    def registry(self, registry_id: str) -> Registry:
        _check_id("registry_id", registry_id)
        registry = self.config.registries.get(registry_id)
        if registry is None:
            raise RegistryNotFound(
                f"no registry with id {registry_id!r} is configured",
                metadata={"registry_id": registry_id},
            )
        return registry

    # ------------------------------------------------------------------ the three questions

    def url_for(self, upstream_id: str, path: str) -> str:
        upstream = self.upstream(upstream_id)
        return upstream.url_for(_parse(path, parse_path).api_path)

    async def get_auth_headers(
        self,
        upstream_id: str,
        path: str,
        actions: Sequence[str] = (),
        *,
        caller_remaining: float | None = None,
    ) -> AuthHeaders:
        upstream = self.upstream(upstream_id)
        if len(actions) > MAX_ACTIONS:
            raise InvalidArgument(f"at most {MAX_ACTIONS} actions may be requested")
        parsed = _parse(path, parse_path_or_repository)
        try:
            requested = check_actions(actions)
        except PathError as exc:  # an action outside pull/push/delete/*
            raise InvalidArgument(str(exc)) from None
        _check_allowed_actions(upstream, requested)
        ensure_usable(upstream)
        budget = self._budget(caller_remaining)
        try:
            return await self.authenticator.headers_for(upstream, parsed, budget, actions)
        except VRegistryError as exc:
            exc.metadata.setdefault("upstream_id", upstream.id)
            raise _as_deadline(exc, budget) from None

    async def resolve_upstream(
        self,
        registry_id: str,
        path: str,
        *,
        caller_remaining: float | None = None,
        refresh: bool = False,
    ) -> Resolution:
        """The first upstream by position that has the path, remembered in the resolution
        cache; ``refresh`` checks the upstreams even when a cached answer exists."""
        registry = self.registry(registry_id)
        parsed = _parse(path, parse_path)
        if parsed.repository is None:
            raise InvalidPath(
                "ResolveUpstream needs a manifest, blob, tags/list or referrers path, not the API root"
            )
        if not registry.upstreams:
            raise RegistryHasNoUpstreams(
                f"registry {registry.name!r} has no upstreams; add at least one",
                metadata={"registry_id": registry.id},
            )
        for member in registry.upstreams:
            # Skipping it would let a lower-priority upstream answer for its names.
            ensure_usable(member.upstream)
        budget = self._budget(caller_remaining)
        cache = self.resolve_cache
        if not cache.enabled or not cacheable(parsed):
            return await self._check(registry, parsed, budget)
        key = cache.key(registry, parsed)
        found = await cache.get(key, registry.id, immutable=parsed.reference_is_digest)
        if found is not None and not refresh and found.answer.fresh(cache.now()):
            return await self._from_cache(registry, parsed, found.answer, budget, found.layer)
        miss = _Miss(key, registry, parsed, budget, found)
        try:
            if refresh:
                return await self._check_and_remember(miss)
            return await self._shared_check(miss)
        except UpstreamsUnavailable as exc:
            if found is None or not _may_serve_stale(found.answer, exc, cache.now()):
                raise
            try:
                stale = await self._from_cache(registry, parsed, found.answer, budget, stale=True)
            except VRegistryError:
                raise exc from None  # no fresh headers either: the upstreams' outage it is
            cache.served_stale(found.layer)
            return stale

    async def _shared_check(self, miss: _Miss) -> Resolution:
        """The check of a miss, shared by the identical misses that arrive while it runs.

        When a new image is pulled across a fleet, its manifest and layers are asked for
        by many nodes at once; each would otherwise ask every upstream (distribution's
        pull-through proxy collapses its concurrent blob fetches alike). The first caller
        checks on its own budget, as if alone; callers that join wait no longer than their
        own deadline, and check again themselves if the first caller's deadline, not
        theirs, ended the check. A refresh never joins: it asks for a check made after it.
        """
        try:
            resolution = await self._checks.run(
                miss.key, miss.budget, lambda: self._check_and_remember(miss)
            )
        except JoinTimedOut:
            raise ResolveDeadlineExceeded(
                "the caller's deadline passed while the upstreams were being checked for the"
                " same path (another call's check, which this call waited for)",
                attempts=[],
                metadata={"registry_id": miss.registry.id, "path": miss.parsed.api_path[:200]},
            ) from None
        if resolution.cut_short and not miss.budget.ran_out_for_the_caller():
            # Another caller's deadline ended a higher position's probe: this one has the
            # time to hear that upstream out.
            return await self._check_and_remember(miss)
        return resolution

    async def _check_and_remember(self, miss: _Miss) -> Resolution:
        """Ask the upstreams and remember what they said (a miss only when configured)."""
        cache, settings, registry_id = self.resolve_cache, self.config.settings, miss.registry.id
        try:
            resolution = await self._check(miss.registry, miss.parsed, miss.budget)
        except NotFoundOnUpstreams as exc:
            negative = answer_for_miss(exc.message, exc.attempts, settings, cache.now())
            if negative is not None:
                await cache.put(miss.key, registry_id, negative)
            elif miss.found is not None:
                # Gone upstream (a deleted tag): never to be served again, not even stale.
                await cache.drop(miss.key)
            raise
        except ResolveFailed as exc:
            if miss.found is not None and _answering_upstream_said_gone(miss.found.answer, exc):
                # Its upstream no longer has it, whatever the others' state: not even stale.
                await cache.drop(miss.key)
            raise
        if resolution.cut_short:
            # A lower position answered only because the caller's deadline cut a higher one
            # short: right for this caller, not an answer for everyone.
            return resolution
        answer = answer_for_hit(miss.parsed, resolution, settings, resolution.checked_at)
        if answer is not None:
            await cache.put(miss.key, registry_id, answer)
        elif miss.found is not None:
            # The upstreams answered anew with something that cannot be cached (a redirected
            # manifest, no digest): the older answer is no longer what they say.
            await cache.drop(miss.key)
        return resolution

    async def _check(self, registry: Registry, parsed: RegistryPath, budget: Budget) -> Resolution:
        """Ask the upstreams (no cache)."""
        self.observer.resolve_check("checked")
        checked_at = self.resolve_cache.now()
        try:
            resolution = await self.prober.resolve(registry, parsed, budget)
        except VRegistryError as exc:
            raise _as_deadline(exc, budget) from None
        return dataclasses.replace(resolution, checked_at=checked_at)

    async def _from_cache(
        self,
        registry: Registry,
        parsed: RegistryPath,
        answer: CachedAnswer,
        budget: Budget,
        layer: str = "",
        *,
        stale: bool = False,
    ) -> Resolution:
        """A cached answer with headers fresh from the authenticator (never cached)."""
        if not answer.found:
            raise NotFoundOnUpstreams(
                answer.message,
                attempts=answer.copied_attempts(),
                metadata={"registry_id": registry.id, "path": parsed.api_path[:200]},
            )
        # The key holds the ordered members' identities, so the member is there, unchanged.
        member = next(
            m
            for m in registry.upstreams
            if m.upstream.id == answer.upstream_id and m.position == answer.position
        )
        try:
            auth = await self.authenticator.headers_for(member.upstream, parsed, budget)
        except VRegistryError as exc:
            exc.metadata.setdefault("upstream_id", member.upstream.id)
            raise _as_deadline(exc, budget) from None
        hit = Hit(
            member=member,
            url=answer.url,
            headers=_fetch_headers(parsed, auth),
            digest=answer.digest,
            media_type=answer.media_type,
            size=answer.size,
        )
        return Resolution(
            hit,
            answer.copied_attempts(),
            cache_hit=True,
            stale=stale,
            checked_at=answer.checked_at,
            entry=answer,
            reuse=_answer_reuse(answer, auth, layer) if not stale else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _Miss:
    """A ResolveUpstream call that the resolution cache did not answer."""

    key: str  # the resolution cache's
    registry: Registry
    parsed: RegistryPath
    budget: Budget  # the caller's
    found: Lookup | None  # the expired (or, with refresh, fresh) cached answer, if any


def _answer_reuse(answer: CachedAnswer, auth: AuthHeaders, layer: str) -> Reuse | None:
    """A fresh answer from process memory holds as long as its headers do and, for a tag,
    until its validity ends; one from Redis was just copied into memory (a change), so a
    repeat asks once more and is answered from memory."""
    if layer != "memory" or auth.reuse is None:
        return None
    fresh_until = answer.expires_at if answer.expires_at is not None else float("inf")
    return Reuse(
        auth.reuse.until,
        fresh_until=fresh_until,
        token_layer=auth.reuse.token_layer,
        answer_layer=layer,
    )


def _as_deadline(exc: VRegistryError, budget: Budget) -> VRegistryError:
    """An upstream that "timed out" because the caller's deadline ran out is the caller's
    DEADLINE_EXCEEDED, not our UNAVAILABLE; ResolveUpstream keeps its attempts."""
    if not isinstance(exc, Unavailable) or not budget.ran_out_for_the_caller():
        return exc
    message = f"the caller's deadline passed before the upstreams answered ({exc.message})"
    if isinstance(exc, ResolveFailed):
        return ResolveDeadlineExceeded(message, attempts=exc.attempts, metadata=exc.metadata)
    return DeadlineExceeded(message, metadata=exc.metadata)


def _cache_for(settings: Settings, observer: Observer) -> TokenCache:
    if not settings.redis_url:
        return MemoryTokenCache(observer=observer)
    return RedisTokenCache(
        settings.redis_url,
        ca_file=settings.redis_ca_file,
        socket_timeout=settings.redis_timeout_seconds,
        near_cache_seconds=settings.token_near_cache_seconds,
        encryption_key=settings.token_cache_key,
        observer=observer,
    )


def ensure_usable(upstream: Upstream) -> None:
    """Refuse an upstream whose stored credentials did not open, before any network call:
    sending it anonymously or with anything else would not be what the operator set."""
    if upstream.credentials is not None and upstream.credentials.unreadable:
        raise CredentialsUnreadable(
            f"the stored credentials of upstream {upstream.id!r} do not open (the record was"
            " changed in the store without the key); set its credentials again",
            metadata={"upstream_id": upstream.id},
        )


def _check_allowed_actions(upstream: Upstream, requested: Sequence[str]) -> None:
    """Refuse, before any network call, an action the upstream's allowed_actions does not grant.

    The stored credentials may well be able to push or delete: that is exactly why a
    resolver caller gets a token only for what the operator allowed (default: pull).
    """
    allowed = upstream.allowed_actions
    if "*" in allowed:
        return
    refused = [action for action in requested or ("pull",) if action not in allowed]
    if refused:
        raise ActionNotAllowed(
            f"upstream {upstream.id!r} allows only {', '.join(allowed)}; "
            f"{', '.join(refused)} not allowed (the upstream's allowed_actions)",
            metadata={"upstream_id": upstream.id},
        )


def _check_id(field_name: str, value: str) -> None:
    if not value:
        raise InvalidArgument(f"{field_name} is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field_name} is longer than {MAX_ID_LENGTH} characters")
    # No configured id breaks the id rule (config.py and the admin API check it), so a
    # malformed one is a bad request, answered alike whoever asks and before any lookup.
    try:
        check_id(field_name, value)
    except FieldError as exc:
        raise InvalidArgument(str(exc)) from None


def _parse(path: str, parser: Callable[[str], RegistryPath]) -> RegistryPath:
    try:
        return parser(path)
    except PathError as exc:
        raise InvalidPath(str(exc)) from None


def _answering_upstream_said_gone(answer: CachedAnswer, failure: ResolveFailed) -> bool:
    """Did the upstream that gave this (found) answer now say "not found"?"""
    return answer.found and any(
        a.upstream_id == answer.upstream_id
        and a.position == answer.position
        and a.outcome is Outcome.NOT_FOUND
        for a in failure.attempts
    )


def _may_serve_stale(answer: CachedAnswer, failure: UpstreamsUnavailable, now: float) -> bool:
    """Stale if error: a found answer still within its stale window, whose upstream, and
    every upstream before it, could not say otherwise (unavailable, rate-limited, or still
    without it). An upstream that now refuses the credentials, or the answering upstream
    now saying "not found", is news the caller must get."""
    if not answer.found or not answer.usable(now):
        return False
    down = {Outcome.UNAVAILABLE, Outcome.RATE_LIMITED}
    needed = [a for a in failure.attempts if a.position <= answer.position]
    answering = [a for a in needed if a.upstream_id == answer.upstream_id]
    return (
        bool(answering)
        and all(a.outcome in down for a in answering)
        and all(a.outcome in down or a.outcome is Outcome.NOT_FOUND for a in needed)
    )


def _changes(
    old: Mapping[str, Upstream],
    new: Mapping[str, Upstream],
    old_registries: Mapping[str, Registry],
    new_registries: Mapping[str, Registry],
) -> tuple[set[str], set[str]]:
    """The upstreams whose auth identity changed, and the registries whose answers did."""
    return _changed_upstreams(old, new), changed_registries(old_registries, new_registries)


def _changed_upstreams(old: Mapping[str, Upstream], new: Mapping[str, Upstream]) -> set[str]:
    return {
        upstream_id
        for upstream_id, upstream in old.items()
        if _auth_identity(new.get(upstream_id)) != _auth_identity(upstream)
    }


def _auth_identity(upstream: Upstream | None) -> tuple[object, ...] | None:
    """What an upstream's discovered challenge and tokens depend on (one definition, in oci)."""
    return None if upstream is None else auth_identity(upstream)
