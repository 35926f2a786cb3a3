"""SharedCalls (oci/singleflight.py): one call per key in flight, each waiter under its own
deadline, the call cancelled once nobody waits. Plain asyncio: the calls are coroutines
that wait for an event the test sets."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.waiting import settle
from vregistry_server.oci.http import Budget
from vregistry_server.oci.singleflight import JoinTimedOut, SharedCalls


class Call:
    """A call that counts its starts and ends when ``release`` is set."""

    def __init__(self, result: str = "answer", error: BaseException | None = None) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.cancelled = 0
        self.result, self.error = result, error

    async def __call__(self) -> str:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return self.result


def _long() -> Budget:
    return Budget.start(10.0)


async def test_callers_of_one_key_share_one_call() -> None:
    joins: list[None] = []
    shared: SharedCalls[str] = SharedCalls(on_join=lambda: joins.append(None))
    call = Call()
    waiters = [asyncio.create_task(shared.run("k", _long(), call)) for _ in range(5)]
    await settle()
    assert len(shared) == 1
    call.release.set()
    assert await asyncio.gather(*waiters) == ["answer"] * 5
    assert call.started == 1
    assert len(joins) == 4, "every caller but the first joined"
    assert len(shared) == 0


async def test_other_keys_and_later_calls_are_not_shared() -> None:
    shared: SharedCalls[str] = SharedCalls()
    call = Call()
    call.release.set()
    assert await asyncio.gather(shared.run("a", _long(), call), shared.run("b", _long(), call))
    assert call.started == 2
    await shared.run("a", _long(), call)  # the first "a" had ended: a new call
    assert call.started == 3


async def test_a_joiner_gives_up_at_its_own_deadline_and_the_call_goes_on() -> None:
    shared: SharedCalls[str] = SharedCalls()
    call = Call()
    first = asyncio.create_task(shared.run("k", _long(), call))
    await settle()
    with pytest.raises(JoinTimedOut):
        await shared.run("k", Budget.start(0.05), call)
    assert not first.done() and call.cancelled == 0
    call.release.set()
    assert await first == "answer"
    assert call.started == 1


async def test_what_the_call_raises_reaches_every_caller() -> None:
    shared: SharedCalls[str] = SharedCalls()
    call = Call(error=LookupError("not there"))
    waiters = [asyncio.create_task(shared.run("k", _long(), call)) for _ in range(3)]
    await settle()
    call.release.set()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(o) for o in outcomes] == [LookupError] * 3
    assert call.started == 1


async def test_a_timeout_of_the_call_itself_is_not_a_joiners_own() -> None:
    shared: SharedCalls[str] = SharedCalls()
    call = Call(error=TimeoutError("the call's own"))
    first = asyncio.create_task(shared.run("k", _long(), call))
    await settle()
    joiner = asyncio.create_task(shared.run("k", _long(), call))
    await settle()
    call.release.set()
    for task in (first, joiner):
        with pytest.raises(TimeoutError) as info:
            await task
        assert not isinstance(info.value, JoinTimedOut)


async def test_a_joiner_with_time_left_calls_again_when_the_first_callers_deadline_ended_it() -> (
    None
):
    shared: SharedCalls[str] = SharedCalls()
    ended = Call(error=LookupError("timed out at the first caller's deadline"))
    own = Call(result="its own answer")
    short = Budget.start(10.0, caller_remaining=0.2)
    first = asyncio.create_task(shared.run("k", short, ended))
    await settle()
    joiner = asyncio.create_task(shared.run("k", _long(), own))
    await settle()
    await asyncio.sleep(short.remaining() + 0.01)  # the first caller's deadline passes
    assert short.ran_out_for_the_caller()
    ended.release.set()
    with pytest.raises(LookupError):
        await first  # the first caller gets what its call raised, as when alone
    await settle()
    assert own.started == 1, "the joiner made its own call"
    own.release.set()
    assert await joiner == "its own answer"


async def test_the_call_goes_on_while_anybody_waits_and_stops_when_nobody_does() -> None:
    shared: SharedCalls[str] = SharedCalls()
    call = Call()
    waiters = [asyncio.create_task(shared.run("k", _long(), call)) for _ in range(3)]
    await settle()
    waiters[0].cancel()  # the first caller goes
    await settle()
    assert call.cancelled == 0 and len(shared) == 1
    waiters[1].cancel()
    waiters[2].cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await settle()
    assert call.cancelled == 1
    assert len(shared) == 0


async def test_a_lone_caller_that_goes_cancels_its_call() -> None:
    shared: SharedCalls[str] = SharedCalls()
    call = Call()
    only = asyncio.create_task(shared.run("k", _long(), call))
    await settle()
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    await settle()
    assert call.cancelled == 1


async def test_a_caller_arriving_while_the_call_is_being_cancelled_starts_its_own() -> None:
    """The last waiter left, the call is being cancelled: a newcomer in that moment must
    not inherit a CancelledError it never asked for."""
    shared: SharedCalls[str] = SharedCalls()
    call = Call()
    first = asyncio.create_task(shared.run("k", _long(), call))
    await settle()
    first.cancel()  # its caller went away; the call's cancellation is now pending
    second = asyncio.create_task(shared.run("k", _long(), call))
    call.release.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == "answer"
    assert call.started == 2
