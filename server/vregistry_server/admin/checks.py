"""TestUpstream: ping an upstream, run its token exchange, HEAD a path; store nothing.

The steps are the resolver's own (``Authenticator.discover``,
``Authenticator.headers_for``, ``Prober.probe``) run on an isolated prober, so
a check neither reads nor fills the caches that serve real callers, and a
failing check does not open the upstream's circuit.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from vregistry_server.errors import EgressRefused, InvalidArgument, VRegistryError
from vregistry_server.model import Outcome, RegistryUpstream, Scheme, Upstream
from vregistry_server.oci.http import Budget
from vregistry_server.oci.paths import PathError, parse_path
from vregistry_server.resolver import Resolver

DEFAULT_TEST_PATH = "library/alpine/manifests/latest"


class StepKind(enum.Enum):
    PING = "ping"
    TOKEN_EXCHANGE = "token_exchange"
    HEAD = "head"


class StepOutcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(slots=True)
class Step:
    kind: StepKind
    outcome: StepOutcome
    http_status: int = 0
    latency_ms: float = 0.0
    message: str = ""


@dataclass(slots=True)
class CheckResult:
    steps: list[Step] = field(default_factory=list)
    scheme: str = ""

    @property
    def ok(self) -> bool:
        ran = [s for s in self.steps if s.outcome is not StepOutcome.SKIPPED]
        return bool(ran) and all(s.outcome is StepOutcome.SUCCEEDED for s in ran)


async def check_upstream(resolver: Resolver, upstream: Upstream, path: str) -> CheckResult:
    try:
        parsed = parse_path(path or DEFAULT_TEST_PATH)
    except PathError as exc:
        raise InvalidArgument(f"field 'path': {exc}") from None
    if parsed.repository is None:
        raise InvalidArgument("field 'path': give a manifest or blob path, not the API root")
    authenticator, prober = resolver.isolated_prober()
    budget = Budget.start(resolver.config.settings.request_timeout_seconds)
    result = CheckResult()

    started = time.perf_counter()
    try:
        discovery = await authenticator.discover(upstream, budget)
    except VRegistryError as exc:
        # A refused target was never contacted: only the refusal, no latency (a check must
        # not measure what it may not reach: that would make TestUpstream a scanner).
        latency = 0.0 if isinstance(exc, EgressRefused) else _ms(started)
        result.steps.append(Step(StepKind.PING, StepOutcome.FAILED, 0, latency, exc.message))
        result.steps += [
            Step(StepKind.TOKEN_EXCHANGE, StepOutcome.SKIPPED, message="the ping failed"),
            Step(StepKind.HEAD, StepOutcome.SKIPPED, message="the ping failed"),
        ]
        return result
    result.scheme = discovery.scheme.value
    ping_status = 200 if discovery.scheme is Scheme.NONE else 401
    detail = {
        Scheme.NONE: "no authentication required",
        Scheme.BASIC: "Basic authentication required",
        Scheme.BEARER: f"Bearer token required (service {discovery.service or '-'})",
    }[discovery.scheme]
    result.steps.append(
        Step(StepKind.PING, StepOutcome.SUCCEEDED, ping_status, _ms(started), detail)
    )

    if discovery.scheme is Scheme.BEARER:
        started = time.perf_counter()
        try:
            auth = await authenticator.headers_for(upstream, parsed, budget)
        except VRegistryError as exc:
            latency = 0.0 if isinstance(exc, EgressRefused) else _ms(started)
            result.steps.append(
                Step(StepKind.TOKEN_EXCHANGE, StepOutcome.FAILED, 0, latency, exc.message)
            )
            result.steps.append(
                Step(StepKind.HEAD, StepOutcome.SKIPPED, message="the token exchange failed")
            )
            return result
        lifetime = (auth.expires_at or time.time()) - time.time()
        who = "with the credentials" if upstream.credentials else "anonymously"
        result.steps.append(
            Step(
                StepKind.TOKEN_EXCHANGE,
                StepOutcome.SUCCEEDED,
                200,
                _ms(started),
                f"token for {parsed.repository} obtained {who}, valid {lifetime:.0f}s",
            )
        )
    else:
        reason = (
            "not needed: Basic credentials go with each request"
            if discovery.scheme is Scheme.BASIC
            else "not needed: anonymous access"
        )
        result.steps.append(Step(StepKind.TOKEN_EXCHANGE, StepOutcome.SKIPPED, message=reason))

    attempt, _ = await prober.probe(RegistryUpstream(upstream=upstream, position=1), parsed, budget)
    found = attempt.outcome is Outcome.FOUND
    message = attempt.message or {
        Outcome.FOUND: f"{parsed.api_path} is there",
        Outcome.NOT_FOUND: f"{parsed.api_path} is not there",
    }.get(attempt.outcome, attempt.outcome.value)
    result.steps.append(
        Step(
            StepKind.HEAD,
            StepOutcome.SUCCEEDED if found else StepOutcome.FAILED,
            attempt.http_status,
            attempt.latency_ms,
            message,
        )
    )
    return result


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
