"""GetAuthHeaders: discovery, then Basic or a cached/fetched bearer token.

This is the two-layer OCI auth of the seed. Discovery results are cached per
upstream (one ping per upstream per ``challenge_cache_seconds``, not per call),
tokens per (upstream, realm, service, scope, credentials) in the token cache,
and concurrent misses for one key collapse into one ping and one token request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import httpx

from vregistry_server.errors import (
    CredentialsRejected,
    RealmRefused,
    UpstreamUnreachable,
    VRegistryError,
)
from vregistry_server.model import AuthHeaders, Credentials, Scheme, Settings, Upstream
from vregistry_server.oci.basic import basic_authorization
from vregistry_server.oci.http import Budget
from vregistry_server.oci.observer import NULL_OBSERVER, Observer
from vregistry_server.oci.paths import RegistryPath, pull_scope
from vregistry_server.oci.ping import AuthDiscovery, ping
from vregistry_server.oci.realm_policy import AddressGuard
from vregistry_server.oci.retry import RetryPolicy
from vregistry_server.oci.singleflight import SingleFlight
from vregistry_server.oci.token_cache import CachedToken, TokenCache, cache_key
from vregistry_server.oci.token_exchange import TokenExchanger

log = logging.getLogger(__name__)

ANONYMOUS_FINGERPRINT = "anonymous"
MAX_TRACKED_KEYS_PER_UPSTREAM = 1024
T = TypeVar("T")


class Authenticator:
    def __init__(
        self,
        client: httpx.AsyncClient,
        cache: TokenCache,
        settings: Settings,
        *,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self._client = client
        self._cache = cache
        self._settings = settings
        self._observer = observer
        self._retry = RetryPolicy.from_settings(settings)
        # The egress rule of every upstream (oci/egress.py), shared by ping, token and probe.
        self.guard = AddressGuard(settings=settings)
        self._exchanger = TokenExchanger(client, self.guard, observer=observer, retry=self._retry)
        # Keyed by the upstream's auth identity, not its id: a ping in flight while the
        # url or credentials change is stored for the old identity, never for the new one.
        self._discoveries: dict[AuthIdentity, tuple[AuthDiscovery, float]] = {}
        self._discovery_flight: SingleFlight[AuthDiscovery] = SingleFlight()
        self._token_flight: SingleFlight[CachedToken] = SingleFlight()
        # Per upstream, the cache keys this process stored tokens under (oldest first).
        self._token_keys: dict[str, dict[str, None]] = {}

    # ------------------------------------------------------------------ discovery

    async def discover(self, upstream: Upstream, budget: Budget) -> AuthDiscovery:
        identity = auth_identity(upstream)
        cached = self._discoveries.get(identity)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        return await self._wait(
            self._discovery_flight.run(
                _flight_key(identity), lambda: self._ping_and_remember(upstream)
            ),
            budget,
        )

    async def _ping_and_remember(self, upstream: Upstream) -> AuthDiscovery:
        try:
            scope = await self.guard.scope_for(upstream)
            discovery = await ping(
                self._client, upstream, self._shared_budget(), self._retry, scope=scope
            )
        except VRegistryError as exc:
            self._observer.ping(upstream.id, exc.reason.lower())
            if isinstance(exc, RealmRefused):
                self._observer.realm_refusal(upstream.id, exc.rule)
            raise
        self._observer.ping(upstream.id, discovery.scheme.value)
        self.remember(upstream, discovery)
        log.info(
            "discovered auth scheme",
            extra={
                "upstream": upstream.name,
                "upstream_id": upstream.id,
                "scheme": discovery.scheme.value,
                "realm_host": httpx.URL(discovery.realm).host if discovery.realm else "",
                "service": discovery.service,
            },
        )
        return discovery

    def remember(self, upstream: Upstream, discovery: AuthDiscovery) -> None:
        valid_until = time.monotonic() + self._settings.challenge_cache_seconds
        self._discoveries[auth_identity(upstream)] = (discovery, valid_until)

    def forget(self, upstream_id: str) -> None:
        """Drop what we know about an upstream's auth: the next call rediscovers it."""
        for identity in [i for i in self._discoveries if i[0] == upstream_id]:
            del self._discoveries[identity]
        self._exchanger.forget(upstream_id)

    async def invalidate(self, *upstream_ids: str) -> None:
        """Forget the upstreams' challenges and flows, and delete the tokens we cached for them.

        Cache keys are one-way hashes, so the keys this process stored are remembered
        per upstream; every replica applies a configuration change, so together they
        drop every copy (also from Redis) at once. All keys go in one batched delete:
        this runs inside the admin apply lock, and a Redis that hangs must cost it one
        socket timeout at most, not one per key.
        """
        keys: dict[str, None] = {}
        for upstream_id in upstream_ids:
            self.forget(upstream_id)
            keys.update(self._token_keys.pop(upstream_id, {}))
        if keys:
            await self._cache.delete_many(keys.keys())

    # ------------------------------------------------------------------ headers

    async def headers_for(
        self,
        upstream: Upstream,
        path: RegistryPath,
        budget: Budget,
        actions: Sequence[str] = (),
        *,
        discovery: AuthDiscovery | None = None,
        bypass_cache: bool = False,
    ) -> AuthHeaders:
        if discovery is None:
            discovery = await self.discover(upstream, budget)
        if discovery.scheme is Scheme.NONE:
            return AuthHeaders({}, Scheme.NONE)
        if discovery.scheme is Scheme.BASIC:
            if upstream.credentials is None:
                raise CredentialsRejected(
                    f"upstream {upstream.name!r} requires Basic credentials and none are configured",
                    metadata={"upstream_id": upstream.id},
                )
            return AuthHeaders(
                {"Authorization": basic_authorization(upstream.credentials)}, Scheme.BASIC
            )
        scope = pull_scope(path, actions)
        scopes = [scope] if scope else []
        return await self._bearer(upstream, discovery, scopes, budget, bypass_cache=bypass_cache)

    async def _bearer(
        self,
        upstream: Upstream,
        discovery: AuthDiscovery,
        scopes: list[str],
        budget: Budget,
        *,
        bypass_cache: bool,
    ) -> AuthHeaders:
        fingerprint = (
            upstream.credentials.fingerprint if upstream.credentials else ANONYMOUS_FINGERPRINT
        )
        key = cache_key(upstream.id, discovery.realm, discovery.service, tuple(scopes), fingerprint)
        if bypass_cache:
            await self._cache.delete(key)
        else:
            cached = await self._cache.get(key)
            if cached is not None and cached.expires_at > time.time():
                return _bearer_headers(cached, key, cache_hit=True)
        token = await self._wait(
            self._token_flight.run(
                key,
                lambda: self._fetch_and_store(
                    upstream, discovery, scopes, key, recheck=not bypass_cache
                ),
            ),
            budget,
        )
        return _bearer_headers(token, key, cache_hit=False)

    async def _fetch_and_store(
        self,
        upstream: Upstream,
        discovery: AuthDiscovery,
        scopes: list[str],
        key: str,
        *,
        recheck: bool = True,
    ) -> CachedToken:
        if recheck:
            # A caller whose cache read was in flight while the previous fetch for this
            # key stored its token and finished starts a new flight; the token is in the
            # cache by now, so it must not cost a second token request.
            cached = await self._cache.get(key)
            if cached is not None and cached.expires_at > time.time():
                return cached
        token = await self._exchanger.fetch(upstream, discovery, scopes, self._shared_budget())
        cached = CachedToken(value=token.value, expires_at=token.expires_at)
        ttl = min(
            token.expires_at - time.time() - self._settings.token_expiry_margin_seconds,
            self._settings.token_cache_max_ttl_seconds,
        )
        await self._cache.set(key, cached, ttl)
        self._remember_key(upstream.id, key)
        log.info(
            "fetched bearer token",
            extra={
                "upstream": upstream.name,
                "upstream_id": upstream.id,
                "scope": " ".join(scopes),
                "expires_in_s": round(token.expires_at - time.time(), 1),
                "cache_ttl_s": round(max(ttl, 0.0), 1),
            },
        )
        return cached

    def _remember_key(self, upstream_id: str, key: str) -> None:
        keys = self._token_keys.setdefault(upstream_id, {})
        keys[key] = None
        if len(keys) > MAX_TRACKED_KEYS_PER_UPSTREAM:
            del keys[next(iter(keys))]

    def _shared_budget(self) -> Budget:
        # A shared fetch serves many callers: it runs on the configured budget,
        # and each caller waits on it no longer than its own deadline.
        return Budget.start(self._settings.request_timeout_seconds)

    @staticmethod
    async def _wait(awaitable: Awaitable[T], budget: Budget) -> T:
        try:
            async with budget.timeout():
                return await awaitable
        except TimeoutError:
            raise UpstreamUnreachable("timed out waiting for the upstream's auth") from None


AuthIdentity = tuple[object, ...]


def auth_identity(upstream: Upstream) -> AuthIdentity:
    """What an upstream's discovered challenge and tokens depend on (its id first)."""
    return (
        upstream.id,
        upstream.source,
        upstream.url,
        upstream.credentials,
        upstream.allow_http,
        upstream.token_flow,
        upstream.client_id,
        upstream.realm_allow_hosts,
    )


def _flight_key(identity: AuthIdentity) -> str:
    # SingleFlight keys are strings; the repr of Credentials never shows the password,
    # so the fingerprint stands for the credentials.
    parts = [p.fingerprint if isinstance(p, Credentials) else repr(p) for p in identity]
    return "\x1f".join(parts)


def _bearer_headers(token: CachedToken, key: str, *, cache_hit: bool) -> AuthHeaders:
    return AuthHeaders(
        {"Authorization": f"Bearer {token.value}"},
        Scheme.BEARER,
        expires_at=token.expires_at,
        cache_hit=cache_hit,
        token_key=key,
    )
