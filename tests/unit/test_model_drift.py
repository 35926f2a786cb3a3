"""One definition of an upstream and a registry: every consumer must carry every model field.

The field names are read from model.py programmatically, so a field added there
fails here until the YAML loader, the stored document, the seed, the update mask
and the ConfigService mapping all carry it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from vregistry.v1 import config_service_pb2 as cpb
from vregistry_server.admin.crypto import Keyring, generate_key_line
from vregistry_server.admin.manager import UPSTREAM_FIELDS, ConfigManager, UpstreamInput
from vregistry_server.admin.records import (
    REQUEST_FIELD_NAMES,
    RegistryRecord,
    UpstreamRecord,
    registry_from_doc,
    registry_to_doc,
    upstream_from_doc,
    upstream_to_doc,
)
from vregistry_server.admin.stores.memory import MemoryStore
from vregistry_server.config import UpstreamEntry, build_config
from vregistry_server.model import Credentials, Registry, Upstream
from vregistry_server.resolver import Resolver
from vregistry_server.rpc.config_servicer import _upstream_input, upstream_to_pb

UPSTREAM_FIELDS_OF_MODEL = [f.name for f in dataclasses.fields(Upstream)]
# Model fields every consumer maps by hand, each for a stated reason.
BY_HAND = {
    "id": "part of the resource name (groups/{group}/upstreams/{id}), not of the body",
    "credentials": "write-only: username + password in, has_credentials out; sealed at rest",
    "group": "part of the resource name (groups/{group}/...), fixed at create: not in a body or mask",
    "source": "set by the service (YAML: operator, ConfigService: api), never by a request;"
    " stored in the document",
}
# Model fields the YAML file does not spell: everything in it is the operator's.
NOT_IN_YAML = {"source": "a YAML upstream is always source 'operator'"}


def _distinct_value(name: str, annotation: Any) -> Any:
    """A valid value that differs from the field's default, chosen by the field's type."""
    special = {
        "id": "drift-1",
        "group": "drift-group",
        "url": "https://registry.example.com",
        "token_flow": "oauth2",
        "realm_allow_hosts": ("auth.example.net", "*.tokens.example.org"),
        "allowed_actions": ("pull", "push"),
        "source": "api",
        "credentials": Credentials("drift-user", "drift-password"),
        "cache_validity_hours": 7,
        "allow_http": True,
    }
    if name in special:
        return special[name]
    assert annotation is str, f"add a distinct value for the new field {name!r} ({annotation})"
    return f"value of {name}"


def _full_upstream() -> Upstream:
    hints = typing.get_type_hints(Upstream)
    values = {name: _distinct_value(name, hints[name]) for name in UPSTREAM_FIELDS_OF_MODEL}
    upstream = Upstream(**values)
    defaults = Upstream(id="x", name="x", url="https://x.example")
    for name in UPSTREAM_FIELDS_OF_MODEL:
        if name not in {"id", "name", "url"}:
            assert getattr(upstream, name) != getattr(defaults, name), name
    return upstream


def test_yaml_entry_has_every_model_field() -> None:
    yaml_fields = set(UpstreamEntry.model_fields)
    for name in UPSTREAM_FIELDS_OF_MODEL:
        if name in NOT_IN_YAML:
            assert name not in yaml_fields, name
        elif name == "credentials":
            assert {"username", "password_env", "password_file"} <= yaml_fields
        else:
            assert name in yaml_fields, f"config.UpstreamEntry lacks model field {name!r}"


def test_yaml_loader_fills_every_model_field() -> None:
    full = _full_upstream()
    entry: dict[str, Any] = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(full).items()
        if name != "credentials" and name not in NOT_IN_YAML
    }
    assert full.credentials is not None
    entry.update(username=full.credentials.username, password_env="DRIFT_PW")
    config = build_config(
        {"upstreams": [entry]}, source="drift", env={"DRIFT_PW": full.credentials.password}
    )
    assert config.upstreams[full.id] == dataclasses.replace(full, source="operator")


def test_stored_document_round_trips_every_model_field() -> None:
    keyring = Keyring.parse(generate_key_line("k1"))
    record = UpstreamRecord(upstream=_full_upstream(), version=3, create_time=1.5)
    doc = upstream_to_doc(record, keyring)
    for name in UPSTREAM_FIELDS_OF_MODEL:
        assert name in doc, f"the stored document lacks model field {name!r}"
    assert "drift-password" not in repr(doc), "credentials are stored sealed"
    assert upstream_from_doc(doc, keyring) == record


def test_registry_record_mirrors_the_model() -> None:
    record_fields = {f.name for f in dataclasses.fields(RegistryRecord)}
    for f in dataclasses.fields(Registry):
        expected = "members" if f.name == "upstreams" else f.name
        assert expected in record_fields, f"RegistryRecord lacks model field {f.name!r}"
    record = RegistryRecord(group="g", id="r", name="R", description="d", members=("a", "b"))
    assert registry_from_doc(registry_to_doc(record)) == record


def test_proto_carries_every_model_field() -> None:
    proto_fields = set(cpb.UpstreamConfig.DESCRIPTOR.fields_by_name)
    for name in UPSTREAM_FIELDS_OF_MODEL:
        if name in BY_HAND:
            continue
        assert REQUEST_FIELD_NAMES.get(name, name) in proto_fields, (
            f"UpstreamConfig lacks model field {name!r}"
        )
    assert {"username", "password", "has_credentials"} <= proto_fields


def test_update_mask_names_every_model_field() -> None:
    for name in UPSTREAM_FIELDS_OF_MODEL:
        if name in {"id", "group", "source"}:  # in the resource name / set by the service
            continue
        if name == "credentials":
            assert {"username", "password"} <= set(UPSTREAM_FIELDS)
        else:
            assert REQUEST_FIELD_NAMES.get(name, name) in UPSTREAM_FIELDS, name


def test_proto_mapping_round_trips_every_model_field() -> None:
    full = _full_upstream()
    message = upstream_to_pb(UpstreamRecord(upstream=full))
    assert message.has_credentials and not message.password
    data = _upstream_input(message)
    for name in UPSTREAM_FIELDS_OF_MODEL:
        if name in BY_HAND:
            continue
        assert data.model_value(REQUEST_FIELD_NAMES.get(name, name)) == getattr(full, name), name


async def _manager_seeded_with(upstream: Upstream) -> ConfigManager:
    config = build_config({}, source="drift")
    manager = ConfigManager(MemoryStore(), Resolver(config), config.settings)
    await manager.start(dataclasses.replace(config, upstreams={upstream.id: upstream}))
    return manager


async def _close(manager: ConfigManager) -> None:
    await manager.aclose()
    await manager.resolver.aclose()


async def test_seed_keeps_every_model_field() -> None:
    full = _full_upstream()
    manager = await _manager_seeded_with(full)
    try:
        seeded = await manager.get_upstream(f"groups/{full.group}/upstreams/{full.id}")
        assert seeded.upstream == full, "the seed dropped a field"
        assert manager.resolver.config.upstreams[full.id] == full
    finally:
        await _close(manager)


@pytest.mark.parametrize("path", [p for p in UPSTREAM_FIELDS if p not in {"username", "password"}])
async def test_update_mask_path_changes_its_model_field(path: str) -> None:
    full = _full_upstream()
    plain = Upstream(id=full.id, name="plain", url="https://plain.example.com")
    manager = await _manager_seeded_with(plain)
    try:
        name = f"groups/default/upstreams/{plain.id}"
        data = UpstreamInput(
            **{
                REQUEST_FIELD_NAMES.get(n, n): getattr(full, n)
                for n in UPSTREAM_FIELDS_OF_MODEL
                if n not in BY_HAND
            }
        )
        await manager.update_upstream(name, "", [path], data)
        updated = (await manager.get_upstream(name)).upstream
        model_name = {v: k for k, v in REQUEST_FIELD_NAMES.items()}.get(path, path)
        assert getattr(updated, model_name) == getattr(full, model_name)
        assert getattr(updated, model_name) != getattr(plain, model_name)
        assert manager.resolver.config.upstreams[plain.id] == updated
    finally:
        await _close(manager)
