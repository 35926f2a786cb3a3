"""The in-memory store (tests, development): lost at exit, seen by this process only.

That is why ``--store memory`` refuses ``--workers`` above 1: each worker would
hold its own configuration.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from vregistry_server.admin.records import State
from vregistry_server.admin.stores.base import Changes, Conflict, apply_changes


@dataclass
class MemoryStore:
    """Everything in process memory: lost at exit, seen by this process only."""

    name: str = "memory"
    location: str = "process memory"
    _state: State = field(default_factory=State)
    _changed: asyncio.Condition | None = None

    async def open(self) -> None:
        self._changed = asyncio.Condition()

    async def load(self) -> State:
        return self._state

    async def commit(self, expected_generation: int, changes: Changes) -> int:
        state = self._state
        if state.generation != expected_generation:
            raise Conflict()
        upstreams = dict(state.upstreams)
        registries = dict(state.registries)
        apply_changes(upstreams, registries, changes)
        self._state = State(state.generation + 1, upstreams, registries)
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()
        return self._state.generation

    async def wait_for_change(self, known_generation: int, wait_seconds: float) -> bool:
        if self._state.generation != known_generation:
            return True
        if self._changed is None:
            await asyncio.sleep(wait_seconds)
            return False
        try:
            async with asyncio.timeout(wait_seconds), self._changed:
                await self._changed.wait_for(lambda: self._state.generation != known_generation)
        except TimeoutError:
            return False
        return True

    async def reencrypt(self) -> int:
        return 0

    async def aclose(self) -> None:
        return None
