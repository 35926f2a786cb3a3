"""ResolveUpstream: which upstream, in position order, has a manifest or blob.

The port of GitLab's CheckUpstreamsService, without its flaw of calling every
failure "not found": each upstream's outcome is kept apart (found, not found,
auth failed, rate limited, unavailable, not checked). Upstreams are probed
concurrently, but the answer is the one sequential checking would give: the
result of position N is only accepted once positions 1..N-1 have answered.

Each request runs under the retry policy (oci/retry.py). ``tags/list`` is asked
with GET (the spec defines no HEAD for it), and a HEAD answered 400, 405 or 501
(servers that do not serve HEAD there) is asked again with GET. A manifest's
redirect is followed as containerd does (see ``Prober._follow``); a blob's redirect
to storage already says "found" and is not followed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence

import httpx

from vregistry_server.errors import (
    CredentialsRejected,
    EgressRefused,
    NotFoundOnUpstreams,
    ResolveFailed,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamsEgressRefused,
    UpstreamsRefusedCredentials,
    UpstreamsUnavailable,
    VRegistryError,
)
from vregistry_server.model import (
    Attempt,
    AuthHeaders,
    Hit,
    Outcome,
    Registry,
    RegistryUpstream,
    Resolution,
    Settings,
    Upstream,
)
from vregistry_server.oci.auth import Authenticator
from vregistry_server.oci.circuit import CircuitBreaker
from vregistry_server.oci.egress import EgressScope
from vregistry_server.oci.http import (
    MAX_REDIRECTS,
    REDIRECT_STATUSES,
    Budget,
    HttpClient,
    Response,
    check_redirect,
    same_host,
    send,
)
from vregistry_server.oci.observer import NULL_OBSERVER, Observer
from vregistry_server.oci.paths import Endpoint, RegistryPath
from vregistry_server.oci.ping import discovery_from_response
from vregistry_server.oci.retry import RetryPolicy, retry_after

log = logging.getLogger(__name__)

# Sent on every manifest probe: distribution answers 404 for an OCI manifest
# when Accept lacks the OCI types, which would read as "not found".
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
# Answers to a HEAD with which a server says "not with HEAD" (go-containerregistry's
# registry answers 400 for HEAD of tags/list, distribution 405): ask again with GET.
_HEAD_REFUSED_STATUSES = frozenset({400, 405, 501})


class Prober:
    def __init__(
        self,
        client: HttpClient,
        authenticator: Authenticator,
        settings: Settings,
        breaker: CircuitBreaker | None = None,
        *,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self._client = client
        self._auth = authenticator
        self._settings = settings
        self._observer = observer
        self._retry = RetryPolicy.from_settings(settings)
        self.breaker = breaker or CircuitBreaker(
            failure_threshold=settings.circuit_failure_threshold,
            reset_after_seconds=settings.circuit_reset_seconds,
            observer=observer,
        )

    async def resolve(self, registry: Registry, path: RegistryPath, budget: Budget) -> Resolution:
        members = sorted(registry.upstreams, key=lambda m: m.position)
        tasks = self._start_probes(members, path, budget)
        attempts: list[Attempt] = []
        try:
            for index, task in enumerate(tasks):
                attempt, hit = await task
                attempts.append(attempt)
                if hit is not None:
                    cut_short = any(a.cut_by_deadline for a in attempts)
                    attempts += [
                        Attempt(m.upstream.id, m.position, Outcome.NOT_CHECKED)
                        for m in members[index + 1 :]
                    ]
                    return Resolution(hit, attempts, cut_short=cut_short)
        finally:
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        raise _failure(registry, path, attempts)

    def _start_probes(
        self, members: list[RegistryUpstream], path: RegistryPath, budget: Budget
    ) -> list[asyncio.Task[tuple[Attempt, Hit | None]]]:
        """One task per member, in position order, at most ``probe_concurrency`` probing."""
        if len(members) <= self._settings.probe_concurrency:
            # Every member fits in the gate (the common case): no gate to pass, one
            # coroutine and one semaphore less per probe.
            return [asyncio.create_task(self.probe(m, path, budget)) for m in members]
        # Semaphore waiters wake in FIFO order and tasks start in creation
        # order, so lower positions are always probed first.
        gate = asyncio.Semaphore(self._settings.probe_concurrency)

        async def gated(member: RegistryUpstream) -> tuple[Attempt, Hit | None]:
            async with gate:
                return await self.probe(member, path, budget)

        return [asyncio.create_task(gated(member)) for member in members]

    async def probe(
        self, member: RegistryUpstream, path: RegistryPath, budget: Budget
    ) -> tuple[Attempt, Hit | None]:
        upstream = member.upstream
        attempt = Attempt(upstream.id, member.position, Outcome.UNAVAILABLE)
        if not self.breaker.allow(upstream.id):
            attempt.message = (
                f"upstream {upstream.name!r} failed repeatedly; its circuit is open, next check "
                f"in {self.breaker.retry_in(upstream.id):.0f}s"
            )
            self._observer.probe(upstream.id, "circuit_open", 0.0)
            return attempt, None
        started = time.perf_counter()
        probe_budget = Budget(
            min(budget.deadline, time.monotonic() + self._settings.probe_timeout_seconds)
        )
        hit: Hit | None = None
        refused = False
        try:
            hit = await self._probe(member, path, probe_budget, attempt)
        except UpstreamRateLimited as exc:  # its /v2/ or its token server answered 429
            attempt.outcome, attempt.message = Outcome.RATE_LIMITED, exc.message
            attempt.reason = exc.reason
            attempt.http_status = exc.http_status
            attempt.retry_after_seconds = exc.retry_after_seconds
        except CredentialsRejected as exc:
            attempt.outcome, attempt.message = Outcome.AUTH_FAILED, exc.message
            attempt.reason = exc.reason
        except EgressRefused as exc:
            # Never contacted: no status and no latency of the refused target are reported.
            attempt.outcome, attempt.message = Outcome.UNAVAILABLE, exc.message
            attempt.reason = exc.reason
            attempt.http_status = 0
            refused = True
        except VRegistryError as exc:
            attempt.outcome, attempt.message = Outcome.UNAVAILABLE, exc.message
            attempt.reason = exc.reason
        except TimeoutError:
            attempt.outcome, attempt.message = Outcome.UNAVAILABLE, "timed out"
        except BaseException:
            self.breaker.release(upstream.id)  # cancelled: no verdict on the upstream
            raise
        elapsed = 0.0 if refused else time.perf_counter() - started
        attempt.latency_ms = round(elapsed * 1000, 3)
        attempt.cut_by_deadline = attempt.outcome is Outcome.UNAVAILABLE and _caller_ended(
            budget, probe_budget
        )
        # Only UNAVAILABLE counts against the circuit: a rate-limited upstream (429 to the
        # probe, to its ping or from its token server) is up and answering, and says when
        # to come back; opening its circuit would only hide that delay. Nor does a probe the
        # caller's deadline ended: impatient callers would open a healthy upstream's circuit.
        if attempt.cut_by_deadline:
            self.breaker.release(upstream.id)
        elif attempt.outcome is Outcome.UNAVAILABLE and not refused:
            self.breaker.record_failure(upstream.id)
        else:
            self.breaker.record_success(upstream.id)
        outcome = attempt.outcome.value
        self._observer.probe(upstream.id, outcome, elapsed)
        if log.isEnabledFor(logging.DEBUG):  # the extra dict is not built for nothing
            log.debug(
                "probed upstream",
                extra={
                    "upstream": upstream.name,
                    "upstream_id": upstream.id,
                    "outcome": outcome,
                    "http_status": attempt.http_status,
                    "latency_ms": attempt.latency_ms,
                },
            )
        return attempt, hit

    async def _probe(
        self, member: RegistryUpstream, path: RegistryPath, budget: Budget, attempt: Attempt
    ) -> Hit | None:
        upstream = member.upstream
        url = upstream.url_for(path.api_path)
        auth = await self._auth.headers_for(upstream, path, budget)
        headers = _fetch_headers(path, auth)
        # Every request of this probe (redirect hops included) under the upstream's egress scope.
        scope = await self._auth.guard.scope_for(upstream)
        response = await self._check(url, path, headers, budget, scope)
        if response.status == 401:
            # The token was revoked or expired early, or this resource asks for
            # another challenge than /v2/ did: re-authenticate once and retry.
            discovery = discovery_from_response(upstream, response)
            if auth.cache_hit or discovery.scheme is not auth.scheme:
                self._auth.remember(upstream, discovery)
                auth = await self._auth.headers_for(
                    upstream, path, budget, discovery=discovery, bypass_cache=True
                )
                headers = _fetch_headers(path, auth)
                response = await self._check(url, path, headers, budget, scope)
        if path.is_manifest and response.status in REDIRECT_STATUSES:
            url, headers, response = await self._follow(
                upstream, path, url, headers, response, budget, scope
            )
        attempt.http_status = response.status
        return _classify(member, path, url, headers, response, attempt)

    async def _follow(
        self,
        upstream: Upstream,
        path: RegistryPath,
        url: str,
        headers: dict[str, str],
        response: Response,
        budget: Budget,
        scope: EgressScope,
    ) -> tuple[str, dict[str, str], Response]:
        """Follow a manifest's redirects as containerd does; returns where it really is.

        At most MAX_REDIRECTS hops, never https to http. Authorization goes to the
        upstream's own host only: at another host (registry.k8s.io sends manifests to
        another registry) the request goes without it, and a 401 with a challenge there
        is answered by authenticating anew at that host, from that 401's challenge, for
        the same scope, anonymously: the upstream's credentials are for the upstream,
        never for another host or its token server. The final URL, and the headers that
        work there, are what the caller gets to fetch the manifest with.
        """
        origin = current = httpx.URL(url)
        plain = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        # The headers each host gets: the upstream's own, or what its own challenge gave.
        per_host: list[tuple[httpx.URL, dict[str, str]]] = [(origin, headers)]
        hops = 0
        while response.status in REDIRECT_STATUSES and (
            location := response.headers.get("location")
        ):
            if hops == MAX_REDIRECTS:
                raise UpstreamProtocolError(
                    f"upstream {upstream.name!r} redirected {path.api_path} more than "
                    f"{MAX_REDIRECTS} times"
                )
            hops += 1
            target = current.join(location)
            check_redirect(current, target)
            current = target
            known = next((h for u, h in per_host if same_host(u, current)), None)
            headers = plain if known is None else known
            response = await self._check(str(current), path, headers, budget, scope)
            if known is None:
                if response.status == 401:
                    elsewhere = _redirect_target_upstream(upstream, current)
                    discovery = discovery_from_response(elsewhere, response)
                    auth = await self._auth.headers_for(
                        elsewhere, path, budget, discovery=discovery
                    )
                    headers = {**plain, **auth.headers}
                    response = await self._check(str(current), path, headers, budget, scope)
                per_host.append((current, headers))
        return str(current), headers, response

    async def _check(
        self,
        url: str,
        path: RegistryPath,
        headers: dict[str, str],
        budget: Budget,
        scope: EgressScope,
    ) -> Response:
        """Ask for the resource once, under the retry policy; no redirect is followed."""
        return await self._retry.run(budget, lambda: self._ask(url, path, headers, budget, scope))

    async def _ask(
        self,
        url: str,
        path: RegistryPath,
        headers: dict[str, str],
        budget: Budget,
        scope: EgressScope,
    ) -> Response:
        # Redirects are not followed here: a blob's redirect to storage already says
        # "found", and following it would carry Authorization to the storage host; a
        # manifest's is followed by _follow, hop by hop.
        if path.endpoint is not Endpoint.TAGS_LIST:
            response = await send(
                self._client,
                "HEAD",
                url,
                budget=budget,
                headers=headers,
                follow_redirects=False,
                scope=scope,
            )
            if response.status not in _HEAD_REFUSED_STATUSES:
                return response
        # GET: a blob's body is never read; any other is read only up to the cap
        # (MAX_BODY_BYTES; a longer tag list is not an error, only not read).
        return await send(
            self._client,
            "GET",
            url,
            budget=budget,
            headers=headers,
            read_body=path.endpoint is not Endpoint.BLOBS,
            discard_oversized_body=True,
            follow_redirects=False,
            scope=scope,
        )


def _caller_ended(budget: Budget, probe_budget: Budget) -> bool:
    """Did the caller's deadline (not the probe timeout) end this probe?"""
    return (
        budget.caller_limited
        and probe_budget.deadline >= budget.deadline
        and probe_budget.remaining() <= 0.001
    )


def _redirect_target_upstream(upstream: Upstream, url: httpx.URL) -> Upstream:
    """The host a manifest was redirected to, as an anonymous upstream of its own.

    Its own id (token cache, flow memory, address class), its own origin (the realm
    policy judges the target's realm against the target, not the upstream), no
    credentials and no realm allow-list: nothing configured for the upstream applies.
    """
    netloc = url.netloc.decode("ascii", "replace")
    return dataclasses.replace(
        upstream,
        id=f"{upstream.id}@{netloc}",
        name=f"{upstream.name} (redirected to {url.host})",
        url=f"{url.scheme}://{netloc}",
        credentials=None,
        token_flow="auto",
        realm_allow_hosts=(),
    )


def _fetch_headers(path: RegistryPath, auth: AuthHeaders) -> dict[str, str]:
    headers = dict(auth.headers)
    if path.is_manifest:
        headers["Accept"] = MANIFEST_ACCEPT
    return headers


def _classify(
    member: RegistryUpstream,
    path: RegistryPath,
    url: str,
    headers: dict[str, str],
    response: Response,
    attempt: Attempt,
) -> Hit | None:
    status = response.status
    upstream = member.upstream
    if status == 200 or (status in REDIRECT_STATUSES and path.endpoint is Endpoint.BLOBS):
        attempt.outcome = Outcome.FOUND
        return Hit(
            member=member,
            url=url,
            headers=headers,
            digest=_digest(path, response),
            media_type=response.headers.get("content-type", "") if status == 200 else "",
            size=_size(response) if status == 200 else -1,
        )
    if status == 404:
        attempt.outcome = Outcome.NOT_FOUND
    elif status in {401, 403}:
        attempt.outcome = Outcome.AUTH_FAILED
        attempt.message = f"upstream {upstream.name!r} refused access (HTTP {status})"
    elif status == 429:
        attempt.outcome = Outcome.RATE_LIMITED
        attempt.retry_after_seconds = retry_after(response)
        attempt.message = f"upstream {upstream.name!r} is rate-limiting (HTTP 429)"
    else:
        attempt.outcome = Outcome.UNAVAILABLE
        attempt.message = f"upstream {upstream.name!r} answered HTTP {status}"
    return None


def _digest(path: RegistryPath, response: Response) -> str:
    header: str = response.headers.get("docker-content-digest", "")
    if header:
        return header
    return path.reference if path.reference_is_digest and path.reference else ""


def _size(response: Response) -> int:
    try:
        size = int(response.headers.get("content-length", "-1"))
    except ValueError:
        return -1
    return size if size >= 0 else -1


def _failure(registry: Registry, path: RegistryPath, attempts: Sequence[Attempt]) -> ResolveFailed:
    """Unavailable beats refused beats not found: a retry may still find it elsewhere."""
    outcomes = {a.outcome for a in attempts}
    summary = "; ".join(
        f"{a.upstream_id}: {a.outcome.value}"
        + (f" (HTTP {a.http_status})" if a.http_status else "")
        for a in attempts
    )
    metadata = {"registry_id": registry.id, "path": path.api_path[:200]}
    served = f"no upstream of registry {registry.name!r} served {path.api_path}"
    checked = [a for a in attempts if a.outcome is not Outcome.NOT_CHECKED]
    if checked and all(a.reason == EgressRefused.reason for a in checked):
        # Nothing was contacted and a retry cannot change that: the operator must act.
        return UpstreamsEgressRefused(
            f"{served}: the egress policy refused every upstream; nothing was sent ({summary})",
            attempts=attempts,
            metadata=metadata,
        )
    if outcomes & {Outcome.UNAVAILABLE, Outcome.RATE_LIMITED}:
        return UpstreamsUnavailable(
            f"{served}, and some could not be checked; retry later ({summary})",
            attempts=attempts,
            metadata=metadata,
        )
    if Outcome.AUTH_FAILED in outcomes:
        return UpstreamsRefusedCredentials(
            f"{served}; some refused the configured credentials ({summary})",
            attempts=attempts,
            metadata=metadata,
        )
    return NotFoundOnUpstreams(
        f"{path.api_path} was not found on any upstream of registry {registry.name!r} ({summary})",
        attempts=attempts,
        metadata=metadata,
    )
