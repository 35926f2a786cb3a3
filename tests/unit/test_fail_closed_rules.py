"""The fail-closed rule as functions: which listen addresses count as loopback, what makes
a server open, the refusal message, the opt-out and its repeated warning (the real
process: tests/system/test_fail_closed.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from vregistry_server.admin.callers import Callers, hash_token
from vregistry_server.config import build_config
from vregistry_server.runtime import admin_setup
from vregistry_server.runtime.admin_setup import (
    AdminOptions,
    AdminSetupError,
    check_fail_closed,
    is_loopback_listen,
    keep_warning_unauthenticated,
)
from vregistry_server.runtime.main import parse_args, start_server

CALLERS = Callers.parse(f"{hash_token('t-1')} ops admin,resolver *\n")


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:0", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("192.0.2.10:50051", False),
        ("registry.example.com:50051", False),
        ("unix:/run/vregistry.sock", False),
        ("no-port", False),
    ],
)
def test_loopback_listen_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback_listen(listen) is loopback


@pytest.mark.parametrize(
    ("options", "listen", "needle"),
    [
        (AdminOptions(store="sqlite"), "127.0.0.1:50051", "ConfigService is on (--store sqlite)"),
        (AdminOptions(store="memory"), "127.0.0.1:50051", "ConfigService is on (--store memory)"),
        (AdminOptions(), "0.0.0.0:50051", "listens on 0.0.0.0:50051, not a loopback address"),
        (AdminOptions(store="redis"), "[::]:1", "ConfigService is on (--store redis) and"),
    ],
)
def test_open_servers_are_refused_with_what_to_add(
    options: AdminOptions, listen: str, needle: str
) -> None:
    with pytest.raises(AdminSetupError) as info:
        check_fail_closed(options, listen)
    message = str(info.value)
    assert needle in message
    assert "--callers-file" in message and "--allow-unauthenticated" in message
    assert "VREGISTRY_ALLOW_UNAUTHENTICATED=true" in message


@pytest.mark.parametrize(
    ("options", "listen"),
    [
        (AdminOptions(), "127.0.0.1:50051"),  # make serve: plain and on loopback
        (AdminOptions(store="sqlite", callers=CALLERS), "0.0.0.0:50051"),
        (AdminOptions(callers=CALLERS), "[::]:50051"),
    ],
)
def test_authenticated_or_loopback_only_servers_start(options: AdminOptions, listen: str) -> None:
    assert check_fail_closed(options, listen) == []


def test_the_opt_out_returns_what_was_accepted() -> None:
    options = AdminOptions(store="memory", allow_unauthenticated=True)
    assert check_fail_closed(options, "0.0.0.0:1") == [
        "ConfigService is on (--store memory)",
        "the server listens on 0.0.0.0:1, not a loopback address",
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, False), ({"VREGISTRY_ALLOW_UNAUTHENTICATED": "true"}, True), ({"X": "1"}, False)],
)
def test_the_flag_and_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: bool
) -> None:
    monkeypatch.delenv("VREGISTRY_ALLOW_UNAUTHENTICATED", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert parse_args([]).allow_unauthenticated is expected
    assert parse_args(["--allow-unauthenticated"]).allow_unauthenticated is True
    args = parse_args(["--allow-unauthenticated", "--store", "memory"])
    options = admin_setup.options_from_args(args, build_config({}), env={})
    assert options.allow_unauthenticated is True


async def test_start_server_refuses_before_binding() -> None:
    """In-process too: the check runs before the gRPC server (and its port) exists."""
    with pytest.raises(AdminSetupError, match="not a loopback address"):
        await start_server(build_config({}), "0.0.0.0:0")


async def test_the_warning_repeats(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vregistry_server.runtime.admin_setup")
    task = asyncio.create_task(
        keep_warning_unauthenticated(["ConfigService is on (--store memory)"], interval=0.01)
    )
    await asyncio.sleep(0.1)
    task.cancel()
    warnings = [r for r in caplog.records if "caller authentication is off" in r.getMessage()]
    assert len(warnings) >= 3
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert "change the configuration" in warnings[0].getMessage()
    assert admin_setup.UNAUTHENTICATED_WARNING_SECONDS == 3600.0
