"""GetAuthHeaders: discovery, then Basic or a cached/fetched bearer token.

This is the two-layer OCI auth of the seed. Discovery results are cached per
upstream (one ping per upstream per ``challenge_cache_seconds``, not per call),
tokens per (upstream, realm, service, scope, credentials) in the token cache,
and concurrent misses for one key collapse into one ping and one token request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import httpx

from vregistry_server.errors import (
    CredentialsRejected,
    RealmRefused,
    UpstreamUnreachable,
    VRegistryError,
)
from vregistry_server.model import AuthHeaders, Credentials, Reuse, Scheme, Settings, Upstream
from vregistry_server.oci.basic import basic_authorization
from vregistry_server.oci.http import Budget, HttpClient
from vregistry_server.oci.observer import NULL_OBSERVER, Observer
from vregistry_server.oci.paths import RegistryPath, pull_scope
from vregistry_server.oci.ping import AuthDiscovery, ping
from vregistry_server.oci.realm_policy import AddressGuard
from vregistry_server.oci.retry import RetryPolicy
from vregistry_server.oci.singleflight import SingleFlight
from vregistry_server.oci.token_cache import (
    UNSHARED_CLAIM,
    CachedToken,
    ClaimState,
    FetchClaim,
    TokenCache,
    cache_key,
)
from vregistry_server.oci.token_exchange import TokenExchanger

log = logging.getLogger(__name__)

ANONYMOUS_FINGERPRINT = "anonymous"
MAX_TRACKED_KEYS_PER_UPSTREAM = 1024
# The fleet-wide fetch lease of a token key: short, because a holder that dies leaves
# the others waiting this long; renewed every third of it while the fetch runs.
LEASE_SECONDS = 2.0
# Waiting replicas ask again after 5 ms, doubling up to 100 ms: a quick fetch is seen
# soon after it lands, and a slow one costs each waiting process (one poller per key,
# behind its single-flight) at most ten Redis round trips a second per key.
LEASE_POLL_FIRST_SECONDS = 0.005
LEASE_POLL_MAX_SECONDS = 0.1
T = TypeVar("T")


class Authenticator:
    def __init__(
        self,
        client: HttpClient,
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
        # The tasks keeping this process's fetch leases alive (referenced until done).
        self._renewers: set[asyncio.Task[None]] = set()
        # Per upstream, the cache keys this process stored tokens under (oldest first).
        self._token_keys: dict[str, dict[str, None]] = {}
        # Counts every discovery remembered or forgotten and every token dropped: an answer
        # given again from its Reuse (model.py) holds only while this has not moved.
        self.changes = 0

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
        self.changes += 1

    def forget(self, upstream_id: str) -> None:
        """Drop what we know about an upstream's auth: the next call rediscovers it."""
        self.changes += 1
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
        # Only an answer whose discovery came from this call's own lookup says how long it
        # holds: a caller passing one in (the prober, mid-probe) re-asks anyway.
        discovered_until = 0.0
        if discovery is None:
            discovery = await self.discover(upstream, budget)
            discovered_until = self._discovered_until(upstream, discovery)
        if discovery.scheme is Scheme.NONE:
            return AuthHeaders({}, Scheme.NONE, reuse=_reuse(discovered_until))
        if discovery.scheme is Scheme.BASIC:
            if upstream.credentials is None:
                raise CredentialsRejected(
                    f"upstream {upstream.name!r} requires Basic credentials and none are configured",
                    metadata={"upstream_id": upstream.id},
                )
            return AuthHeaders(
                {"Authorization": basic_authorization(upstream.credentials)},
                Scheme.BASIC,
                reuse=_reuse(discovered_until),
            )
        scope = pull_scope(path, actions)
        scopes = [scope] if scope else []
        return await self._bearer(
            upstream, discovery, scopes, budget, discovered_until, bypass_cache=bypass_cache
        )

    def _discovered_until(self, upstream: Upstream, discovery: AuthDiscovery) -> float:
        known = self._discoveries.get(auth_identity(upstream))
        return known[1] if known is not None and known[0] is discovery else 0.0

    def _token_reuse(self, key: str, token: CachedToken, discovered_until: float) -> Reuse | None:
        """A token from the cache holds while this process's memory keeps it, the challenge
        it was fetched for is still the known one, and it has not expired."""
        held = self._cache.held_locally(key) if discovered_until > 0 else None
        if held is None:
            return None
        layer, held_until = held
        expires = time.monotonic() + (token.expires_at - time.time())
        return Reuse(min(held_until, discovered_until, expires), token_layer=layer)

    async def _bearer(
        self,
        upstream: Upstream,
        discovery: AuthDiscovery,
        scopes: list[str],
        budget: Budget,
        discovered_until: float,
        *,
        bypass_cache: bool,
    ) -> AuthHeaders:
        fingerprint = (
            upstream.credentials.fingerprint if upstream.credentials else ANONYMOUS_FINGERPRINT
        )
        key = cache_key(upstream.id, discovery.realm, discovery.service, tuple(scopes), fingerprint)
        if bypass_cache:
            self.changes += 1
            await self._cache.delete(key)
        else:
            cached = await self._cache.get(key)
            if cached is not None and cached.expires_at > time.time():
                reuse = self._token_reuse(key, cached, discovered_until)
                return _bearer_headers(cached, key, cache_hit=True, reuse=reuse)
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
        """One process's fetch of a token (behind its single-flight), shared with the fleet.

        With Redis, a short lease per key (``claim_fetch``) makes one replica fetch and
        store while the others wait for the value: a cold burst over N replicas costs
        one token request, not N. The holder keeps the lease alive while it fetches; if
        it dies, the lease lapses within LEASE_SECONDS and a waiting replica takes over.
        """
        claim = UNSHARED_CLAIM
        if recheck:
            # A caller whose cache read was in flight while the previous fetch for this
            # key stored its token and finished starts a new flight; the token is in the
            # cache by now, so it must not cost a second token request.
            cached = await self._cache.get(key)
            if cached is not None and cached.expires_at > time.time():
                return cached
            # Then the other replicas: one of them may be fetching this token right now.
            # (A bypass, after the upstream refused a token, fetches without waiting.)
            claim = await self._claim_fetch(key)
            if claim.token is not None:
                return claim.token
        async with self._lease_kept(key, claim):
            return await self._fetch_now(upstream, discovery, scopes, key)

    async def _claim_fetch(self, key: str) -> FetchClaim:
        """This replica's right to fetch the token, or the token another replica fetched.

        While another replica holds the key's lease, ask again with a short back-off
        (never past the lease's own expiry, so a dead holder is replaced at once). The
        wait is bounded by the shared budget; after that, or without a shared cache,
        this replica fetches for itself, as every replica did before leases.
        """
        budget = self._shared_budget()
        pause = LEASE_POLL_FIRST_SECONDS
        waited = False
        while True:
            claim = await self._cache.claim_fetch(key, LEASE_SECONDS)
            if claim.state is not ClaimState.HELD:
                self._observer.token_lease(_lease_outcome(claim.state, waited=waited))
                if claim.token is not None and claim.token.expires_at <= time.time():
                    return UNSHARED_CLAIM  # stored by a replica whose clock runs behind
                return claim
            wait = min(pause, max(claim.held_seconds, 0.001), budget.remaining())
            if wait <= 0:
                self._observer.token_lease("wait_timeout")
                return UNSHARED_CLAIM
            waited = True
            await asyncio.sleep(wait)
            pause = min(pause * 2, LEASE_POLL_MAX_SECONDS)

    @contextlib.asynccontextmanager
    async def _lease_kept(self, key: str, claim: FetchClaim) -> AsyncIterator[None]:
        """Renew an owned lease while the fetch runs; release it after (stored or failed),
        so a failed fetch lets a waiting replica try at once rather than at expiry."""
        if claim.state is not ClaimState.OWNED:
            yield
            return
        done = asyncio.Event()
        renewer = asyncio.create_task(self._renew_lease(key, claim.owner, done))
        self._renewers.add(renewer)
        renewer.add_done_callback(self._renewers.discard)
        try:
            yield
        finally:
            # Never wait for the renewer: a cancellation that lands inside the Redis
            # client may be swallowed there; ``done`` ends its loop in any case, and a
            # late renewal is a no-op (compare-and-expire on the owner).
            done.set()
            renewer.cancel()
            await self._cache.release_fetch(key, claim.owner)

    async def _renew_lease(self, key: str, owner: str, done: asyncio.Event) -> None:
        # Runs until _lease_kept sets ``done``, which the fetch's own budget bounds.
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), LEASE_SECONDS / 3)
            if not done.is_set():
                await self._cache.renew_fetch(key, owner, LEASE_SECONDS)

    async def _fetch_now(
        self, upstream: Upstream, discovery: AuthDiscovery, scopes: list[str], key: str
    ) -> CachedToken:
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


def _lease_outcome(state: ClaimState, *, waited: bool) -> str:
    """``acquired`` (fetch at once), ``taken_over`` (after another holder's lease ended
    without a token), ``shared`` (another replica's token), ``unshared`` (no shared cache)."""
    if state is ClaimState.OWNED:
        return "taken_over" if waited else "acquired"
    if state is ClaimState.CACHED:
        return "shared"
    return "unshared"


def _reuse(discovered_until: float) -> Reuse | None:
    return Reuse(discovered_until) if discovered_until > 0 else None


def _bearer_headers(
    token: CachedToken, key: str, *, cache_hit: bool, reuse: Reuse | None = None
) -> AuthHeaders:
    return AuthHeaders(
        {"Authorization": f"Bearer {token.value}"},
        Scheme.BEARER,
        expires_at=token.expires_at,
        cache_hit=cache_hit,
        token_key=key,
        reuse=reuse,
    )
