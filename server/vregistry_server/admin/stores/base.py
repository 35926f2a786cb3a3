"""The store contract, and the in-memory store (tests, development).

A store keeps upstream and registry records under one *generation* counter.
``commit`` is a compare-and-set on that counter: it applies a set of changes
only if nobody else committed since ``load`` (else ``Conflict``), and bumps it.
That makes every change serializable across replicas that share a store, and
lets a replica notice a change by the generation alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from vregistry_server.admin.records import RegistryRecord, State, UpstreamRecord


class Conflict(Exception):
    """The store changed between read and write (another writer won); the manager retries.

    Internal to the admin domain: callers never see it (after a few retries they get
    StoreUnavailable).
    """


@dataclass(frozen=True, slots=True)
class Changes:
    put_upstreams: tuple[UpstreamRecord, ...] = ()
    delete_upstreams: tuple[str, ...] = ()
    put_registries: tuple[RegistryRecord, ...] = ()
    delete_registries: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.put_upstreams
            or self.delete_upstreams
            or self.put_registries
            or self.delete_registries
        )


class Store(Protocol):
    name: str  # "memory", "sqlite", "redis"
    location: str  # where the data lives, for logs (never a password)

    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    async def load(self) -> State:
        """One consistent snapshot, credentials decrypted."""

    async def commit(self, expected_generation: int, changes: Changes) -> int:
        """Apply ``changes`` if the generation is still ``expected_generation``; the new one."""

    async def wait_for_change(self, known_generation: int, wait_seconds: float) -> bool:
        """Wait up to ``wait_seconds`` s for the generation to move past ``known_generation``."""

    async def reencrypt(self) -> int:
        """Re-seal every credential not sealed with the primary key; how many were."""

    async def aclose(self) -> None: ...


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


def apply_changes(
    upstreams: dict[str, UpstreamRecord], registries: dict[str, RegistryRecord], changes: Changes
) -> None:
    for uid in changes.delete_upstreams:
        upstreams.pop(uid, None)
    for rid in changes.delete_registries:
        registries.pop(rid, None)
    for upstream in changes.put_upstreams:
        upstreams[upstream.id] = upstream
    for registry in changes.put_registries:
        registries[registry.id] = registry
