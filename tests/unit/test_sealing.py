"""The sealed-credential document functions: what the associated data binds, the
unreadable marker, the cache by sealed value, and the start-time re-seal check."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vregistry_server.admin.crypto import DecryptError, Keyring, generate_key_line
from vregistry_server.admin.records import (
    UpstreamRecord,
    check_resealed,
    credentials_aad,
    legacy_credentials_aad,
    open_credentials,
    reseal_doc,
    upstream_from_doc,
    upstream_to_doc,
)
from vregistry_server.model import Credentials, Upstream

KEYRING = Keyring.parse(generate_key_line("k1"))
UPSTREAM = Upstream(
    id="up",
    name="Up",
    url="https://one.example",
    group="team-a",
    credentials=Credentials("user-1", "pw-sealed-1"),
)


def _doc(upstream: Upstream = UPSTREAM) -> dict[str, object]:
    return upstream_to_doc(UpstreamRecord(upstream=upstream), KEYRING)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "other"),
        ("group", "team-b"),
        ("url", "https://attacker.example"),
        ("url", "https://one.example/"),  # not the normalised form it was sealed for
        ("allow_http", True),
    ],
)
def test_every_bound_field_breaks_the_seal(field: str, value: object) -> None:
    doc = _doc()
    assert upstream_from_doc(doc, KEYRING).upstream == UPSTREAM
    loaded = upstream_from_doc({**doc, field: value}, KEYRING).upstream
    assert loaded.credentials is not None and loaded.credentials.unreadable == doc["credentials"]
    assert loaded.credentials.password == "" and loaded.credentials.username == ""
    assert "pw-sealed-1" not in repr(loaded)


def test_unbound_fields_leave_the_seal_intact() -> None:
    doc = _doc()
    loaded = upstream_from_doc({**doc, "name": "Renamed", "description": "d"}, KEYRING).upstream
    assert loaded.credentials == UPSTREAM.credentials


def test_the_marker_is_written_back_unchanged() -> None:
    doc = _doc()
    tampered = upstream_from_doc({**doc, "url": "https://attacker.example"}, KEYRING)
    renamed = dataclasses.replace(
        tampered, upstream=dataclasses.replace(tampered.upstream, name="N")
    )
    again = upstream_to_doc(renamed, KEYRING)
    assert again["credentials"] == doc["credentials"]


def test_opened_credentials_are_cached_by_sealed_value() -> None:
    doc = _doc(dataclasses.replace(UPSTREAM, id="cached"))
    sealed = str(doc["credentials"])
    associated = credentials_aad(upstream_from_doc(doc, KEYRING).upstream)
    first = open_credentials(sealed, associated, KEYRING)
    assert open_credentials(sealed, associated, KEYRING) is first, "no second derivation"
    assert (
        first.fingerprint and first.fingerprint == Credentials("user-1", "pw-sealed-1").fingerprint
    )


def test_reseal_migrates_the_legacy_binding_and_rotates_keys() -> None:
    doc = _doc()
    plain = json.dumps({"u": "user-1", "p": "pw-sealed-1"}).encode()
    legacy = {**doc, "credentials": KEYRING.seal(plain, legacy_credentials_aad("up"))}
    assert reseal_doc(doc, KEYRING)[0] == "current"
    outcome, fresh = reseal_doc(legacy, KEYRING)
    assert outcome == "resealed"
    assert upstream_from_doc(fresh, KEYRING).upstream == UPSTREAM
    # The legacy binding is accepted by the start-time re-seal only, never by a load.
    loaded = upstream_from_doc(legacy, KEYRING).upstream.credentials
    assert loaded is not None and loaded.unreadable
    rotated = Keyring.parse(generate_key_line("k2") + "\n" + generate_key_line("k1"))
    assert reseal_doc(doc, rotated)[0] == "unreadable"  # a different "k1": wrong key
    assert reseal_doc({**doc, "credentials": None}, KEYRING)[0] == "none"


def test_reseal_refuses_a_key_the_keyring_lacks() -> None:
    other = Keyring.parse(generate_key_line("k9"))
    with pytest.raises(DecryptError, match="does not hold"):
        reseal_doc(_doc(), other)


def test_check_resealed_refuses_when_nothing_opens() -> None:
    with pytest.raises(DecryptError, match="wrong key or tampered"):
        check_resealed({"a": "unreadable", "b": "unreadable", "c": "none"}, "store")
    check_resealed({"a": "unreadable", "b": "current"}, "store")  # one tampered record: go on
    check_resealed({"c": "none"}, "store")
