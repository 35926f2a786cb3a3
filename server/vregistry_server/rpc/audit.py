"""The audit trail of credentials handed out: one line on ``vregistry.audit`` per
Authorization a caller receives (caller, group, upstream, scheme; never the value).

The servicer writes through an ``AuditLog``: ``LoggerAudit`` here (a plain logging call),
or the runtime's direct writer (runtime/logs.py ``AuditLines``), which writes the same line
for less and falls back to this one under any other logging configuration.
"""

from __future__ import annotations

import logging
from typing import Protocol

AUDIT_LOGGER = logging.getLogger("vregistry.audit")
AuditFields = tuple[tuple[str, str], ...]  # an audit line's fields, in order


class AuditLog(Protocol):
    def info(self, message: str, fields: AuditFields) -> None: ...


class LoggerAudit:
    def __init__(self, logger: logging.Logger = AUDIT_LOGGER) -> None:
        self._logger = logger

    def info(self, message: str, fields: AuditFields) -> None:
        self._logger.info(message, extra=dict(fields))
