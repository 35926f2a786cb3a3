"""Responses the gRPC face gives again without asking the resolver.

A hot caller asks the same question many times a second (this upstream, path and
actions; this registry and path), and the answer changes only when something it came
from changes. So each answer the resolver marks with a ``Reuse`` (model.py) is kept here
as its whole response message, with the caller it was given to and the resolver's
``changes`` count read *before* asking. A repeat gets the same message while:

* the caller is the same object (keys hold its ``id``; a reloaded callers file makes new
  ones),
* ``Resolver.changes`` has not moved: no configuration applied, no challenge remembered
  or forgotten, no token dropped, no cached resolution stored, dropped or pushed out
  since (one counter for all; any such change empties the memo in effect). UrlFor's
  answers depend on the configuration alone and check ``Resolver.configs_applied``;
* ``time.monotonic()`` is before ``Reuse.until`` (the token still in this process's
  memory and unexpired, the challenge still the discovered one) and the resolution
  cache's clock before ``Reuse.fresh_until`` (a tag answer's validity).

What a repeat still does is what the caller and the operator see: the access checks are
the caller identity above, the deadline is checked, and the audit line, the RPC metrics
and the cache hit counts are written as for any call. Anything else asks the resolver.

Why: a hot call's cost in the server is what it touches (benchmarks/RESULTS.md, "Hot
path and cold CPU, third pass": the service's code misses the CPU caches between calls),
and a repeat answered here touches a dict instead of some eight coroutines in four layers.
Memory: at most ``max_entries`` responses (a few KB each: a bearer token); an entry found
expired is dropped, and the memo is emptied when full. The tokens it holds are the ones the
token cache holds, never logged or shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from vregistry_server.model import Reuse
from vregistry_server.rpc.audit import AuditFields

M = TypeVar("M", bound=Message)
K = TypeVar("K", bound=Hashable)
NEVER = Reuse(float("inf"))  # UrlFor: a function of the configuration alone


@dataclass(frozen=True, slots=True)
class Disclosure:
    """A credential handed out: the audit line's fields and the count's labels."""

    fields: AuditFields
    upstream_id: str
    scheme: str


@dataclass(frozen=True, slots=True)
class Memo(Generic[M]):
    caller: object
    changes: int
    reuse: Reuse
    response: M
    disclosure: Disclosure | None  # what a repeat writes again (None: no credential in it)


class AnswerMemo(Generic[K, M]):
    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[K, Memo[M]] = {}
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, key: K, caller: object, changes: int, cache_clock: Callable[[], float]
    ) -> Memo[M] | None:
        memo = self._entries.get(key)
        if memo is None:
            return None
        reuse = memo.reuse
        if (
            memo.caller is caller
            and memo.changes == changes
            and self._clock() < reuse.until
            and (reuse.fresh_until == NEVER.fresh_until or cache_clock() < reuse.fresh_until)
        ):
            return memo
        del self._entries[key]
        return None

    def put(self, key: K, memo: Memo[M]) -> None:
        if self._max_entries <= 0:
            return
        if len(self._entries) >= self._max_entries and key not in self._entries:
            self._entries.clear()
        self._entries[key] = memo
