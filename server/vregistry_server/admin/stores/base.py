"""The store contract every store (memory, sqlite, redis) keeps.

A store keeps upstream and registry records under one *generation* counter.
``commit`` is a compare-and-set on that counter: it applies a set of changes
only if nobody else committed since ``load`` (else ``Conflict``), and bumps it.
That makes every change serializable across replicas that share a store, and
lets a replica notice a change by the generation alone.
"""

from __future__ import annotations

from dataclasses import dataclass
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
