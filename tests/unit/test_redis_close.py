"""Closing a Redis client (config store, token cache, resolution cache) is bounded:
redis-py can wait for ever for a socket to finish closing (redis/redis-py#3941), which hung
a test's teardown once for 120 s in CI."""

from __future__ import annotations

import asyncio
import time

import pytest

from vregistry_server import redis_topology


class _Connection:
    def __init__(self) -> None:
        self.dropped: list[bool] = []

    async def disconnect(self, nowait: bool = False) -> None:
        self.dropped.append(nowait)


async def test_a_close_that_never_ends_is_cut_at_the_bound_and_its_connection_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_topology, "CLOSE_SECONDS", 0.2)
    connection = _Connection()
    started = time.monotonic()
    await redis_topology.close_bounded(asyncio.Event().wait(), "test", lambda: connection)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0
    assert connection.dropped == [True]


async def test_a_close_that_ends_or_fails_is_left_alone() -> None:
    connection = _Connection()

    async def fails() -> None:
        raise ConnectionResetError("gone")

    await redis_topology.close_bounded(asyncio.sleep(0), "test", lambda: connection)
    await redis_topology.close_bounded(fails(), "test", lambda: connection)
    assert connection.dropped == []
