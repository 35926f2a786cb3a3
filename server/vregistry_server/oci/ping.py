"""Auth discovery: ask ``{url}/v2/`` how the upstream wants to be authenticated.

The answer (no auth, Basic, or Bearer with a realm and service) is what the
registry itself advertises; nothing about any registry is hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from vregistry_server.errors import UpstreamProtocolError, UpstreamUnreachable
from vregistry_server.model import Scheme, Upstream
from vregistry_server.oci.challenge import (
    Challenge,
    ChallengeParseError,
    parse_challenges,
    preferred_challenge,
)
from vregistry_server.oci.http import Budget, Response, send
from vregistry_server.oci.realm_policy import check_realm_host


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


async def ping(client: httpx.AsyncClient, upstream: Upstream, budget: Budget) -> AuthDiscovery:
    response = await send(client, "GET", upstream.url_for(""), budget=budget)
    if 200 <= response.status < 300:
        return NO_AUTH
    if response.status == 401:
        return discovery_from_response(upstream, response)
    if response.status == 429 or response.status >= 500:
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
