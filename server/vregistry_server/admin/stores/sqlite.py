"""The embedded store: one SQLite file under the data directory.

Every call runs in a worker thread with its own connection, so the event loop
never blocks on the disk. The schema is versioned (``PRAGMA user_version``)
and migrated forward at open; the file is created readable by its owner only.
Writes are ``BEGIN IMMEDIATE`` transactions that compare and bump the
generation, so two processes may even share the file. Credentials are stored
sealed (AES-GCM), never in plain text.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vregistry_server.admin.crypto import Keyring
from vregistry_server.admin.records import (
    RecordCache,
    ResealOutcome,
    State,
    check_resealed,
    registry_to_doc,
    reseal_doc,
    state_from_docs,
    upstream_to_doc,
)
from vregistry_server.admin.stores.base import Changes, Conflict

T = TypeVar("T")
DB_FILE = "vregistry.sqlite3"
POLL_SECONDS = 0.25

# Each migration moves the schema from version N-1 to N; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('generation', '0')",
        "CREATE TABLE upstreams (id TEXT PRIMARY KEY, grp TEXT NOT NULL, doc TEXT NOT NULL)",
        "CREATE TABLE registries (id TEXT PRIMARY KEY, grp TEXT NOT NULL, doc TEXT NOT NULL)",
    ),
    (
        "CREATE INDEX upstreams_by_group ON upstreams (grp, id)",
        "CREATE INDEX registries_by_group ON registries (grp, id)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteStore:
    name = "sqlite"

    def __init__(self, data_dir: str | os.PathLike[str], keyring: Keyring | None) -> None:
        self.path = Path(data_dir) / DB_FILE
        self.location = str(self.path)
        self._keyring = keyring
        self._records = RecordCache()

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        connection.execute("PRAGMA busy_timeout = 10000")
        return connection

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            connection = self._connect()
            try:
                return work(connection)
            finally:
                connection.close()

        return await asyncio.to_thread(call)

    # ------------------------------------------------------------------ contract

    async def open(self) -> None:
        def prepare() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)

        await asyncio.to_thread(prepare)
        await self._run(_migrate)

    async def load(self) -> State:
        def read(connection: sqlite3.Connection) -> State:
            connection.execute("BEGIN")
            try:
                generation = _generation(connection)
                upstreams = [r[0] for r in connection.execute("SELECT doc FROM upstreams")]
                registries = [r[0] for r in connection.execute("SELECT doc FROM registries")]
            finally:
                connection.execute("COMMIT")
            # Still in the worker thread: opening credentials may derive fingerprints.
            return state_from_docs(generation, upstreams, registries, self._keyring, self._records)

        return await self._run(read)

    async def commit(self, expected_generation: int, changes: Changes) -> int:
        upstream_rows = [
            (u.id, u.group, json.dumps(upstream_to_doc(u, self._keyring)))
            for u in changes.put_upstreams
        ]
        registry_rows = [
            (r.id, r.group, json.dumps(registry_to_doc(r))) for r in changes.put_registries
        ]

        def write(connection: sqlite3.Connection) -> int:
            connection.execute("BEGIN IMMEDIATE")
            try:
                if _generation(connection) != expected_generation:
                    raise Conflict()
                connection.executemany(
                    "DELETE FROM upstreams WHERE id = ?", [(i,) for i in changes.delete_upstreams]
                )
                connection.executemany(
                    "DELETE FROM registries WHERE id = ?",
                    [(i,) for i in changes.delete_registries],
                )
                connection.executemany(
                    "INSERT OR REPLACE INTO upstreams (id, grp, doc) VALUES (?, ?, ?)",
                    upstream_rows,
                )
                connection.executemany(
                    "INSERT OR REPLACE INTO registries (id, grp, doc) VALUES (?, ?, ?)",
                    registry_rows,
                )
                new_generation = expected_generation + 1
                connection.execute(
                    "UPDATE meta SET value = ? WHERE key = 'generation'", (str(new_generation),)
                )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return new_generation

        return await self._run(write)

    async def wait_for_change(self, known_generation: int, wait_seconds: float) -> bool:
        deadline = time.monotonic() + wait_seconds
        while True:
            if await self._run(_generation) != known_generation:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(POLL_SECONDS, remaining))

    async def reencrypt(self) -> int:
        keyring = self._keyring
        if keyring is None:
            return 0

        def rotate(connection: sqlite3.Connection) -> int:
            connection.execute("BEGIN IMMEDIATE")
            count = 0
            try:
                rows = list(connection.execute("SELECT id, doc FROM upstreams"))
                outcomes: dict[str, ResealOutcome] = {}
                for upstream_id, raw in rows:
                    doc: dict[str, Any] = json.loads(raw)
                    outcomes[upstream_id], fresh = reseal_doc(doc, keyring)
                    if outcomes[upstream_id] != "resealed":
                        continue
                    connection.execute(
                        "UPDATE upstreams SET doc = ? WHERE id = ?",
                        (json.dumps(fresh), upstream_id),
                    )
                    count += 1
                check_resealed(outcomes, self.location)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return count

        return await self._run(rotate)

    async def aclose(self) -> None:
        return None


def _generation(connection: sqlite3.Connection) -> int:
    row = connection.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0


def _migrate(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database schema is version {version}, newer than this server's"
                f" {SCHEMA_VERSION}; upgrade the server"
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number + 1}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
