"""The log redaction step: secrets masked, ordinary words left alone."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vregistry_server.runtime import logs
from vregistry_server.runtime.logs import JsonFormatter, redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abcdef123456", "abcdef123456"),
        ("Authorization: Basic YWxpY2U6czNjcmV0", "YWxpY2U6czNjcmV0"),
        (f"got {JWT} back", JWT),
        ("grant_type=password&username=bob&password=hunter22&x=1", "hunter22"),
        ("refresh_token=rt-9f8e7d", "rt-9f8e7d"),
        ('{"access_token": "at-123456", "expires_in": 60}', "at-123456"),
        (json.dumps({"msg": '{"token": "tk-654321"}'}), "tk-654321"),
        ('{"Authorization": "Bearer abc123def"}', "abc123def"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"),
        ("header Basic YWI6Y2Q= sent", "YWI6Y2Q="),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    assert secret not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "registry 'R' (open: not_found (HTTP 404); token: not_found (HTTP 404))",
        "upstream 'Token' answered HTTP 401",
        "scope repository:private/app:pull",
        # Values are masked, not words: the scheme names in prose stay readable.
        "upstream 'u' already exists",
        "Basic authentication failed for upstream 'u'",
        "bearer tokens are cached in Redis",
        'challenge Bearer realm="https://auth.example/token",service="registry"',
        'challenge Bearer service="registry",realm="https://auth.example/token"',
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact(text) == text


def test_formatter_redacts_message_and_extra_fields() -> None:
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "header Bearer abcdef123456", (), None
    )
    record.detail = f"password=hunter22 {JWT}"
    line = JsonFormatter().format(record)
    assert "abcdef123456" not in line and "hunter22" not in line and JWT not in line
    assert json.loads(line)["msg"] == "header Bearer [REDACTED]"


def _every_pattern(text: str) -> str:
    """redact without its shortcuts: all four patterns on every text."""
    patterns = logs._SECRET_PATTERNS
    text = patterns[0].sub(
        lambda m: f"{m.group(1)} [REDACTED]" if logs._credential_value(m) else m.group(0), text
    )
    text = patterns[1].sub("[REDACTED-JWT]", text)
    text = patterns[2].sub(lambda m: f"{m.group(1)}[REDACTED]", text)
    return patterns[3].sub(lambda m: f"{m.group(1)}[REDACTED]", text)


_PIECES = (
    *("Bearer ", "basic\t", "BEARER", "bEaReR  ", "Basic authentication failed", 'service="x"'),
    *("token=", "Token", "password=", 'passwd":"', "secret", "client_secret=", "ACCESS_TOKEN"),
    *('refresh_token\\": \\"', "eyJ", JWT, "abcdefghij1234", "dG9rZW4=", "xyz", " ", '"'),
    *("'", ":", "=", "&", "\n", "\x1c", "\xe9"),
    *("\u017f", "\u212a", "\u0130", "\u0131"),  # long s, Kelvin, dotted and dotless I
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=10).map("".join))
def test_shortcuts_change_nothing(text: str) -> None:
    # The word checks only skip scans that could not match (case rules included).
    assert redact(text) == _every_pattern(text)
