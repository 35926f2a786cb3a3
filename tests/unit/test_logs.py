"""The log redaction step: secrets masked, ordinary words left alone."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator

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


def _reference_line(record: logging.LogRecord) -> str:
    """The line as formatted before the tail cache: the whole entry dumped and redacted."""
    import time

    entry: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in logs._STANDARD_ATTRS and not key.startswith("_"):
            plain = isinstance(value, int | float | bool) or value is None
            entry[key] = value if plain else str(value)
    if record.exc_info and record.exc_info[0] is not None:
        entry["exc_type"] = record.exc_info[0].__name__
        entry["exc"] = JsonFormatter().formatException(record.exc_info)
    return redact(json.dumps(entry, ensure_ascii=False, default=str))


def _record(msg: str, created: float, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("vregistry.audit", logging.INFO, __file__, 1, msg, (), None)
    record.created, record.msecs = created, (created % 1) * 1000
    for key, value in extra.items():
        setattr(record, key, value)
    return record


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_PIECES).map(lambda piece: "credentials disclosed " + piece),
            st.sampled_from(("alice-a", "bob", *_PIECES)),
            st.one_of(st.sampled_from(_PIECES), st.integers(0, 2), st.booleans(), st.none()),
            st.floats(1.7e9, 1.8e9),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_cached_lines_equal_the_whole_line_redacted(
    lines: list[tuple[str, str, object, float]],
) -> None:
    # One formatter for all, and each record twice: the second is served from the cache.
    formatter = JsonFormatter()
    for msg, caller, other, created in lines * 2:
        record = _record(msg, created, audit="credentials_disclosed", caller=caller, other=other)
        assert formatter.format(record) == _reference_line(record)


def test_the_tail_cache_is_bounded_and_skips_exceptions() -> None:
    formatter = JsonFormatter()
    for n in range(logs._TAIL_CACHE_SIZE * 2 + 3):
        formatter.format(_record("disclosed", 1.8e9, caller=f"c{n}"))
    assert 0 < len(formatter._tails) <= logs._TAIL_CACHE_SIZE
    try:
        raise ValueError("password=hunter22")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    assert formatter.format(record) == _reference_line(record)
    assert "hunter22" not in formatter.format(record)


AUDIT_FIELDS = (
    ("audit", "credentials_disclosed"),
    ("method", "GetAuthHeaders"),
    ("caller", "ops"),
    ("group", "team-a"),
    ("upstream_id", "up-1"),
    ("scheme", "bearer"),
)


@pytest.fixture
def service_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The root logger as configure_logging leaves it, writing to a string; one clock."""
    stream = io.StringIO()
    handler = logs.JsonLineHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    monkeypatch.setattr(time, "time", lambda: 1_764_600_000.0421)
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_direct_audit_lines_are_the_lines_logging_writes(service_logging: io.StringIO) -> None:
    logger = logging.getLogger("vregistry.test-audit")
    logs.AuditLines(logger).info("credentials disclosed", AUDIT_FIELDS)
    logs.AuditLines(logger).info("credentials disclosed", AUDIT_FIELDS)  # from the tail cache
    logger.info("credentials disclosed", extra=dict(AUDIT_FIELDS))
    first, second, by_logging = service_logging.getvalue().splitlines()
    assert first == second == by_logging
    assert json.loads(first)["ts"] == "2025-12-01T14:40:00.042Z"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("change", ["handler", "filter", "root-filter", "disabled", "level"])
def test_any_other_logging_configuration_gets_real_records(
    service_logging: io.StringIO, change: str
) -> None:
    logger = logging.getLogger(f"vregistry.test-audit-{change}")
    extra = _Records()
    if change == "handler":
        logger.addHandler(extra)
    elif change == "filter":
        logger.addFilter(lambda record: record.getMessage() != "credentials disclosed")
    elif change == "root-filter":
        logging.getLogger().handlers[0].addFilter(lambda record: False)
    elif change == "disabled":
        logger.disabled = True
    else:
        logger.setLevel(logging.WARNING)
    try:
        logs.AuditLines(logger).info("credentials disclosed", AUDIT_FIELDS)
    finally:
        logger.removeHandler(extra)
        logger.filters.clear()
        logging.getLogger().handlers[0].filters.clear()
        logger.disabled = False
        logger.setLevel(logging.NOTSET)
    # Exactly what logger.info does under that configuration: here, nothing on the
    # service's stream except through the capture handler's propagation.
    if change == "handler":
        assert len(extra.records) == 1 and extra.records[0].caller == "ops"  # type: ignore[attr-defined]
        assert service_logging.getvalue().count("credentials disclosed") == 1
    else:
        assert service_logging.getvalue() == ""
