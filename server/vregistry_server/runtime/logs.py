"""Structured JSON logs that cannot carry a credential.

Every record passes a redaction step: Authorization values, bearer tokens,
JWT-looking strings and password parameters are masked before formatting, so
a careless ``extra=`` or exception message still cannot leak a secret.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from vregistry_server.rpc.audit import AuditFields, LoggerAudit

_SECRET_NAMES = r"(?:password|passwd|secret|client_secret|token|access_token|refresh_token)"
_SECRET_PATTERNS = (
    # A scheme and what may be its credentials; _credential_value decides (not a word).
    re.compile(r"(?i)\b(bearer|basic)\s+([A-Za-z0-9._~+/-]{6,}=*)"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    # form and query style: token=abc
    re.compile(rf"(?i)\b({_SECRET_NAMES}=)[^\s&\"',;]+"),
    # JSON style, also inside an already JSON-encoded string: "token": "abc"
    re.compile(rf"(?i)({_SECRET_NAMES}\\?[\"']\s*:\s*\\?[\"'])[^\"'\\]+"),
)
_RECORD_KEYS = list(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_STANDARD_ATTRS = frozenset({*_RECORD_KEYS, "message", "asctime", "taskName"})


_AUTH_PARAM = re.compile(r"[a-z_]+=")  # service="x" in a challenge: a name, not a value


def _credential_value(match: re.Match[str]) -> bool:
    """Whether the word after "Bearer"/"Basic" looks like a credential rather than prose.

    Tokens and base64 carry digits or symbols, or are long; "Basic authentication
    failed", "bearer tokens" and a challenge's ``service="..."`` stay readable.
    """
    value = match.group(2)
    if _AUTH_PARAM.fullmatch(value):
        return False
    bare = value.rstrip(".")
    return len(bare) >= 20 or any(c.isdigit() or c in "+/_~-=." for c in bare)


# Each pattern needs one of these words (ASCII, case-insensitive), so a line without it
# skips that pattern's scan: case-insensitive alternations are slow in ``re``, and every
# audit line (one per credential handed out) names a scheme.
_SCHEME_WORDS = ("bearer", "basic")  # pattern 0, and only when whitespace follows
_SECRET_WORDS = ("passw", "secret", "token")  # patterns 2 and 3: every _SECRET_NAMES name


def redact(text: str) -> str:
    # Non-ASCII text gets every scan: under IGNORECASE U+017F (long s) matches "s", U+212A
    # (Kelvin) "k", and so on.
    lowered = text.lower() if text.isascii() else None
    if lowered is None or any(_word_then_space(lowered, w) for w in _SCHEME_WORDS):
        text = _SECRET_PATTERNS[0].sub(
            lambda m: f"{m.group(1)} [REDACTED]" if _credential_value(m) else m.group(0), text
        )
    if "eyJ" in text:
        text = _SECRET_PATTERNS[1].sub("[REDACTED-JWT]", text)
    # The replacements above add no secret word, so the original text decides.
    if lowered is None or any(w in lowered for w in _SECRET_WORDS):
        text = _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}[REDACTED]", text)
        text = _SECRET_PATTERNS[3].sub(lambda m: f"{m.group(1)}[REDACTED]", text)
    return text


def _word_then_space(lowered: str, word: str) -> bool:
    """Whether ``word`` occurs followed by whitespace (what pattern 0's ``\\s+`` needs)."""
    at = lowered.find(word)
    while at >= 0:
        after = at + len(word)
        if after < len(lowered) and lowered[after].isspace():
            return True
        at = lowered.find(word, at + 1)
    return False


def _extra_fields(record: logging.LogRecord) -> tuple[list[tuple[str, Any]], bool]:
    """The record's own fields (not LogRecord's, not private) in their order, and whether
    every value is a string.

    A record made by LogRecord.__init__ holds its standard attributes first, in
    ``_RECORD_KEYS`` order, and makeRecord adds ``extra`` after them: one comparison of the
    key list skips them all (they would all be filtered out), instead of a test for each of
    the ~20 on every line. Any other record is scanned whole.
    """
    attributes = vars(record)
    keys = list(attributes)
    if keys[: len(_RECORD_KEYS)] == _RECORD_KEYS:
        keys = keys[len(_RECORD_KEYS) :]
    fields: list[tuple[str, Any]] = []
    all_strings = True
    for key in keys:
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            value = attributes[key]
            fields.append((key, value))
            all_strings = all_strings and type(value) is str
    return fields, all_strings


# Lines whose extra fields are all strings repeat (one audit line per credential handed
# out names the same caller, group and upstream each time), so the redacted JSON after the
# timestamp is kept for them; bounded, and emptied when full.
_TAIL_CACHE_SIZE = 1024


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._tails: dict[tuple[str, str, str, tuple[tuple[str, Any], ...]], str] = {}
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields, all_strings = _extra_fields(record)
        head = self.head(record.created, record.msecs)
        if (record.exc_info and record.exc_info[0] is not None) or not all_strings:
            return head + self._tail(record.levelname, record.name, message, fields, record)
        return head + self.string_tail(record.levelname, record.name, message, tuple(fields))

    def head(self, created: float, msecs: float) -> str:
        """``{"ts": "…", `` for a record made at ``created`` (``msecs``: its milliseconds)."""
        second = int(created)
        if second != self._second:  # strftime once a second, not once a line
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f'{{"ts": "{self._second_text}.{int(msecs):03d}Z", '

    def string_tail(
        self, levelname: str, name: str, message: str, fields: tuple[tuple[str, str], ...]
    ) -> str:
        """The rest of a line without an exception whose extra fields are all strings."""
        key = (levelname, name, message, fields)
        tail = self._tails.get(key)
        if tail is None:
            if len(self._tails) >= _TAIL_CACHE_SIZE:
                self._tails.clear()
            tail = self._tails[key] = self._tail(levelname, name, message, list(fields), None)
        return tail

    def _tail(
        self,
        levelname: str,
        name: str,
        message: str,
        fields: list[tuple[str, Any]],
        record: logging.LogRecord | None,
    ) -> str:
        """The redacted JSON after ``{"ts": "…", ``: a timestamp (digits, "-", ":", "T",
        ".", "Z") can neither hold nor start a match of any redaction pattern, so redacting
        the rest alone gives the same line as redacting it whole."""
        entry: dict[str, Any] = {"level": levelname.lower(), "logger": name, "msg": message}
        for key, value in fields:
            entry[key] = (
                value if isinstance(value, int | float | bool) or value is None else str(value)
            )
        if record is not None and record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, ensure_ascii=False, default=str)[1:])


class JsonLineHandler(logging.StreamHandler[TextIO]):
    """StreamHandler without the second flush: a line-buffered stream (stderr is one)
    has written the line out at its newline, and ``flush()`` would take the handler's lock
    again to find nothing to do; every audit line (one per credential handed out) comes
    through here. Any other stream is flushed after each line, as StreamHandler does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """One whole line, terminator included (the caller holds the handler's lock)."""
        stream = self.stream
        stream.write(line)
        if not getattr(stream, "line_buffering", False):
            stream.flush()


class AuditLines(LoggerAudit):
    """Audit lines (one per credential handed out, on every hot call) written straight to
    the service's JSON handler: the line ``logger.info(message, extra=fields)`` would
    write there, byte for byte, without the logging machinery (a LogRecord of ~25
    attributes, filters, two locks, the formatter's field scan): on a repeated hot call
    that machinery was the largest part of the service's own work (benchmarks/RESULTS.md,
    "Answer memo and direct audit lines").

    Only while the logging configuration is the service's own (configure_logging): the
    logger and its ancestors have no filters and no handler but the root's one
    JsonLineHandler with its JsonFormatter, nothing disabled, INFO enabled. Any other
    configuration (a test's capture handler, an embedder's own) gets a real record
    through ``logger.info``, as before.
    """

    def info(self, message: str, fields: AuditFields) -> None:
        handler = self._direct_handler()
        if handler is None:
            super().info(message, fields)
            return
        formatter = handler.formatter
        assert isinstance(formatter, JsonFormatter)
        created = time.time()
        tail = formatter.string_tail("INFO", self._logger.name, message, fields)
        line = formatter.head(created, (created - int(created)) * 1000) + tail + handler.terminator
        handler.acquire()
        try:
            handler.write_line(line)
        except Exception:
            record = self._logger.makeRecord(
                self._logger.name, logging.INFO, "", 0, message, (), None
            )
            handler.handleError(record)
        finally:
            handler.release()

    def _direct_handler(self) -> JsonLineHandler | None:
        logger: logging.Logger | None = self._logger
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        found: JsonLineHandler | None = None
        while logger is not None:
            if logger.disabled or logger.filters:
                return None
            for handler in logger.handlers:
                if found is not None or not _is_service_handler(handler):
                    return None
                found = handler  # type: ignore[assignment]
            if not logger.propagate:
                break
            logger = logger.parent
        return found


def _is_service_handler(handler: logging.Handler) -> bool:
    return (
        type(handler) is JsonLineHandler
        and type(handler.formatter) is JsonFormatter
        and not handler.filters
        and handler.level <= logging.INFO
    )


def configure_logging(level: str = "info") -> None:
    handler = JsonLineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The JSON lines carry none of these, so no record computes them (the logging HOWTO's
    # "Optimization"): an audit line is written for every credential handed out.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # httpx logs every request URL at INFO; query strings may hold scopes and tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
