"""rpc/answer_memo.py: a kept response is given again only to the same caller, while the
resolver's ``changes`` count has not moved and neither clock has passed its Reuse; and what
moves ``changes`` (issue 11, benchmarks/RESULTS.md "Answer memo")."""

from __future__ import annotations

import dataclasses
import time

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.config import build_config
from vregistry_server.model import (
    Attempt,
    AuthHeaders,
    Hit,
    Outcome,
    RegistryUpstream,
    Resolution,
    Reuse,
    Scheme,
    Settings,
    Upstream,
)
from vregistry_server.oci.paths import parse_path
from vregistry_server.oci.ping import AuthDiscovery
from vregistry_server.oci.token_cache import CachedToken, MemoryTokenCache, RedisTokenCache
from vregistry_server.resolve_cache import MemoryLayer, answer_for_hit
from vregistry_server.resolver import Resolver
from vregistry_server.rpc.answer_memo import NEVER, AnswerMemo, Memo

RESPONSE = pb.UrlForResponse(url="http://127.0.0.1:5000/v2/")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _memo(caller: object, changes: int, reuse: Reuse) -> Memo[pb.UrlForResponse]:
    return Memo(caller, changes, reuse, RESPONSE, None)


def test_the_same_caller_gets_the_kept_response_while_nothing_changed() -> None:
    caller = object()
    memo: AnswerMemo[str, pb.UrlForResponse] = AnswerMemo(8)
    memo.put("k", _memo(caller, 3, NEVER))
    found = memo.get("k", caller, 3, time.time)
    assert found is not None and found.response is RESPONSE
    assert memo.get("other", caller, 3, time.time) is None


def test_another_caller_a_moved_count_or_a_passed_clock_asks_again() -> None:
    caller, other = object(), object()
    monotonic, cache_clock = Clock(), Clock()
    memo: AnswerMemo[str, pb.UrlForResponse] = AnswerMemo(8, clock=monotonic)
    reuse = Reuse(until=110.0, fresh_until=120.0)

    memo.put("k", _memo(caller, 1, reuse))
    assert memo.get("k", other, 1, cache_clock) is None, "never another caller's answer"
    assert len(memo) == 0, "and the entry is gone, not kept for the next look"

    memo.put("k", _memo(caller, 1, reuse))
    assert memo.get("k", caller, 2, cache_clock) is None, "something it came from changed"

    memo.put("k", _memo(caller, 1, reuse))
    monotonic.now = 109.9
    assert memo.get("k", caller, 1, cache_clock) is not None
    monotonic.now = 110.0  # the token left this process's memory (or expired)
    assert memo.get("k", caller, 1, cache_clock) is None

    monotonic.now = 100.0
    memo.put("k", _memo(caller, 1, reuse))
    cache_clock.now = 119.9
    assert memo.get("k", caller, 1, cache_clock) is not None
    cache_clock.now = 120.0  # the tag answer's validity ended: the upstreams are asked
    assert memo.get("k", caller, 1, cache_clock) is None


def test_without_a_fresh_until_the_cache_clock_is_not_read() -> None:
    def clock() -> float:
        raise AssertionError("read")

    memo: AnswerMemo[str, pb.UrlForResponse] = AnswerMemo(8)
    caller = object()
    memo.put("k", _memo(caller, 0, Reuse(until=time.monotonic() + 60)))
    assert memo.get("k", caller, 0, clock) is not None


def test_the_memo_is_bounded() -> None:
    memo: AnswerMemo[int, pb.UrlForResponse] = AnswerMemo(4)
    caller = object()
    for key in range(10):
        memo.put(key, _memo(caller, 0, NEVER))
        assert len(memo) <= 4
    assert memo.get(9, caller, 0, time.time) is not None
    off: AnswerMemo[int, pb.UrlForResponse] = AnswerMemo(0)
    off.put(1, _memo(caller, 0, NEVER))
    assert len(off) == 0


# --------------------------------------------------------------------------- what moves changes


def _resolver() -> Resolver:
    document = {
        "upstreams": [{"id": "u", "name": "U", "url": "http://127.0.0.1:5000", "allow_http": True}],
        "registries": [{"id": "r", "name": "R", "upstreams": ["u"]}],
    }
    return Resolver(build_config(document, source="memo-test", env={}))


async def test_applying_a_configuration_moves_changes() -> None:
    resolver = _resolver()
    before = resolver.changes
    await resolver.apply_config(resolver.config)
    assert resolver.changes > before
    await resolver.aclose()


async def test_forgetting_or_remembering_auth_and_dropping_tokens_move_changes() -> None:
    resolver = _resolver()
    upstream = resolver.config.upstreams["u"]
    before = resolver.changes
    resolver.authenticator.forget("u")
    assert resolver.changes > before
    before = resolver.changes
    await resolver.authenticator.invalidate("u")
    assert resolver.changes > before
    before = resolver.changes
    resolver.authenticator.remember(upstream, AuthDiscovery(Scheme.NONE))
    assert resolver.changes > before
    await resolver.aclose()


def _answer(url: str = "http://127.0.0.1:5000/v2/a/blobs/sha256:" + "b" * 64) -> object:
    member = RegistryUpstream(
        Upstream(id="u", name="U", url="http://127.0.0.1:5000", allow_http=True), 1
    )
    hit = Hit(member, url, {}, "sha256:" + "b" * 64, "m/t", 1)
    resolution = Resolution(hit, [Attempt("u", 1, Outcome.FOUND, 200)])
    return answer_for_hit(parse_path("a/blobs/sha256:" + "b" * 64), resolution, Settings(), 1.0)


def test_every_store_drop_or_eviction_of_a_cached_resolution_moves_changes() -> None:
    layer = MemoryLayer(max_entries=2, max_bytes=1 << 20, clock=time.time)
    answer = _answer()
    assert answer is not None
    seen = [layer.changes]

    def moved() -> bool:
        seen.append(layer.changes)
        return seen[-1] > seen[-2]

    layer.put("a", "r", answer, 10)  # type: ignore[arg-type]
    assert moved()
    assert layer.get("a") is answer and not moved(), "a read is no change"
    layer.put("a", "r", answer, 10)  # type: ignore[arg-type]
    assert moved(), "replaced"
    layer.put("b", "r", answer, 10)  # type: ignore[arg-type]
    layer.put("c", "r", answer, 10)  # type: ignore[arg-type]  # pushes "a" out
    assert moved() and layer.get("a") is None
    layer.remove("b")
    assert moved()
    layer.remove("nothing")
    assert not moved()
    assert layer.forget({"r"}) == 1 and moved()
    layer.clear()
    assert moved()


async def test_a_token_is_held_locally_until_its_memory_entry_ends() -> None:
    cache = MemoryTokenCache()
    token = CachedToken("t0ken-value-xyz", expires_at=time.time() + 300)
    await cache.set("k", token, 60)
    held = cache.held_locally("k")
    assert held is not None and held[0] == "memory"
    assert time.monotonic() + 59 < held[1] <= time.monotonic() + 60
    assert cache.held_locally("missing") is None
    await cache.delete("k")
    assert cache.held_locally("k") is None


def test_redis_without_a_near_cache_holds_nothing_locally() -> None:
    # No connection is made: the client connects lazily, and nothing here sends a command.
    cache = RedisTokenCache("redis://127.0.0.1:1/0", near_cache_seconds=0)
    assert cache.held_locally("k") is None
    near = RedisTokenCache("redis://127.0.0.1:1/0", near_cache_seconds=5)
    assert near.held_locally("k") is None


def test_reuse_is_not_part_of_an_answers_equality_or_repr() -> None:
    first = AuthHeaders({}, Scheme.NONE, reuse=Reuse(1.0))
    assert first == dataclasses.replace(first, reuse=Reuse(2.0)) and "reuse" not in repr(first)
