"""Auth discovery: ask ``{url}/v2/`` how the upstream wants to be authenticated.

The answer (no auth, Basic, or Bearer with a realm and service) is what the
registry itself advertises; nothing about any registry is hard-coded. The ping
runs under the retry policy (oci/retry.py): one 503 from ``/v2/`` does not fail
it, and a 429 (Docker Hub and GHCR rate-limit ``/v2/`` too) is reported as a rate
limit with its Retry-After, not as an unreachable upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from vregistry_server.errors import (
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnreachable,
)
from vregistry_server.model import Scheme, Upstream
from vregistry_server.oci.challenge import (
    Challenge,
    ChallengeParseError,
    parse_challenges,
    preferred_challenge,
)
from vregistry_server.oci.egress import STRICT_SCOPE, EgressScope
from vregistry_server.oci.http import Budget, HttpClient, Response, send
from vregistry_server.oci.realm_policy import check_realm_host
from vregistry_server.oci.retry import (
    DEFAULT_RETRY_POLICY,
    RATE_LIMITED,
    TEMPORARY_STATUSES,
    RetryPolicy,
    retry_after,
)


@dataclass(frozen=True, slots=True)
class AuthDiscovery:
    """What an upstream's challenge told us; ``challenge`` is None for Scheme.NONE."""

    scheme: Scheme
    challenge: Challenge | None = None

    @property
    def realm(self) -> str:
        return (self.challenge.realm or "") if self.challenge else ""

    @property
    def service(self) -> str:
        return (self.challenge.service or "") if self.challenge else ""


NO_AUTH = AuthDiscovery(Scheme.NONE)


async def ping(
    client: HttpClient,
    upstream: Upstream,
    budget: Budget,
    retry: RetryPolicy = DEFAULT_RETRY_POLICY,
    *,
    scope: EgressScope = STRICT_SCOPE,
) -> AuthDiscovery:
    """GET /v2/ under the upstream's egress scope: the ping and every redirect it follows
    connect only where the scope allows (oci/egress.py)."""
    url = upstream.url_for("")
    response = await retry.run(budget, lambda: send(client, "GET", url, budget=budget, scope=scope))
    if 200 <= response.status < 300:
        return NO_AUTH
    if response.status == 401:
        return discovery_from_response(upstream, response)
    if response.status == RATE_LIMITED:
        raise UpstreamRateLimited(
            f"upstream {upstream.name!r} is rate-limiting {upstream.url}/v2/ (HTTP 429)",
            retry_after_seconds=retry_after(response),
        )
    if response.status in TEMPORARY_STATUSES or response.status >= 500:
        raise UpstreamUnreachable(
            f"upstream {upstream.name!r} answered HTTP {response.status} to {upstream.url}/v2/"
        )
    raise UpstreamProtocolError(
        f"upstream {upstream.name!r} answered HTTP {response.status} to {upstream.url}/v2/;"
        " expected 200 or 401 from a registry API"
    )


def discovery_from_response(upstream: Upstream, response: Response) -> AuthDiscovery:
    """Read the auth scheme from a 401's WWW-Authenticate headers, preferring Bearer."""
    values = response.header_values("www-authenticate")
    if not values:
        raise UpstreamProtocolError(
            f"upstream {upstream.name!r} answered 401 without a WWW-Authenticate challenge"
        )
    try:
        challenges = parse_challenges(values)
    except ChallengeParseError as exc:
        raise UpstreamProtocolError(
            f"upstream {upstream.name!r} sent a malformed WWW-Authenticate challenge: {exc}"
        ) from None
    return discovery_from_challenges(upstream, challenges)


def discovery_from_challenges(upstream: Upstream, challenges: list[Challenge]) -> AuthDiscovery:
    chosen = preferred_challenge(challenges)
    if chosen is None:
        schemes = ", ".join(sorted({c.scheme for c in challenges})) or "none"
        raise UpstreamProtocolError(
            f"upstream {upstream.name!r} offers no supported auth scheme (offered: {schemes}); "
            "supported: Bearer, Basic"
        )
    if chosen.scheme == "bearer":
        _check_realm(upstream, chosen)
        return AuthDiscovery(Scheme.BEARER, chosen)
    return AuthDiscovery(Scheme.BASIC, chosen)


def _check_realm(upstream: Upstream, challenge: Challenge) -> None:
    """The realm receives our credentials: it must be an absolute http(s) URL, never a downgrade."""
    realm = challenge.realm
    if not realm:
        raise UpstreamProtocolError(
            f"upstream {upstream.name!r} sent a Bearer challenge without a realm"
        )
    try:
        url = httpx.URL(realm)
    except httpx.InvalidURL:
        raise UpstreamProtocolError(
            f"upstream {upstream.name!r} sent an invalid realm URL"
        ) from None
    if url.scheme not in {"http", "https"} or not url.host:
        raise UpstreamProtocolError(
            f"upstream {upstream.name!r} sent a realm that is not an absolute http(s) URL"
        )
    if url.scheme == "http" and not (upstream.allow_http and upstream.url.startswith("http://")):
        raise UpstreamProtocolError(
            f"upstream {upstream.name!r} sent a plain-http realm ({url.host}); refusing to send "
            "credentials without TLS (set allow_http only for local registries)"
        )
    check_realm_host(upstream, url)
