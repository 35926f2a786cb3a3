"""Errors of the admin API, each with its gRPC status code and ErrorInfo reason.

Messages are written for the operator reading them and never hold a credential.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    ABORTED = "ABORTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"


class AdminError(Exception):
    code: Code = Code.INVALID_ARGUMENT
    reason: str = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class Invalid(AdminError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(AdminError):
    code = Code.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(AdminError):
    code = Code.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class EtagMismatch(AdminError):
    code = Code.ABORTED
    reason = "ETAG_MISMATCH"


class Precondition(AdminError):
    code = Code.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class StoreUnavailable(AdminError):
    code = Code.UNAVAILABLE
    reason = "STORE_UNAVAILABLE"


class Conflict(Exception):
    """The store changed between read and write (another writer won); retry."""
