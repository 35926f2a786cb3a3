"""Collapse concurrent calls for one key into a single call.

``SingleFlight``: when a token expires under load, hundreds of callers miss the
cache at once; without this each would hit the token server. The shared call
runs on its own task with its own time budget, so one impatient caller giving up
(its gRPC deadline passed) does not cancel the fetch for the others.

``SharedCalls``: the same for work that runs on its first caller's budget (a
ResolveUpstream miss checking the upstreams): the others wait under their own
deadlines, and the work stops when nobody waits for it any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vregistry_server.oci.http import Budget

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Task[T]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self._inflight[key] = task
            task.add_done_callback(lambda done: _finished(self._inflight, key, done, done))
        return await asyncio.shield(task)


class JoinTimedOut(TimeoutError):
    """A caller that joined a shared call reached its own deadline first."""


@dataclass(slots=True)
class _Shared(Generic[T]):
    task: asyncio.Task[T]
    budget: Budget  # its first caller's
    waiting: int = 0


class SharedCalls(Generic[T]):
    """One call per key in flight; every caller of the key waits on that one.

    The first caller's ``call`` runs, on that caller's budget, exactly as it would
    alone (what it raises is what that caller gets). A caller that joins waits no
    longer than its own ``budget`` (``JoinTimedOut`` then); when the call failed after
    the first caller's deadline had passed (which may well be why it failed) and the
    joiner still has time, the joiner makes its own call. The call is cancelled once
    nobody waits for it, as a lone caller's work is when that caller goes away.
    """

    def __init__(self, on_join: Callable[[], None] = lambda: None) -> None:
        self._running: dict[str, _Shared[T]] = {}
        self._on_join = on_join  # told of every caller that waits for another's call

    def __len__(self) -> int:
        """The calls in flight."""
        return sum(not shared.task.done() for shared in self._running.values())

    async def run(self, key: str, budget: Budget, call: Callable[[], Awaitable[T]]) -> T:
        shared = self._running.get(key)
        # A call being cancelled (its last waiter left a moment ago) is not joined: it would
        # hand this caller a CancelledError it never asked for.
        if shared is None or shared.task.done() or shared.task.cancelling():
            return await self._wait(self._start(key, budget, call), None)
        self._on_join()
        try:
            return await self._wait(shared, budget)
        except JoinTimedOut:
            raise
        except Exception:
            if not shared.budget.ran_out_for_the_caller() or budget.remaining() <= 0:
                raise
        return await self.run(key, budget, call)

    def _start(self, key: str, budget: Budget, call: Callable[[], Awaitable[T]]) -> _Shared[T]:
        shared = _Shared(asyncio.ensure_future(call()), budget)
        self._running[key] = shared
        shared.task.add_done_callback(lambda done: _finished(self._running, key, shared, done))
        return shared

    @staticmethod
    async def _wait(shared: _Shared[T], budget: Budget | None) -> T:
        shared.waiting += 1
        try:
            if budget is None:
                return await asyncio.shield(shared.task)
            timeout = budget.timeout()
            try:
                async with timeout:
                    return await asyncio.shield(shared.task)
            except TimeoutError:
                if timeout.expired():  # not a TimeoutError the call itself raised
                    raise JoinTimedOut() from None
                raise
        finally:
            shared.waiting -= 1
            if not shared.waiting and not shared.task.done():
                shared.task.cancel()


def _finished(running: dict[str, Any], key: str, entry: object, task: asyncio.Task[Any]) -> None:
    """A shared call ended: forget it (unless a newer one holds the key), and mark its
    outcome retrieved, since every waiter may have given up."""
    if running.get(key) is entry:
        del running[key]
    if not task.cancelled():
        task.exception()
