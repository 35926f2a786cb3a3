"""Ids are matched whole: a trailing newline (which ``re.match`` with ``$`` lets through)
or any other extra character is refused, for upstream, registry, group and key ids."""

from __future__ import annotations

import pytest

from vregistry_server.admin.crypto import Keyring, KeyringError, generate_key_line
from vregistry_server.config import ConfigError, build_config
from vregistry_server.rules import FieldError, check_id

BAD_IDS = ["hub\n", "hub\r\n", "hub\x00", " hub", "hub ", "hub/x"]


@pytest.mark.parametrize("value", BAD_IDS)
def test_check_id_refuses_anything_around_the_id(value: str) -> None:
    with pytest.raises(FieldError, match="is not a valid id"):
        check_id("id", value)


def test_check_id_accepts_a_plain_id() -> None:
    assert check_id("id", "hub-1.x_y") == "hub-1.x_y"


@pytest.mark.parametrize("value", ["hub\n", "hub\r\n"])
def test_the_yaml_loader_refuses_a_trailing_newline_in_an_id(value: str) -> None:
    document = {"upstreams": [{"id": value, "name": "Hub", "url": "https://hub.example"}]}
    with pytest.raises(ConfigError, match="field 'id'"):
        build_config(document, source="ids")


@pytest.mark.parametrize("key_id", ["k1\n", "k1 ", "k1\x00"])
def test_key_ids_are_matched_whole(key_id: str) -> None:
    line = generate_key_line("k1")
    with pytest.raises(KeyringError, match="key id"):
        Keyring([(key_id, b"\x00" * 32)])
    with pytest.raises(KeyringError, match="key id"):
        generate_key_line(key_id)
    assert Keyring.parse(line).primary_id == "k1"
