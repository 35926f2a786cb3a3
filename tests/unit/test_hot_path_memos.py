"""What the hot paths build once instead of per call gives exactly what building it each
call gave (issue 11, benchmarks/RESULTS.md "Hot path and cold CPU, third pass"): the egress
scope of an upstream, the pb.Upstream of a registry member, a Timestamp, the cache's
encoding of an answer, a log line's own fields."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, cast

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from vregistry.v1 import upstream_service_pb2 as pb
from vregistry_server.model import Attempt, Outcome, RegistryUpstream, Settings, Upstream
from vregistry_server.oci.egress import OPERATOR_ORIGIN_CLASSES, PUBLIC_ONLY
from vregistry_server.oci.realm_policy import AddressGuard
from vregistry_server.resolve_cache import CachedAnswer, encode
from vregistry_server.rpc.boundary import timestamp
from vregistry_server.rpc.upstream_servicer import UpstreamServicer
from vregistry_server.runtime import logs

UPSTREAM = Upstream(id="u", name="U", url="http://127.0.0.1:5000", allow_http=True)


async def test_an_upstream_keeps_its_scope_until_it_is_replaced() -> None:
    guard = AddressGuard(settings=Settings())
    first = await guard.scope_for(UPSTREAM)
    assert await guard.scope_for(UPSTREAM) is first
    moved = dataclasses.replace(UPSTREAM, url="http://127.0.0.2:6000")
    scope = await guard.scope_for(moved)
    assert scope is not first and scope.origin == ("127.0.0.2", 6000)
    # The same id from the API: another object, another scope (public addresses only).
    api = dataclasses.replace(UPSTREAM, source="api")
    api_scope = await guard.scope_for(api)
    assert api_scope.key != first.key
    assert await api_scope.classes_for("127.0.0.1", 5000) == PUBLIC_ONLY
    assert await first.classes_for("127.0.0.1", 5000) == OPERATOR_ORIGIN_CLASSES


def test_a_members_upstream_message_follows_the_member() -> None:
    servicer = UpstreamServicer(cast(Any, None))
    member = RegistryUpstream(UPSTREAM, 1)
    built = servicer._member_pb(member)
    assert built == pb.Upstream(
        id="u", name="U", url="http://127.0.0.1:5000", position=1, cache_validity_hours=24
    )
    assert servicer._member_pb(member) is built
    renamed = RegistryUpstream(dataclasses.replace(UPSTREAM, name="V"), 1)
    assert servicer._member_pb(renamed).name == "V"
    # A response made from it is a copy: changing the response leaves the kept one alone.
    response = pb.ResolveUpstreamResponse(upstream=built)
    response.upstream.name = "changed"
    assert servicer._member_pb(member).name == "U"


@pytest.mark.parametrize(
    "seconds", [0.0, 1.5, -1.25, 1_764_590_000.123456789, 1e-9, -3.3e-7, 253_402_300_799.0]
)
def test_timestamp_is_what_from_nanoseconds_sets(seconds: float) -> None:
    expected = Timestamp()
    expected.FromNanoseconds(int(seconds * 1e9))
    assert timestamp(seconds) == expected


def test_the_encoding_is_the_dataclass_fields_in_order() -> None:
    answer = CachedAnswer(
        found=True,
        attempts=(
            Attempt("r1", 1, Outcome.NOT_FOUND, 404, 1.5, "not here", 0, "NOT_FOUND"),
            Attempt("r2", 2, Outcome.FOUND, 200),
        ),
        checked_at=1.5,
        expires_at=None,
        stale_until=2.5,
        upstream_id="r2",
        position=2,
        url="http://r2/v2/a/manifests/sha256:ab",
        digest="sha256:ab",
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=10,
    )
    former = dataclasses.asdict(answer)
    former["attempts"] = [
        [a.upstream_id, a.position, a.outcome.value, a.http_status, a.latency_ms, a.message,
         a.retry_after_seconds, a.reason]
        for a in answer.attempts
    ]  # fmt: skip
    assert encode(answer) == json.dumps(former, separators=(",", ":"))


def _full_scan(record: logging.LogRecord) -> list[tuple[str, object]]:
    return [
        (key, value)
        for key, value in vars(record).items()
        if key not in logs._STANDARD_ATTRS and not key.startswith("_")
    ]


def test_extra_fields_are_those_of_a_full_scan_in_any_attribute_order() -> None:
    made = logging.getLogger("vregistry.audit").makeRecord(
        "vregistry.audit", logging.INFO, "f", 1, "m", (), None, extra={"b": "1", "a": 2}
    )
    made._private = "x"
    made.message = "set by another formatter"
    # The same attributes, extras first: the shortcut does not apply, the full scan does.
    shuffled = logging.LogRecord.__new__(logging.LogRecord)
    shuffled.__dict__.update(reversed(list(vars(made).items())))
    for record in (made, shuffled, logging.makeLogRecord({"msg": "m", "z": "1"})):
        fields, all_strings = logs._extra_fields(record)
        assert fields == _full_scan(record)
        assert all_strings == all(type(value) is str for _, value in fields)
    assert logs._extra_fields(made) == ([("b", "1"), ("a", 2)], False)
