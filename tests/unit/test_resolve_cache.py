"""The resolution cache's parts without servers: LRU bounds, clock-driven expiry, keys,
what is remembered of an answer, and the encoding shared through Redis."""

from __future__ import annotations

import dataclasses
import time

import pytest

from vregistry_server.model import (
    Attempt,
    Credentials,
    Hit,
    Outcome,
    Registry,
    RegistryUpstream,
    Resolution,
    Settings,
    Upstream,
)
from vregistry_server.oci.paths import parse_path
from vregistry_server.resolve_cache import (
    ENTRY_OVERHEAD_BYTES,
    KEY_PREFIX,
    CachedAnswer,
    MemoryLayer,
    ResolveCache,
    answer_for_hit,
    answer_for_miss,
    cacheable,
    changed_registries,
    decode,
    encode,
    registry_fingerprint,
)

DIGEST = "sha256:" + "a" * 64
OTHER_DIGEST = "sha256:" + "b" * 64
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _upstream(upstream_id: str = "u1", **changes: object) -> Upstream:
    base = Upstream(id=upstream_id, name=upstream_id, url=f"https://{upstream_id}.example")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _registry(*upstreams: Upstream, registry_id: str = "r") -> Registry:
    members = tuple(RegistryUpstream(u, i) for i, u in enumerate(upstreams, start=1))
    return Registry(id=registry_id, name=registry_id, description="", upstreams=members)


def _answer(*, expires_at: float | None = None, stale_until: float | None = None) -> CachedAnswer:
    return CachedAnswer(
        found=True,
        attempts=(Attempt("u1", 1, Outcome.FOUND, 200, 1.5),),
        checked_at=0.0,
        expires_at=expires_at,
        stale_until=stale_until,
        upstream_id="u1",
        position=1,
        url="https://u1.example/v2/a/manifests/" + DIGEST,
        digest=DIGEST,
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=123,
    )


def _resolution(
    upstream: Upstream, path: str, *, url: str | None = None, digest: str = DIGEST
) -> Resolution:
    member = RegistryUpstream(upstream, 1)
    hit = Hit(
        member=member,
        url=url or upstream.url_for(path),
        headers={"Authorization": "Bearer secret-token"},
        digest=digest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=10,
    )
    return Resolution(hit, [Attempt(upstream.id, 1, Outcome.FOUND, 200, 2.0)])


# --------------------------------------------------------------------------- the LRU


def test_lru_keeps_at_most_max_entries_and_drops_the_least_recently_used() -> None:
    layer = MemoryLayer(max_entries=2, max_bytes=10**9, clock=Clock())
    layer.put("a", "r", _answer(), 100)
    layer.put("b", "r", _answer(), 100)
    assert layer.get("a") is not None  # a is now the most recent
    layer.put("c", "r", _answer(), 100)
    assert len(layer) == 2
    assert layer.get("b") is None
    assert layer.get("a") is not None and layer.get("c") is not None


def test_lru_is_bounded_by_bytes() -> None:
    entry_bytes = 1000 + ENTRY_OVERHEAD_BYTES
    layer = MemoryLayer(max_entries=100, max_bytes=3 * entry_bytes, clock=Clock())
    for key in "abcde":
        layer.put(key, "r", _answer(), 1000)
    assert len(layer) == 3
    assert layer.bytes == 3 * entry_bytes
    assert [k for k in "abcde" if layer.get(k) is not None] == ["c", "d", "e"]
    layer.put("huge", "r", _answer(), 10 * entry_bytes)  # larger than the whole bound
    assert layer.get("huge") is None and len(layer) == 3


def test_replacing_an_entry_does_not_count_its_bytes_twice() -> None:
    layer = MemoryLayer(max_entries=10, max_bytes=10**6, clock=Clock())
    layer.put("a", "r", _answer(), 100)
    layer.put("a", "r", _answer(), 300)
    assert layer.bytes == 300 + ENTRY_OVERHEAD_BYTES


def test_a_replacement_too_large_to_keep_still_drops_the_old_entry() -> None:
    # The old answer is outdated by the new one: serving it from memory, ahead of Redis,
    # would answer with what the upstreams no longer say.
    layer = MemoryLayer(max_entries=10, max_bytes=2000, clock=Clock())
    layer.put("a", "r", _answer(), 100)
    layer.put("a", "r", _answer(), 5000)
    assert layer.get("a") is None and layer.bytes == 0


def test_no_entries_allowed_means_no_memory_layer() -> None:
    layer = MemoryLayer(max_entries=0, max_bytes=10**6, clock=Clock())
    layer.put("a", "r", _answer(), 10)
    assert len(layer) == 0


def test_entries_past_their_stale_window_are_dropped_by_the_clock() -> None:
    clock = Clock()
    layer = MemoryLayer(max_entries=10, max_bytes=10**6, clock=clock)
    layer.put("a", "r", _answer(expires_at=clock.now + 10, stale_until=clock.now + 20), 10)
    clock.now += 15  # expired, still within its stale window: kept (for stale if error)
    answer = layer.get("a")
    assert answer is not None and not answer.fresh(clock.now) and answer.usable(clock.now)
    clock.now += 10
    assert layer.get("a") is None
    assert len(layer) == 0 and layer.bytes == 0


def test_forget_drops_only_the_named_registries() -> None:
    layer = MemoryLayer(max_entries=10, max_bytes=10**6, clock=Clock())
    layer.put("a", "r1", _answer(), 10)
    layer.put("b", "r2", _answer(), 10)
    assert layer.forget({"r1"}) == 1
    assert layer.get("a") is None and layer.get("b") is not None


# --------------------------------------------------------------------------- keys


def _key(registry: Registry, path: str = "a/manifests/latest") -> str:
    return ResolveCache(Settings()).key(registry, parse_path(path))


def test_the_key_is_a_hash_of_registry_configuration_and_path() -> None:
    registry = _registry(_upstream("u1", credentials=Credentials("user", "hunter2-pw")))
    key = _key(registry)
    assert key.startswith(KEY_PREFIX)
    assert "hunter2" not in key and "user" not in key and "u1" not in key
    assert _key(registry) == key  # stable (every replica computes the same)
    assert _key(dataclasses.replace(registry)) == key  # an equal registry, another object
    assert _key(registry, "a/manifests/other") != key
    assert _key(dataclasses.replace(registry, id="r2")) != key


@pytest.mark.parametrize(
    "change",
    [
        {"url": "https://moved.example"},
        {"credentials": Credentials("user", "another-pw")},
        {"token_flow": "oauth2"},
        {"allow_http": True},
        {"realm_allow_hosts": ("auth.example.net",)},
        {"client_id": "other"},
        {"source": "api"},
        {"cache_validity_hours": 1},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_members_identity_change_changes_the_key(change: dict[str, object]) -> None:
    before = _registry(_upstream("u1"), _upstream("u2"))
    after = _registry(_upstream("u1", **change), _upstream("u2"))
    assert _key(after) != _key(before)
    assert changed_registries({"r": before}, {"r": after}) == {"r"}


def test_order_and_membership_change_the_key() -> None:
    one, two = _upstream("u1"), _upstream("u2")
    keys = {
        _key(_registry(one, two)),
        _key(_registry(two, one)),
        _key(_registry(one)),
        _key(_registry(one, two, _upstream("u3"))),
    }
    assert len(keys) == 4


def test_a_name_or_description_change_keeps_the_answers() -> None:
    before = _registry(_upstream("u1"))
    after = _registry(_upstream("u1", name="Renamed", description="new"))
    after = dataclasses.replace(after, name="New name")
    assert registry_fingerprint(after) == registry_fingerprint(before)
    assert changed_registries({"r": before}, {"r": after}) == set()
    assert changed_registries({"r": before}, {}) == {"r"}


def test_only_manifests_and_blobs_are_cacheable() -> None:
    assert cacheable(parse_path("a/manifests/latest"))
    assert cacheable(parse_path(f"a/blobs/{DIGEST}"))
    assert not cacheable(parse_path("a/tags/list"))
    assert not cacheable(parse_path(f"a/referrers/{DIGEST}"))


# --------------------------------------------------------------------------- what is remembered


def test_a_tag_answer_is_remembered_by_digest_for_the_upstreams_validity() -> None:
    upstream = _upstream("u1", cache_validity_hours=3)
    path = parse_path("a/manifests/latest")
    settings = Settings(stale_if_error_seconds=600)
    answer = answer_for_hit(path, _resolution(upstream, path.api_path), settings, 1000.0)
    assert answer is not None
    assert answer.url == f"https://u1.example/v2/a/manifests/{DIGEST}"
    assert answer.expires_at == 1000.0 + 3 * HOUR
    assert answer.stale_until == 1000.0 + 3 * HOUR + 600
    assert answer.checked_at == 1000.0
    assert "secret-token" not in encode(answer), "headers are never cached"


def test_validity_zero_and_digest_references_never_expire() -> None:
    settings = Settings()
    tag = parse_path("a/manifests/latest")
    forever = _upstream("u1", cache_validity_hours=0)
    answer = answer_for_hit(tag, _resolution(forever, tag.api_path), settings, 0.0)
    assert answer is not None and answer.expires_at is None and answer.stale_until is None
    by_digest = parse_path(f"a/manifests/{DIGEST}")
    hourly = _upstream("u1", cache_validity_hours=1)
    answer = answer_for_hit(by_digest, _resolution(hourly, by_digest.api_path), settings, 0.0)
    assert answer is not None and answer.expires_at is None
    assert answer.url == hourly.url_for(by_digest.api_path)


def test_a_redirected_manifest_answer_is_not_remembered() -> None:
    upstream = _upstream("u1")
    path = parse_path("a/manifests/latest")
    elsewhere = f"https://storage.example/signed/{DIGEST}?X-Amz-Expires=300"
    resolution = _resolution(upstream, path.api_path, url=elsewhere)
    assert answer_for_hit(path, resolution, Settings(), 0.0) is None


@pytest.mark.parametrize("digest", ["", "sha256:../../etc", "not-a-digest"])
def test_a_tag_answer_without_a_usable_digest_is_not_remembered(digest: str) -> None:
    upstream = _upstream("u1")
    path = parse_path("a/manifests/latest")
    resolution = _resolution(upstream, path.api_path, digest=digest)
    assert answer_for_hit(path, resolution, Settings(), 0.0) is None


def test_misses_are_remembered_only_with_a_negative_cache() -> None:
    attempts = [Attempt("u1", 1, Outcome.NOT_FOUND, 404, 1.0)]
    assert answer_for_miss("not found", attempts, Settings(), 0.0) is None
    miss = answer_for_miss("not found", attempts, Settings(negative_cache_seconds=30), 5.0)
    assert miss is not None and not miss.found
    assert miss.expires_at == miss.stale_until == 35.0  # a miss is never served stale
    assert miss.message == "not found"


def test_the_cached_attempts_are_copies() -> None:
    upstream = _upstream("u1")
    path = parse_path(f"a/manifests/{DIGEST}")
    resolution = _resolution(upstream, path.api_path)
    answer = answer_for_hit(path, resolution, Settings(), 0.0)
    assert answer is not None
    resolution.attempts[0].message = "changed later by someone"
    handed_out = answer.copied_attempts()
    handed_out[0].message = "changed by a caller"
    assert answer.attempts[0].message == ""


# --------------------------------------------------------------------------- encoding


def test_encoding_round_trips() -> None:
    answer = _answer(expires_at=10.0, stale_until=20.0)
    assert decode(encode(answer)) == answer
    assert decode(encode(answer).encode()) == answer


@pytest.mark.parametrize("raw", ["", "{", "[]", '{"found": true}', '{"attempts": [[1]]}'])
def test_an_unreadable_entry_is_a_miss(raw: str) -> None:
    assert decode(raw) is None


# --------------------------------------------------------------------------- the cache (memory)


async def test_the_cache_without_redis_serves_from_memory_and_forgets_registries() -> None:
    clock = Clock()
    cache = ResolveCache(Settings(), clock=clock)
    assert cache.enabled
    key = cache.key(_registry(_upstream("u1")), parse_path("a/manifests/latest"))
    assert await cache.get(key, "r", immutable=False) is None
    answer = _answer(expires_at=clock.now + 10, stale_until=clock.now + 20)
    await cache.put(key, "r", answer)
    found = await cache.get(key, "r", immutable=False)
    assert found is not None and found.layer == "memory" and found.answer == answer
    clock.now += 15
    found = await cache.get(key, "r", immutable=False)
    assert found is not None and not found.answer.fresh(clock.now)  # kept for stale if error
    assert cache.forget({"r"}) == 1
    assert await cache.get(key, "r", immutable=False) is None
    await cache.aclose()


def test_the_cache_is_off_without_memory_and_without_redis() -> None:
    assert not ResolveCache(Settings(resolve_cache_max_entries=0)).enabled


def test_the_default_clock_is_wall_time() -> None:
    # Entries are shared through Redis with other replicas: their times must be wall time.
    assert abs(ResolveCache(Settings()).now() - time.time()) < 5
