"""The one retry policy (oci/retry.py), with the network played by a mock (tests/support/mock_http.py).

Tables: which answers are temporary (and so retried, a bounded number of times), how
Retry-After is read (delay-seconds and HTTP-date), the full-jitter bounds, and the budget
(a wait that would outlast it is not taken). Then the two exchanges that did not retry
before, the discovery ping and the token requests (GET and OAuth2 POST): one 503 no longer
fails them, and a 429 is a rate limit with its delay, never "unreachable" or a flow refusal.
No process, no socket.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import httpx
import pytest
import yarl

from tests.support.mock_http import MockUpstreams, bearer_challenge, fake_resolve, token_response
from vregistry_server.errors import UpstreamRateLimited, UpstreamUnreachable
from vregistry_server.model import Credentials, Scheme, Settings, Upstream
from vregistry_server.oci.http import Budget, HttpClient, Response, make_headers, send
from vregistry_server.oci.ping import AuthDiscovery, ping
from vregistry_server.oci.realm_policy import AddressGuard
from vregistry_server.oci.retry import (
    MAX_RETRY_AFTER_SECONDS,
    SLEEP_MARGIN_SECONDS,
    RetryPolicy,
    parse_retry_after,
)
from vregistry_server.oci.token_exchange import TokenExchanger

HOST = "one.registry.test"
AUTH_HOST = "auth.registry.test"
URL = f"https://{HOST}/v2/library/alpine/manifests/latest"
REALM = f"https://{AUTH_HOST}/token"
# Tiny waits: the tests exercise the policy, not the clock.
FAST = RetryPolicy(attempts=3, backoff_seconds=0.001, max_retry_after_wait_seconds=1.0)


def _response(status: int, **headers: str) -> Response:
    return Response(status, make_headers(headers), b"", yarl.URL(URL))


class Recorder:
    """A sleep that records each wait (and the budget left when it was asked for) instantly."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.waits: list[float] = []
        self.remaining_at_wait: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.remaining_at_wait.append(self.budget.remaining())


def _scripted(statuses: list[int], **headers: str) -> tuple[MockUpstreams, list[int]]:
    """An upstream answering ``statuses`` in turn (the last one for ever after)."""
    served: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        status = statuses[min(len(served), len(statuses) - 1)]
        served.append(status)
        return httpx.Response(status, headers=headers if status == 429 else {})

    return MockUpstreams({HOST: handle}), served


# --------------------------------------------------------------------------- what is temporary


@dataclass(frozen=True)
class StatusCase:
    id: str
    status: int
    temporary: bool
    retry_after: str = ""


STATUS_CASES = [
    StatusCase("200-ok", 200, False),
    StatusCase("307-redirect", 307, False),
    StatusCase("400-bad-request", 400, False),
    StatusCase("401-challenge", 401, False),
    StatusCase("403-denied", 403, False),
    StatusCase("404-missing", 404, False),
    StatusCase("405-method", 405, False),
    StatusCase("408-request-timeout", 408, True),
    StatusCase("429-no-retry-after", 429, True),
    StatusCase("429-short-retry-after", 429, True, "1"),
    StatusCase("429-long-retry-after", 429, False, "2"),
    StatusCase("429-far-http-date", 429, False, "Wed, 21 Oct 2037 07:28:00 GMT"),
    StatusCase("500-internal", 500, True),
    StatusCase("501-not-implemented", 501, False),
    StatusCase("502-bad-gateway", 502, True),
    StatusCase("503-unavailable", 503, True),
    StatusCase("504-gateway-timeout", 504, True),
    StatusCase("505-version", 505, False),
]


@pytest.mark.parametrize("case", STATUS_CASES, ids=[c.id for c in STATUS_CASES])
async def test_which_answers_are_retried(case: StatusCase) -> None:
    headers = {"Retry-After": case.retry_after} if case.retry_after else {}
    assert FAST.is_temporary(_response(case.status, **headers)) is case.temporary
    # The same verdict end to end: a temporary answer costs every attempt, any other one.
    mock, served = _scripted([case.status], **headers)
    budget = Budget.start(5.0)
    sleep = Recorder(budget)
    async with mock.client() as client:
        response = await FAST.run(
            budget, lambda: send(client, "GET", URL, budget=budget), sleep=sleep
        )
    assert response.status == case.status
    assert len(served) == (FAST.attempts if case.temporary else 1)
    assert len(sleep.waits) == len(served) - 1


async def test_a_temporary_answer_then_a_good_one_is_the_good_one() -> None:
    mock, served = _scripted([503, 502, 200])
    budget = Budget.start(5.0)
    async with mock.client() as client:
        response = await FAST.run(budget, lambda: send(client, "GET", URL, budget=budget))
    assert response.status == 200
    assert served == [503, 502, 200]


@pytest.mark.parametrize("attempts", [1, 2, 4])
async def test_connection_errors_are_retried_a_bounded_number_of_times(attempts: int) -> None:
    tries: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        tries.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    policy = RetryPolicy(attempts=attempts, backoff_seconds=0.001)
    budget = Budget.start(5.0)
    async with MockUpstreams({HOST: refuse}).client() as client:
        with pytest.raises(UpstreamUnreachable, match="cannot connect"):
            await policy.run(budget, lambda: send(client, "GET", URL, budget=budget))
    assert len(tries) == attempts


async def test_a_rate_limit_raised_by_the_exchange_is_final() -> None:
    calls = 0

    async def exchange() -> Response:
        nonlocal calls
        calls += 1
        raise UpstreamRateLimited("limited", retry_after_seconds=30)

    with pytest.raises(UpstreamRateLimited):
        await FAST.run(Budget.start(5.0), exchange)
    assert calls == 1


def test_policy_comes_from_the_settings() -> None:
    settings = Settings(probe_retries=4, retry_backoff_seconds=0.2, max_retry_after_wait_seconds=3)
    assert RetryPolicy.from_settings(settings) == RetryPolicy(
        attempts=5, backoff_seconds=0.2, max_retry_after_wait_seconds=3
    )
    assert RetryPolicy.from_settings(Settings(probe_retries=0)).attempts == 1
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# --------------------------------------------------------------------------- Retry-After

NOW = 2_000_000_000.0  # a fixed "now" for HTTP-dates


def _http_date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


RETRY_AFTER_CASES = [
    # value, seconds after NOW at which it is read, expected whole seconds
    pytest.param("", 0.0, 0, id="absent"),
    pytest.param("7", 0.0, 7, id="seconds"),
    pytest.param("  7 ", 0.0, 7, id="seconds-with-spaces"),
    pytest.param("0", 0.0, 0, id="zero"),
    pytest.param("-3", 0.0, 0, id="negative"),
    pytest.param("1.5", 0.0, 0, id="fraction-is-not-delay-seconds"),
    pytest.param("soon", 0.0, 0, id="garbage"),
    pytest.param("99999999999", 0.0, MAX_RETRY_AFTER_SECONDS, id="capped-at-a-day"),
    pytest.param(_http_date(30), 0.0, 30, id="http-date-in-30s"),
    # HTTP-dates have whole seconds: read 0.4 s later, 29.6 s are left, rounded up to 30.
    pytest.param(_http_date(30), 0.4, 30, id="http-date-rounds-up"),
    pytest.param(_http_date(-60), 0.0, 0, id="http-date-in-the-past"),
    pytest.param(_http_date(10 * 86400), 0.0, MAX_RETRY_AFTER_SECONDS, id="http-date-capped"),
    pytest.param(_http_date(45).replace("GMT", "-0000"), 0.0, 45, id="http-date-minus-zero-zone"),
]


@pytest.mark.parametrize(("value", "read_after", "seconds"), RETRY_AFTER_CASES)
def test_retry_after(value: str, read_after: float, seconds: int) -> None:
    assert parse_retry_after(value, now=NOW + read_after) == seconds


async def test_short_retry_after_is_the_wait_and_long_one_is_not_waited() -> None:
    budget = Budget.start(5.0)
    policy = RetryPolicy(attempts=3, backoff_seconds=0.001, max_retry_after_wait_seconds=2.0)
    assert policy.wait_before_retry(_response(429, **{"Retry-After": "2"}), 0) == 2.0
    assert policy.wait_before_retry(_response(429, **{"Retry-After": "3"}), 0) is None
    in_a_second = email.utils.formatdate(time.time() + 1.5, usegmt=True)
    wait = policy.wait_before_retry(_response(429, **{"Retry-After": in_a_second}), 0)
    assert wait is not None and 1.0 <= wait <= 2.0
    # A 429 without Retry-After backs off like a 503.
    no_header = policy.wait_before_retry(_response(429), 0)
    assert no_header is not None and 0 <= no_header <= 0.001
    mock, served = _scripted([429, 200], **{"Retry-After": "2"})
    sleep = Recorder(budget)
    async with mock.client() as client:
        response = await policy.run(
            budget, lambda: send(client, "GET", URL, budget=budget), sleep=sleep
        )
    assert response.status == 200 and sleep.waits == [2.0]
    assert served == [429, 200]


# --------------------------------------------------------------------------- jitter


@pytest.mark.parametrize("retry", [0, 1, 2, 3, 5])
def test_full_jitter_bounds(retry: int) -> None:
    policy = RetryPolicy(backoff_seconds=0.1)
    ceiling = 0.1 * 2**retry
    waits = [policy.backoff(retry) for _ in range(400)]
    assert all(0 <= w <= ceiling for w in waits)
    # Full jitter, not "ceiling plus a little": the waits spread over the whole range.
    assert min(waits) < ceiling * 0.25 and max(waits) > ceiling * 0.75


def test_jitter_draws_from_zero_to_the_exponential_ceiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", uniform)
    policy = RetryPolicy(backoff_seconds=0.25)
    assert [policy.backoff(r) for r in range(4)] == [0.25, 0.5, 1.0, 2.0]
    assert drawn == [(0, 0.25), (0, 0.5), (0, 1.0), (0, 2.0)]
    assert policy.backoff(10_000) == 0.25 * 2**16, "the exponent is capped, never overflows"


# --------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class BudgetCase:
    id: str
    budget_seconds: float
    policy: RetryPolicy
    statuses: list[int]
    retry_after: str
    tries: int


BUDGET_CASES = [
    BudgetCase("backoff-longer-than-budget", 0.3, RetryPolicy(5, 10.0, 1.0), [503], "", 1),
    BudgetCase("retry-after-longer-than-budget", 0.5, RetryPolicy(5, 0.001, 5.0), [429], "1", 1),
    BudgetCase("room-for-every-try", 5.0, RetryPolicy(5, 0.001, 1.0), [503], "", 5),
    BudgetCase("budget-already-spent", 0.0, RetryPolicy(5, 0.001, 1.0), [503], "", 0),
]


@pytest.mark.parametrize("case", BUDGET_CASES, ids=[c.id for c in BUDGET_CASES])
async def test_never_sleeps_past_the_budget(
    case: BudgetCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the longest backoff
    headers = {"Retry-After": case.retry_after} if case.retry_after else {}
    mock, served = _scripted(case.statuses, **headers)
    budget = Budget.start(case.budget_seconds)
    sleep = Recorder(budget)
    async with mock.client() as client:
        try:
            await case.policy.run(
                budget, lambda: send(client, "GET", URL, budget=budget), sleep=sleep
            )
        except UpstreamUnreachable:
            assert case.tries == 0, "only a spent budget fails before any answer"
    assert len(served) == case.tries
    for wait, remaining in zip(sleep.waits, sleep.remaining_at_wait, strict=True):
        assert wait + SLEEP_MARGIN_SECONDS < remaining


SCHEDULING_SLACK_SECONDS = 0.2


async def test_real_waits_end_within_the_budget() -> None:
    """Every try fails: the retries stop in time, they do not run the budget over."""
    mock, served = _scripted([503])
    budget = Budget.start(0.4)
    started = time.monotonic()
    policy = RetryPolicy(attempts=50, backoff_seconds=0.05)
    async with mock.client() as client:
        response = await policy.run(budget, lambda: send(client, "GET", URL, budget=budget))
    assert response.status == 503
    # The decisions are checked exactly above (Recorder); here real sleeps on a shared machine
    # may wake late, so the bound allows the loop's scheduling slack (a policy that ignored
    # the budget would run on for seconds: 50 tries with growing backoffs).
    assert time.monotonic() - started < 0.4 + SLEEP_MARGIN_SECONDS + SCHEDULING_SLACK_SECONDS
    assert 1 < len(served) < 50


# --------------------------------------------------------------------------- discovery ping


def _upstream(credentials: Credentials | None = None) -> Upstream:
    return Upstream(id="one", name="One", url=f"https://{HOST}", credentials=credentials)


async def test_ping_retries_a_503_then_discovers() -> None:
    answers = [httpx.Response(503), httpx.Response(401, headers=bearer_challenge(REALM, "svc"))]
    mock = MockUpstreams({HOST: lambda request: answers.pop(0)})
    async with mock.client() as client:
        discovery = await ping(client, _upstream(), Budget.start(5.0), FAST)
    assert discovery.scheme is Scheme.BEARER and discovery.realm == REALM
    assert [(m, p) for m, _, p in mock.summary()] == [("GET", "/v2/"), ("GET", "/v2/")]


async def test_ping_429_is_a_rate_limit_with_its_delay_not_unreachable() -> None:
    mock = MockUpstreams({HOST: lambda request: httpx.Response(429, headers={"Retry-After": "30"})})
    async with mock.client() as client:
        with pytest.raises(UpstreamRateLimited) as info:
            await ping(client, _upstream(), Budget.start(5.0), FAST)
    assert info.value.retry_after_seconds == 30 and info.value.http_status == 429
    assert info.value.reason == "UPSTREAM_RATE_LIMITED"
    assert len(mock.requests) == 1, "30 s is longer than the longest wait: reported, not waited"


async def test_ping_keeps_failing_is_unreachable_after_the_attempts() -> None:
    mock = MockUpstreams({HOST: lambda request: httpx.Response(503)})
    async with mock.client() as client:
        with pytest.raises(UpstreamUnreachable, match="HTTP 503") as info:
            await ping(client, _upstream(), Budget.start(5.0), FAST)
    assert not isinstance(info.value, UpstreamRateLimited)
    assert len(mock.requests) == FAST.attempts


# --------------------------------------------------------------------------- token exchange

DISCOVERY_CHALLENGE = bearer_challenge(REALM, "svc")["WWW-Authenticate"]


def _exchanger(client: HttpClient) -> TokenExchanger:
    return TokenExchanger(client, AddressGuard(resolve=fake_resolve()), retry=FAST)


def _discovery() -> AuthDiscovery:
    from vregistry_server.oci.challenge import parse_challenges

    (challenge,) = parse_challenges([DISCOVERY_CHALLENGE])
    return AuthDiscovery(Scheme.BEARER, challenge)


@pytest.mark.parametrize(
    ("flow", "method"), [("get", "GET"), ("oauth2", "POST")], ids=["get", "oauth2"]
)
async def test_token_request_retries_a_503(flow: str, method: str) -> None:
    answers = [httpx.Response(503), token_response("tok-after-503")]
    mock = MockUpstreams({AUTH_HOST: lambda request: answers.pop(0)})
    upstream = Upstream(
        id="one",
        name="One",
        url=f"https://{HOST}",
        credentials=Credentials("bob", "pw"),
        token_flow=flow,  # type: ignore[arg-type]
    )
    async with mock.client() as client:
        token = await _exchanger(client).fetch(
            upstream, _discovery(), ["repository:a:pull"], Budget.start(5.0)
        )
    assert token.value == "tok-after-503"
    assert [m for m, _, _ in mock.summary()] == [method, method]


@pytest.mark.parametrize(
    ("flow", "method"),
    [("get", "GET"), ("oauth2", "POST"), ("auto", "GET")],
    ids=["get", "oauth2", "auto"],
)
async def test_token_429_is_a_rate_limit_not_a_flow_refusal(flow: str, method: str) -> None:
    mock = MockUpstreams(
        {AUTH_HOST: lambda request: httpx.Response(429, headers={"Retry-After": "45"})}
    )
    upstream = Upstream(
        id="one",
        name="One",
        url=f"https://{HOST}",
        credentials=Credentials("bob", "pw"),
        token_flow=flow,  # type: ignore[arg-type]
    )
    async with mock.client() as client:
        with pytest.raises(UpstreamRateLimited) as info:
            await _exchanger(client).fetch(
                upstream, _discovery(), ["repository:a:pull"], Budget.start(5.0)
            )
    assert info.value.retry_after_seconds == 45
    assert [m for m, _, _ in mock.summary()] == [method], "no retry, no fallback to the other flow"
