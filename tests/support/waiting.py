"""Waiting in async tests: for a condition to hold, or for the loop to run what was scheduled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(
    predicate: Callable[[], bool], limit: float = 1.0, *, shown: Callable[[], object] | None = None
) -> float:
    """Seconds until ``predicate()`` holds (polled every 5 ms); AssertionError after ``limit``,
    naming ``shown()`` (what was seen instead) when given."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if predicate():
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    if predicate():
        return time.monotonic() - started
    seen = "" if shown is None else f" (seen: {shown()!r})"
    raise AssertionError(f"not seen within {limit}s{seen}")


async def settle(passes: int = 10) -> None:
    """Let the tasks just made or cancelled run up to where they wait."""
    for _ in range(passes):
        await asyncio.sleep(0)
