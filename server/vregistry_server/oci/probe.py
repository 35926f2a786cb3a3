"""ResolveUpstream: which upstream, in position order, has a manifest or blob.

The port of GitLab's CheckUpstreamsService, without its flaw of calling every
failure "not found": each upstream's outcome is kept apart (found, not found,
auth failed, rate limited, unavailable, not checked). Upstreams are probed
concurrently, but the answer is the one sequential checking would give: the
result of position N is only accepted once positions 1..N-1 have answered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

import httpx

from vregistry_server.errors import (
    CredentialsRejected,
    NotFoundOnUpstreams,
    ResolveFailed,
    UpstreamsRefusedCredentials,
    UpstreamsUnavailable,
    UpstreamUnreachable,
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
)
from vregistry_server.oci.auth import Authenticator
from vregistry_server.oci.circuit import CircuitBreaker
from vregistry_server.oci.http import Budget, Response, send
from vregistry_server.oci.observer import NULL_OBSERVER, Observer
from vregistry_server.oci.paths import Endpoint, RegistryPath
from vregistry_server.oci.ping import discovery_from_response

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
_STORAGE_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 24 * 3600


class Prober:
    def __init__(
        self,
        client: httpx.AsyncClient,
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
        self.breaker = breaker or CircuitBreaker(
            failure_threshold=settings.circuit_failure_threshold,
            reset_after_seconds=settings.circuit_reset_seconds,
            observer=observer,
        )

    async def resolve(self, registry: Registry, path: RegistryPath, budget: Budget) -> Resolution:
        members = sorted(registry.upstreams, key=lambda m: m.position)
        # Semaphore waiters wake in FIFO order and tasks start in creation
        # order, so lower positions are always probed first.
        gate = asyncio.Semaphore(self._settings.probe_concurrency)

        async def gated(member: RegistryUpstream) -> tuple[Attempt, Hit | None]:
            async with gate:
                return await self.probe(member, path, budget)

        tasks = [asyncio.create_task(gated(member)) for member in members]
        attempts: list[Attempt] = []
        try:
            for index, task in enumerate(tasks):
                attempt, hit = await task
                attempts.append(attempt)
                if hit is not None:
                    attempts += [
                        Attempt(m.upstream.id, m.position, Outcome.NOT_CHECKED)
                        for m in members[index + 1 :]
                    ]
                    return Resolution(hit, attempts)
        finally:
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        raise _failure(registry, path, attempts)

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
        try:
            hit = await self._probe(member, path, probe_budget, attempt)
        except CredentialsRejected as exc:
            attempt.outcome, attempt.message = Outcome.AUTH_FAILED, exc.message
        except VRegistryError as exc:
            attempt.outcome, attempt.message = Outcome.UNAVAILABLE, exc.message
        except TimeoutError:
            attempt.outcome, attempt.message = Outcome.UNAVAILABLE, "timed out"
        except BaseException:
            self.breaker.release(upstream.id)  # cancelled: no verdict on the upstream
            raise
        elapsed = time.perf_counter() - started
        attempt.latency_ms = round(elapsed * 1000, 3)
        if attempt.outcome is Outcome.UNAVAILABLE:
            self.breaker.record_failure(upstream.id)
        else:
            self.breaker.record_success(upstream.id)
        self._observer.probe(upstream.id, attempt.outcome.value, elapsed)
        log.debug(
            "probed upstream",
            extra={
                "upstream": upstream.name,
                "upstream_id": upstream.id,
                "outcome": attempt.outcome.value,
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
        response = await self._check_with_retries(url, headers, budget)
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
                response = await self._check_with_retries(url, headers, budget)
        attempt.http_status = response.status
        return _classify(member, path, url, headers, response, attempt)

    async def _check_with_retries(
        self, url: str, headers: dict[str, str], budget: Budget
    ) -> Response:
        """Retry transient failures (connection errors, 408, 5xx, a short 429) within the budget."""
        retries = self._settings.probe_retries
        for retry in range(retries + 1):
            final = retry == retries
            try:
                response = await self._check(url, headers, budget)
            except UpstreamUnreachable:
                if final or not await _sleep_within(self._backoff(retry), budget):
                    raise
                continue
            wait = self._retry_wait(response, retry)
            if wait is None or final or not await _sleep_within(wait, budget):
                return response
        raise AssertionError("unreachable: the last try returns or raises")

    def _backoff(self, retry: int) -> float:
        # Full jitter: spreads the retries of many replicas hitting one upstream.
        ceiling = self._settings.retry_backoff_seconds * (2**retry)
        return random.uniform(0, ceiling)

    def _retry_wait(self, response: Response, retry: int) -> float | None:
        if response.status == 429:
            retry_after = _retry_after(response)
            if retry_after > self._settings.max_retry_after_wait_seconds:
                return None  # too long to wait inside one call: report it and move on
            return float(retry_after) if retry_after else self._backoff(retry)
        if response.status in _TRANSIENT_STATUSES:
            return self._backoff(retry)
        return None

    async def _check(self, url: str, headers: dict[str, str], budget: Budget) -> Response:
        # Redirects are not followed: a blob's redirect to storage already says "found",
        # and following it would carry Authorization to the storage host.
        response = await send(
            self._client, "HEAD", url, budget=budget, headers=headers, follow_redirects=False
        )
        if response.status == 405:
            response = await send(
                self._client,
                "GET",
                url,
                budget=budget,
                headers=headers,
                read_body=False,
                follow_redirects=False,
            )
        return response


async def _sleep_within(seconds: float, budget: Budget) -> bool:
    """Sleep unless that would leave no time for the next try."""
    if seconds + 0.05 >= budget.remaining():
        return False
    await asyncio.sleep(seconds)
    return True


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
    if status == 200 or (status in _STORAGE_REDIRECTS and path.endpoint is Endpoint.BLOBS):
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
        attempt.retry_after_seconds = _retry_after(response)
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


def _retry_after(response: Response) -> int:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return 0
    if value.isdigit():
        return min(int(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0
    seconds = int(when.timestamp() - time.time() + 0.999)
    return max(0, min(seconds, MAX_RETRY_AFTER_SECONDS))


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
