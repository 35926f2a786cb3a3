"""Token exchange: trade credentials (or none) for a short-lived, scoped bearer token.

Two flows exist in the wild. The Docker token GET (``realm?service=&scope=``
with Basic credentials) is what Docker Hub, GHCR, Quay and Harbor speak; the
OAuth2 form POST (``grant_type=password`` or ``refresh_token``) is what Azure's
registry requires. We try the one that worked last time for the upstream, fall
back to the other when a token server refuses a flow, and only call the
credentials rejected when both flows refuse them. Every request runs under the
retry policy (oci/retry.py), so one 503 from a token server does not fail the
call; a 429 is a rate limit (with its Retry-After), never a flow refusal.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx

from vregistry_server.errors import (
    CredentialsRejected,
    RealmRefused,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnreachable,
    VRegistryError,
)
from vregistry_server.model import Credentials, Upstream
from vregistry_server.oci.basic import basic_authorization
from vregistry_server.oci.egress import EgressScope
from vregistry_server.oci.http import Budget, HttpClient, Response, send
from vregistry_server.oci.observer import NULL_OBSERVER, Observer
from vregistry_server.oci.ping import AuthDiscovery
from vregistry_server.oci.realm_policy import AddressGuard, check_realm_host
from vregistry_server.oci.retry import (
    DEFAULT_RETRY_POLICY,
    RATE_LIMITED,
    TEMPORARY_STATUSES,
    RetryPolicy,
    retry_after,
)

# The Docker token spec: expires_in defaults to 60 s and should never be less.
MIN_TOKEN_LIFETIME_SECONDS = 60.0
# An issued_at up to this much before our clock is the token's age in transit: its lifetime
# runs from then. Any other (later than our clock, or older) is the token server's clock
# differing from ours: the lifetime runs from our clock, which is also when the registry, on
# the token server's clock, will see it expire.
MAX_ISSUED_AT_AGE_SECONDS = 30.0
# Statuses with which a token server says "not this flow" rather than "broken".
_FLOW_REFUSED_STATUSES = frozenset({400, 401, 403, 404, 405})

Flow = Literal["get", "oauth2"]


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    expires_at: float  # unix time
    refresh_token: str | None = field(default=None, repr=False)


class _FlowRefused(Exception):
    def __init__(self, flow: Flow, status: int, detail: str) -> None:
        super().__init__(detail)
        self.flow = flow
        self.status = status
        self.detail = detail

    @property
    def is_auth_refusal(self) -> bool:
        return self.status in {401, 403}


class TokenExchanger:
    """Fetches tokens, remembering per upstream which flow works and any refresh token."""

    def __init__(
        self,
        client: HttpClient,
        guard: AddressGuard | None = None,
        *,
        observer: Observer = NULL_OBSERVER,
        retry: RetryPolicy = DEFAULT_RETRY_POLICY,
    ) -> None:
        self._client = client
        self._observer = observer
        self._retry = retry
        self._guard = guard or AddressGuard()
        self._working_flow: dict[str, Flow] = {}
        self._refresh_tokens: dict[tuple[str, str, str, str], str] = {}

    def forget(self, upstream_id: str) -> None:
        """Drop the upstream's working flow, refresh tokens and the realm policy's address cache."""
        self._working_flow.pop(upstream_id, None)
        for key in [k for k in self._refresh_tokens if k[0] == upstream_id]:
            del self._refresh_tokens[key]
        self._guard.forget(upstream_id)

    def flow_for(self, upstream: Upstream) -> Flow:
        if upstream.token_flow != "auto":
            return upstream.token_flow
        if upstream.credentials is None:
            return "get"  # the OAuth2 POST has no anonymous grant
        return self._working_flow.get(upstream.id, "get")

    async def fetch(
        self, upstream: Upstream, discovery: AuthDiscovery, scopes: list[str], budget: Budget
    ) -> Token:
        first = self.flow_for(upstream)
        flows: list[Flow] = [first]
        if upstream.token_flow == "auto" and upstream.credentials is not None:
            flows.append("oauth2" if first == "get" else "get")
        refusals: list[_FlowRefused] = []
        for flow in flows:
            try:
                if flow == "get":
                    token = await self._fetch_get(upstream, discovery, scopes, budget)
                else:
                    token = await self._fetch_oauth2(upstream, discovery, scopes, budget)
            except _FlowRefused as refused:
                self._observer.token_fetch(upstream.id, flow, "refused")
                refusals.append(refused)
                continue
            except VRegistryError as exc:
                self._observer.token_fetch(upstream.id, flow, exc.reason.lower())
                if isinstance(exc, RealmRefused):
                    self._observer.realm_refusal(upstream.id, exc.rule)
                raise
            self._observer.token_fetch(upstream.id, flow, "ok")
            self._working_flow[upstream.id] = flow
            return token
        raise _refusal_error(upstream, scopes, refusals)

    async def _realm_scope(self, upstream: Upstream, discovery: AuthDiscovery) -> EgressScope:
        """Check the realm's addresses; every connection (and redirect hop) runs under the
        upstream's egress scope, and every hop is re-checked against the realm rule."""
        return await self._guard.admit(upstream, httpx.URL(discovery.realm))

    async def _fetch_get(
        self, upstream: Upstream, discovery: AuthDiscovery, scopes: list[str], budget: Budget
    ) -> Token:
        params = [("service", discovery.service)] if discovery.service else []
        params += [("scope", scope) for scope in scopes]
        headers = {"Accept": "application/json"}
        if upstream.credentials is not None:
            headers["Authorization"] = basic_authorization(upstream.credentials)
        scope = await self._realm_scope(upstream, discovery)
        response = await self._retry.run(
            budget,
            lambda: send(
                self._client,
                "GET",
                discovery.realm,
                budget=budget,
                headers=headers,
                params=params,
                scope=scope,
                redirect_check=lambda target: check_realm_host(upstream, target),
            ),
        )
        return _token_from_response("get", upstream, response)

    async def _fetch_oauth2(
        self, upstream: Upstream, discovery: AuthDiscovery, scopes: list[str], budget: Budget
    ) -> Token:
        credentials = upstream.credentials
        if credentials is None:
            raise _FlowRefused("oauth2", 401, "the OAuth2 flow needs credentials")
        refresh_key = (upstream.id, discovery.realm, discovery.service, credentials.fingerprint)
        refresh_token = self._refresh_tokens.get(refresh_key)
        if refresh_token is not None:
            try:
                return await self._post(
                    upstream,
                    discovery,
                    scopes,
                    budget,
                    {"grant_type": "refresh_token", "refresh_token": refresh_token},
                    refresh_key,
                )
            except _FlowRefused:
                # A revoked or expired refresh token: fall back to the password grant once.
                self._refresh_tokens.pop(refresh_key, None)
        return await self._post(
            upstream, discovery, scopes, budget, _password_grant(credentials), refresh_key
        )

    async def _post(
        self,
        upstream: Upstream,
        discovery: AuthDiscovery,
        scopes: list[str],
        budget: Budget,
        grant: dict[str, str],
        refresh_key: tuple[str, str, str, str],
    ) -> Token:
        form = {**grant, "client_id": upstream.client_id, "access_type": "offline"}
        if discovery.service:
            form["service"] = discovery.service
        if scopes:
            form["scope"] = " ".join(scopes)
        scope = await self._realm_scope(upstream, discovery)
        response = await self._retry.run(
            budget,
            lambda: send(
                self._client,
                "POST",
                discovery.realm,
                budget=budget,
                headers={"Accept": "application/json"},
                data=form,
                scope=scope,
                redirect_check=lambda target: check_realm_host(upstream, target),
            ),
        )
        token = _token_from_response("oauth2", upstream, response)
        if token.refresh_token:
            self._refresh_tokens[refresh_key] = token.refresh_token
        return token


def _password_grant(credentials: Credentials) -> dict[str, str]:
    return {
        "grant_type": "password",
        "username": credentials.username,
        "password": credentials.password,
    }


def _token_from_response(flow: Flow, upstream: Upstream, response: Response) -> Token:
    if response.status == RATE_LIMITED:
        raise UpstreamRateLimited(
            f"token server of upstream {upstream.name!r} is rate-limiting (HTTP 429)",
            retry_after_seconds=retry_after(response),
        )
    if response.status in TEMPORARY_STATUSES or response.status >= 500:
        raise UpstreamUnreachable(
            f"token server of upstream {upstream.name!r} answered HTTP {response.status}"
        )
    if response.status in _FLOW_REFUSED_STATUSES:
        raise _FlowRefused(flow, response.status, f"HTTP {response.status}")
    if response.status != 200:
        raise UpstreamProtocolError(
            f"token server of upstream {upstream.name!r} answered HTTP {response.status}"
        )
    payload = _json_object(response.body)
    if payload is None:
        raise _FlowRefused(flow, 200, "a 200 response that is not a JSON object")
    value = payload.get("token") or payload.get("access_token")
    if not isinstance(value, str) or not value:
        raise _FlowRefused(flow, 200, "a JSON response without token or access_token")
    refresh = payload.get("refresh_token")
    return Token(
        value=value,
        expires_at=_expiry(payload),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _expiry(payload: dict[str, Any]) -> float:
    now = time.time()
    expires_in = payload.get("expires_in")
    lifetime = MIN_TOKEN_LIFETIME_SECONDS
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        lifetime = max(float(expires_in), MIN_TOKEN_LIFETIME_SECONDS)
    issued = _parse_issued_at(payload.get("issued_at"))
    start = now
    if issued is not None and 0.0 <= now - issued <= MAX_ISSUED_AT_AGE_SECONDS:
        start = issued  # the token's age in transit
    return start + lifetime


def _parse_issued_at(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _refusal_error(
    upstream: Upstream, scopes: list[str], refusals: list[_FlowRefused]
) -> CredentialsRejected | UpstreamProtocolError:
    tried = "; ".join(f"{r.flow.upper()} flow: {r.detail}" for r in refusals)
    scope_text = " ".join(scopes) or "(no scope)"
    if any(r.is_auth_refusal for r in refusals):
        who = "the configured credentials" if upstream.credentials else "anonymous access"
        hint = "" if upstream.credentials else "; configure a username and password for it"
        return CredentialsRejected(
            f"token server of upstream {upstream.name!r} rejected {who} for {scope_text} ({tried}){hint}",
            metadata={"upstream_id": upstream.id},
        )
    return UpstreamProtocolError(
        f"token server of upstream {upstream.name!r} gave no usable token for {scope_text} ({tried})",
        metadata={"upstream_id": upstream.id},
    )
