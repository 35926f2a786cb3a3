"""ResolveUpstream's response from a cache entry (rpc/upstream_servicer.py ``_answer_pb``,
built once per entry and member) is exactly the response built field by field each call,
with the call's own headers and ``stale`` (issue 11, "Cache-hit and hot path, fourth pass")."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.model import (
    Attempt,
    Hit,
    Outcome,
    RegistryUpstream,
    Resolution,
    Settings,
    Upstream,
)
from vregistry_server.oci.paths import parse_path
from vregistry_server.resolve_cache import answer_for_hit
from vregistry_server.rpc.boundary import attempts_to_pb, timestamp
from vregistry_server.rpc.upstream_servicer import UpstreamServicer

DIGEST = "sha256:" + "a" * 64
UPSTREAM = Upstream(id="u", name="U", url="http://127.0.0.1:5000", allow_http=True)
MEMBER = RegistryUpstream(UPSTREAM, 2)
ATTEMPTS = [
    Attempt("first", 0, Outcome.NOT_FOUND, 404, 1.5, "not there"),
    Attempt("skipped", 1, Outcome.UNAVAILABLE, 503, 2.5, "down", 7, "UPSTREAM_UNAVAILABLE"),
    Attempt("u", 2, Outcome.FOUND, 200, 3.25),
]


def _reference(resolution: Resolution) -> pb.ResolveUpstreamResponse:
    """The response as ResolveUpstream built it before the memo, every field each call."""
    hit = resolution.hit
    upstream = hit.member.upstream
    response = pb.ResolveUpstreamResponse(
        upstream=pb.Upstream(
            id=upstream.id,
            name=upstream.name,
            url=upstream.url,
            position=hit.member.position,
            cache_validity_hours=upstream.cache_validity_hours,
        ),
        url=hit.url,
        headers=hit.headers,
        digest=hit.digest,
        media_type=hit.media_type,
        size=hit.size,
        attempts=attempts_to_pb(resolution.attempts),
        cache_hit=resolution.cache_hit,
        stale=resolution.stale,
    )
    if resolution.checked_at:
        response.checked_at.CopyFrom(timestamp(resolution.checked_at))
    return response


def _from_entry(
    entry: object,
    headers: dict[str, str],
    *,
    member: RegistryUpstream = MEMBER,
    stale: bool = False,
) -> Resolution:
    hit = Hit(member, "http://127.0.0.1:5000/v2/a/manifests/" + DIGEST, headers, DIGEST, "m/t", 42)
    return Resolution(
        hit, list(ATTEMPTS), cache_hit=True, stale=stale, checked_at=1_764_590_000.25, entry=entry
    )


def _entry() -> object:
    path = parse_path(f"a/manifests/{DIGEST}")
    found = Resolution(_from_entry(None, {}).hit, list(ATTEMPTS), checked_at=1_764_590_000.25)
    answer = answer_for_hit(path, found, Settings(), 1_764_590_000.25)
    assert answer is not None
    return answer


def test_each_hit_of_an_entry_gets_the_full_response_with_its_own_headers() -> None:
    servicer = UpstreamServicer(cast(Any, None))
    entry = _entry()
    for headers, stale in (
        ({"Authorization": "Bearer one", "Accept": "x"}, False),
        ({"Authorization": "Bearer two"}, True),
        ({}, False),
    ):
        resolution = _from_entry(entry, headers, stale=stale)
        response = servicer._response(resolution)
        assert response == _reference(resolution)
        assert dict(response.headers) == headers and response.stale is stale
        # A response is a copy: changing it leaves what later hits are built from alone.
        response.attempts[0].message = "changed"
        response.upstream.name = "changed"
        response.headers["Authorization"] = "changed"
    assert len(servicer._answers) == 1


def test_the_memo_follows_the_entry_and_the_member() -> None:
    servicer = UpstreamServicer(cast(Any, None))
    entry = _entry()
    first = servicer._answer_pb(_from_entry(entry, {}))
    assert servicer._answer_pb(_from_entry(entry, {})) is first
    # A replaced configuration's member (renamed upstream) gets its own message.
    renamed = RegistryUpstream(dataclasses.replace(UPSTREAM, name="V"), 2)
    resolution = _from_entry(entry, {}, member=renamed)
    assert servicer._response(resolution) == _reference(resolution)
    assert servicer._response(resolution).upstream.name == "V"
    # Another entry (checked again): its own.
    other = _entry()
    assert servicer._answer_pb(_from_entry(other, {})) is not first


def test_an_answer_not_from_the_cache_is_built_each_call_and_not_kept() -> None:
    servicer = UpstreamServicer(cast(Any, None))
    resolution = dataclasses.replace(_from_entry(None, {"A": "b"}), cache_hit=False)
    assert servicer._response(resolution) == _reference(resolution)
    assert servicer._answers == {}
