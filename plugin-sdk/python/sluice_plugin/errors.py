"""Errors a plugin raises, and the rejection of one message."""

from __future__ import annotations


class PluginError(Exception):
    """Base of the errors that cross to the host as a WIT `plugin-error`."""

    #: The WIT variant case this error becomes.
    kind = "fatal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidConfig(PluginError):
    """The configuration is wrong: the operator must fix it; retrying fails again."""

    kind = "invalid-config"


class Retriable(PluginError):
    """A store or service is unavailable for now: the host retries with backoff."""

    kind = "retriable"


class Fatal(PluginError):
    """Anything else: the host keeps the messages and retries with a longer backoff."""

    kind = "fatal"


class Reject(Exception):
    """Raised by `Source.decode_message`: this message cannot be decoded. It goes to
    the dead-letter exchange with `reason`; the rest of the batch goes on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RowError(ValueError):
    """A row does not fit the schema. Names the row (from 0, within the message or
    batch being checked) and the column."""

    def __init__(self, row: int, column: str, column_type: str, problem: str):
        super().__init__(f"row {row}, column `{column}` ({column_type}): {problem}")
        self.row = row
        self.column = column
        self.problem = problem
