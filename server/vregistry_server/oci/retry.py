"""One retry policy for every upstream exchange: probes, discovery pings and token requests.

What is temporary, in one place:

* a connection error or a timeout (``UpstreamUnreachable`` raised by ``http.send``);
* HTTP 408, 500, 502, 503 and 504;
* HTTP 429 whose ``Retry-After`` is no longer than ``max_retry_after_wait_seconds``
  (a longer one is the answer: the caller is told the delay instead of waiting it here).

Before another try we wait the 429's ``Retry-After`` when it sent one, else a
full-jitter exponential backoff (uniform in ``[0, base * 2**retry]``, so the
retries of many replicas hitting one upstream spread out), and never past the
budget: a wait that would leave no time for the next try ends the retries, and
the last answer (or error) is returned as it is.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from vregistry_server.errors import UpstreamRateLimited, UpstreamUnreachable
from vregistry_server.model import Settings
from vregistry_server.oci.http import Budget, Response

TEMPORARY_STATUSES = frozenset({408, 500, 502, 503, 504})
RATE_LIMITED = 429
MAX_RETRY_AFTER_SECONDS = 24 * 3600
# A wait must leave at least this much of the budget for the try after it.
SLEEP_MARGIN_SECONDS = 0.05
_MAX_EXPONENT = 16  # 2**16 times the base: far beyond any budget, and no float overflow

Sleep = Callable[[float], Awaitable[None]]
Exchange = Callable[[], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many tries an exchange gets, how long to back off, how long a 429 may make us wait."""

    attempts: int = 3  # tries in all: the first one and the retries
    backoff_seconds: float = 0.1  # the base of the full-jitter exponential backoff
    max_retry_after_wait_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")
        if self.backoff_seconds < 0 or self.max_retry_after_wait_seconds < 0:
            raise ValueError("retry waits cannot be negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            attempts=settings.probe_retries + 1,
            backoff_seconds=settings.retry_backoff_seconds,
            max_retry_after_wait_seconds=settings.max_retry_after_wait_seconds,
        )

    def backoff(self, retry: int) -> float:
        """Full jitter: a uniform wait in ``[0, base * 2**retry]`` before retry number ``retry + 1``."""
        ceiling = self.backoff_seconds * (2 ** min(max(retry, 0), _MAX_EXPONENT))
        return random.uniform(0, ceiling)

    def is_temporary(self, response: Response) -> bool:
        """May another try of this exchange get a better answer than ``response``?"""
        if response.status == RATE_LIMITED:
            return retry_after(response) <= self.max_retry_after_wait_seconds
        return response.status in TEMPORARY_STATUSES

    def wait_before_retry(self, response: Response, retry: int) -> float | None:
        """Seconds to wait before trying again after ``response``; None when it is the answer."""
        if not self.is_temporary(response):
            return None
        if response.status == RATE_LIMITED:
            delay = retry_after(response)
            if delay:
                return float(delay)
        return self.backoff(retry)

    async def run(
        self, budget: Budget, exchange: Exchange, *, sleep: Sleep = asyncio.sleep
    ) -> Response:
        """Run ``exchange`` until it gives an answer that is not temporary, within the budget.

        Returns the last response (temporary or not) once the tries or the budget run
        out, and re-raises the last ``UpstreamUnreachable`` when the last try failed to
        connect. A rate limit raised by the exchange itself is final, like every other error.
        """
        last = self.attempts - 1
        for retry in range(self.attempts):
            try:
                response = await exchange()
            except UpstreamRateLimited:
                raise
            except UpstreamUnreachable:
                if retry == last or not await _sleep_within(self.backoff(retry), budget, sleep):
                    raise
                continue
            wait = self.wait_before_retry(response, retry)
            if wait is None or retry == last or not await _sleep_within(wait, budget, sleep):
                return response
        raise AssertionError("unreachable: the last try returns or raises")


DEFAULT_RETRY_POLICY = RetryPolicy.from_settings(Settings())


async def _sleep_within(seconds: float, budget: Budget, sleep: Sleep) -> bool:
    """Sleep unless that would leave no time for the next try; False when it did not sleep."""
    if seconds + SLEEP_MARGIN_SECONDS >= budget.remaining():
        return False
    await sleep(seconds)
    return True


def retry_after(response: Response) -> int:
    """The response's ``Retry-After`` in whole seconds (0 when absent or unreadable)."""
    return parse_retry_after(response.headers.get("retry-after", ""))


def parse_retry_after(value: str, *, now: float | None = None) -> int:
    """``Retry-After`` as delay-seconds or an HTTP-date, in whole seconds from ``now``.

    Rounded up, never negative, at most a day; 0 when it cannot be read.
    """
    value = value.strip()
    if not value:
        return 0
    if value.isdigit():
        return min(int(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return 0
    if when.tzinfo is None:  # "-0000": an HTTP-date is in GMT all the same
        when = when.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    seconds = int(when.timestamp() - current + 0.999)
    return max(0, min(seconds, MAX_RETRY_AFTER_SECONDS))
