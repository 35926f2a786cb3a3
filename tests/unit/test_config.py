"""Config validation: every refusal names the file, the entry and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vregistry_server.config import ConfigError, build_config, load_config
from vregistry_server.model import Credentials

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


def _config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "upstreams": [{"id": "hub", "name": "Hub", "url": "https://registry-1.docker.io"}],
        "registries": [{"id": "default", "name": "Default", "upstreams": ["hub"]}],
    }
    data.update(overrides)
    return data


def _error(data: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(data, source="test.yaml", env=env or {})
    return str(info.value)


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.registries["default"].upstreams[0].upstream.id == "dockerhub"
    assert [m.position for m in config.registries["default"].upstreams] == [1, 2, 3]
    assert config.settings.redis_url is None
    assert config.settings.token_cache_max_ttl_seconds == 180


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://registry-1.docker.io", "https://registry-1.docker.io"),
        ("https://registry-1.docker.io/", "https://registry-1.docker.io"),
        ("https://registry-1.docker.io/v2", "https://registry-1.docker.io"),
        ("https://registry-1.docker.io/v2/", "https://registry-1.docker.io"),
        (
            "https://example.com/artifactory/api/docker/repo/v2/",
            "https://example.com/artifactory/api/docker/repo",
        ),
        ("https://example.com:8443", "https://example.com:8443"),
    ],
)
def test_url_normalized_as_gitlab_does(url: str, expected: str) -> None:
    config = build_config(
        _config(upstreams=[{"id": "u", "name": "U", "url": url}], registries=[]), env={}
    )
    assert config.upstreams["u"].url == expected
    assert (
        config.upstreams["u"].url_for("a/b/manifests/latest")
        == f"{expected}/v2/a/b/manifests/latest"
    )


@pytest.mark.parametrize(
    ("upstream", "needle"),
    [
        ({"url": "http://example.com"}, "field 'url': must use https"),
        ({"url": "ftp://example.com"}, "field 'url': must be an http(s) URL"),
        ({"url": "https://user:pw@example.com"}, "field 'url': must not carry credentials"),
        ({"url": "https://example.com/?x=1"}, "field 'url': must not have a query string"),
        ({"url": "https://"}, "field 'url': has no host"),
        ({"username": "bob"}, "field 'password_env': a username is set but no password_env"),
        ({"password_env": "PW"}, "field 'username': a password is set but no username"),
        ({"username": "bob", "password_env": "MISSING"}, "environment variable MISSING is not set"),
        (
            {"username": "bob", "password_file": "/nonexistent/pw"},
            "field 'password_file': cannot read",
        ),
        ({"username": "bob", "password_env": "PW", "password_file": "/x"}, "not both"),
        ({"cache_validity_hours": -1}, "field 'cache_validity_hours'"),
        ({"password": "inline"}, "field 'password': Extra inputs are not permitted"),
        ({"name": ""}, "field 'name'"),
    ],
)
def test_invalid_upstream_names_file_entry_and_field(upstream: dict[str, Any], needle: str) -> None:
    entry = {"id": "hub", "name": "Hub", "url": "https://registry-1.docker.io", **upstream}
    message = _error(_config(upstreams=[entry]))
    assert "test.yaml: upstreams[0] (id 'hub')" in message
    assert needle in message


def test_http_allowed_only_when_asked() -> None:
    entry = {"id": "local", "name": "Local", "url": "http://127.0.0.1:5000", "allow_http": True}
    config = build_config(_config(upstreams=[entry], registries=[]), env={})
    assert config.upstreams["local"].url == "http://127.0.0.1:5000"


def test_credentials_by_reference(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file-secret\n")
    upstreams = [
        {"id": "a", "name": "A", "url": "https://a.example", "username": "u", "password_env": "PW"},
        {
            "id": "b",
            "name": "B",
            "url": "https://b.example",
            "username": "u",
            "password_file": str(secret),
        },
    ]
    config = build_config(
        _config(upstreams=upstreams, registries=[]), env={"PW": "from-env-secret"}
    )
    assert config.upstreams["a"].credentials == Credentials("u", "from-env-secret")
    assert config.upstreams["b"].credentials == Credentials("u", "from-file-secret")
    assert "from-env-secret" not in repr(config)
    assert "from-file-secret" not in repr(config)


def test_credential_fingerprint_is_not_the_password() -> None:
    creds = Credentials("u", "hunter2")
    assert "hunter2" not in creds.fingerprint
    assert creds.fingerprint == Credentials("u", "hunter2").fingerprint
    assert creds.fingerprint != Credentials("u", "hunter3").fingerprint
    assert creds.fingerprint != Credentials("v", "hunter2").fingerprint


@pytest.mark.parametrize(
    ("registries", "needle"),
    [
        ([{"id": "r", "name": "R", "upstreams": ["nope"]}], "unknown upstream 'nope'"),
        ([{"id": "r", "name": "R", "upstreams": ["hub", "hub"]}], "upstream 'hub' is listed twice"),
        ([{"id": "r", "name": "R"}, {"id": "r", "name": "R2"}], "duplicate registry id"),
        ([{"id": "bad id!", "name": "R"}], "field 'id'"),
    ],
)
def test_invalid_registry(registries: list[dict[str, Any]], needle: str) -> None:
    message = _error(_config(registries=registries))
    assert "test.yaml: registries[" in message
    assert needle in message


def test_upstream_limit_per_registry_is_configurable() -> None:
    upstreams = [{"id": f"u{i}", "name": f"U{i}", "url": f"https://u{i}.example"} for i in range(4)]
    registries = [{"id": "r", "name": "R", "upstreams": [u["id"] for u in upstreams]}]
    message = _error(
        _config(
            upstreams=upstreams, registries=registries, settings={"max_upstreams_per_registry": 3}
        )
    )
    assert "4 upstreams, at most 3 allowed" in message
    config = build_config(_config(upstreams=upstreams, registries=registries), env={})
    assert [m.position for m in config.registries["r"].upstreams] == [1, 2, 3, 4]


def test_default_limit_is_twenty() -> None:
    upstreams = [
        {"id": f"u{i}", "name": f"U{i}", "url": f"https://u{i}.example"} for i in range(21)
    ]
    registries = [{"id": "r", "name": "R", "upstreams": [u["id"] for u in upstreams]}]
    assert "21 upstreams, at most 20 allowed" in _error(
        _config(upstreams=upstreams, registries=registries)
    )


def test_duplicate_upstream_id() -> None:
    entry = {"id": "hub", "name": "Hub", "url": "https://registry-1.docker.io"}
    assert "duplicate upstream id" in _error(_config(upstreams=[entry, entry]))


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_bad_settings() -> None:
    assert "field 'settings.redis_url'" in _error(_config(settings={"redis_url": "http://x"}))
    assert "field 'settings.probe_concurrency'" in _error(
        _config(settings={"probe_concurrency": 0})
    )
    assert "field 'settings.unknown'" in _error(_config(settings={"unknown": 1}))
