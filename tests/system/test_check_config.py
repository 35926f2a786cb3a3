"""``vregistry-server check-config``: the start-up checks without serving. A broken config or
callers file exits 2 with the very message start-up prints; a good one exits 0 with a summary.
Both run the real command, with the same flags and environment variables."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.processes import free_port
from tests.support.server_process import SERVER, server_env
from vregistry_server.admin.callers import hash_token

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"
BAD_FIELD = {
    "upstreams": [
        {"id": "hub", "name": "Hub", "url": "https://registry-1.docker.io"},
        {"id": "ghcr", "name": "GHCR", "url": "http://ghcr.io"},
    ]
}


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A bounded wait: check-config must return at once, never serve.
    return subprocess.run(
        [SERVER, *args],
        env=server_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "bad_yaml": tmp_path / "bad.yaml",
        "bad_field": tmp_path / "bad-field.yaml",
        "bad_callers": tmp_path / "callers-bad.txt",
        "callers": tmp_path / "callers.txt",
    }
    files["bad_yaml"].write_text("upstreams: [\n")
    files["bad_field"].write_text(yaml.safe_dump(BAD_FIELD))
    files["bad_callers"].write_text(f"{hash_token('t0ken')} ops superuser *\n")
    files["callers"].write_text(
        f"{hash_token('t0ken')} ops admin,resolver *\n{hash_token('other')} ci resolver team-a\n"
    )
    return files


# (flags, environment, what the message must say); {name} is a file of _files.
BROKEN = [
    (["--config", "{bad_yaml}"], {}, "{bad_yaml}: not valid YAML at line"),
    (
        ["--config", "{bad_field}"],
        {},
        "{bad_field}: upstreams[1] (id 'ghcr'): field 'url': must use https",
    ),
    ([], {"VREGISTRY_CONFIG": "{bad_field}"}, "field 'url': must use https"),
    (
        ["--config", str(EXAMPLE), "--callers-file", "{bad_callers}"],
        {},
        "{bad_callers}: line 1: unknown role",
    ),
    (
        ["--config", str(EXAMPLE)],
        {"VREGISTRY_CALLERS_FILE": "{bad_callers}"},
        "{bad_callers}: line 1: unknown role",
    ),
    (
        ["--config", str(EXAMPLE), "--callers-file", "{bad_callers}.missing"],
        {},
        "cannot read callers file",
    ),
    # Fail closed, as at start: no caller authentication on a non-loopback address.
    (
        ["--config", str(EXAMPLE), "--listen", "0.0.0.0:50051"],
        {},
        "refusing to start without caller authentication",
    ),
]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    BROKEN,
    ids=[
        "bad-yaml",
        "bad-field",
        "bad-field-env",
        "bad-callers",
        "bad-callers-env",
        "missing-callers",
        "fail-closed",
    ],
)
def test_broken_exits_2_with_the_start_up_message(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    files = _files(tmp_path)
    args = [a.format(**files) for a in args]
    env = {k: v.format(**files) for k, v in env.items()}
    checked = _run(["check-config", *args], env)
    assert checked.returncode == 2, checked
    assert message.format(**files) in checked.stderr
    assert checked.stdout == ""
    if env:
        return  # the flag twin of this case compares with start-up already
    # Start-up refuses the same input with the same words (and also exits 2, unserved).
    started = _run(
        args if "--listen" in args else [*args, "--listen", f"127.0.0.1:{free_port()}"], env
    )
    assert started.returncode == 2, started
    assert checked.stderr == started.stderr


def test_good_config_and_callers_exit_0_with_a_summary(tmp_path: Path) -> None:
    files = _files(tmp_path)
    checked = _run(
        ["check-config", "--config", str(EXAMPLE), "--callers-file", str(files["callers"])]
    )
    assert checked.returncode == 0, checked
    assert checked.stdout.startswith(f"vregistry-server: configuration OK: {EXAMPLE}: ")
    assert "upstreams 3, registries 1" in checked.stdout
    assert f"callers {files['callers']} (2)" in checked.stdout


def test_environment_applies_as_at_start(tmp_path: Path) -> None:
    """VREGISTRY_* variables are read as at start: the config, listen and Redis URL; the
    Redis URL's password is not in the summary."""
    checked = _run(
        ["check-config"],
        {
            "VREGISTRY_CONFIG": str(EXAMPLE),
            "VREGISTRY_LISTEN": "127.0.0.1:50999",
            "VREGISTRY_REDIS_URL": "redis://:s3cret-pw@127.0.0.1:6379/0",
        },
    )
    assert checked.returncode == 0, checked
    assert f"configuration OK: {EXAMPLE}:" in checked.stdout
    assert "listen 127.0.0.1:50999" in checked.stdout
    assert "token cache redis" in checked.stdout
    assert "s3cret-pw" not in checked.stdout + checked.stderr


def test_embedded_default_config() -> None:
    checked = _run(["check-config"])
    assert checked.returncode == 0, checked
    assert "configuration OK: <embedded default config>:" in checked.stdout
