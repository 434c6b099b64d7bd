"""Postgres connections granted by the host (writers only). The plugin names a
connection of its `grants.postgres`; the host holds the address and credentials.

    conn = postgres.connect("main")
    conn.execute("INSERT INTO t (id, v) VALUES ($1, $2) ON CONFLICT DO NOTHING", [1, "a"])

Parameters are None, bool, int, float, str or bytes; `Decimal`, `date`,
`datetime` and `UUID` are sent as text (cast in SQL if needed: `$1::numeric`).
Results come back as None, bool, int, float, str or bytes (cast other types to
text in the query: `col::text`).
"""

from __future__ import annotations

import datetime as _dt
import decimal as _decimal
import uuid as _uuid
from typing import Any, List, Optional, Sequence

from . import _host
from .errors import Fatal, PluginError, Retriable

#: The kinds of `PgError`, as the host decides them.
KINDS = ("access-denied", "retriable", "data", "other")


class PgError(Exception):
    """An error from the server or the host. `kind` is `access-denied` (not
    granted), `retriable` (connection lost, server unavailable), `data` (the data
    was refused: retrying fails again) or `other`."""

    def __init__(self, kind: str, message: str, code: Optional[str] = None,
                 detail: Optional[str] = None, context: Optional[str] = None):
        parts = [message]
        if code:
            parts.append(f"(SQLSTATE {code})")
        if detail:
            parts.append(f"detail: {detail}")
        if context:
            parts.append(f"context: {context}")
        super().__init__(" ".join(parts))
        self.kind = kind
        self.message = message
        self.code = code
        self.detail = detail
        self.context = context

    def plugin_error(self, what: str) -> PluginError:
        """The plugin error this becomes, by the SDK's one rule: `retriable` stays
        retriable; anything else is fatal. `what` says what was being done."""
        cls = Retriable if self.kind == "retriable" else Fatal
        return cls(f"{what}: {self}")


def param(v: Any) -> Any:
    """A Python value as a parameter the host accepts (see the module docs)."""
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, _decimal.Decimal):
        return format(v, "f")
    if isinstance(v, (_dt.datetime, _dt.date, _uuid.UUID)):
        return v.isoformat() if not isinstance(v, _uuid.UUID) else str(v)
    raise TypeError(f"cannot send {type(v).__name__} {v!r} to Postgres: give None, bool, int, float, str or bytes")


class Connection:
    """A granted connection. Closing it (or dropping it) rolls back an open
    transaction."""

    def __init__(self, inner: Any):
        self._inner = inner

    def batch_execute(self, sql: str) -> None:
        """Runs statements without parameters (`BEGIN`, `COMMIT`, DDL)."""
        self._inner.batch_execute(sql)

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Runs one statement with `$1`, `$2`... parameters; returns rows affected."""
        return self._inner.execute(statement, [param(p) for p in params])

    def query(self, statement: str, params: Sequence[Any] = ()) -> List[List[Any]]:
        """Runs one query; returns its rows as lists of values."""
        return self._inner.query(statement, [param(p) for p in params])

    def copy_in(self, statement: str, data: bytes) -> int:
        """Runs `COPY ... FROM STDIN` with `data`; returns rows copied."""
        return self._inner.copy_in(statement, bytes(data))

    def close(self) -> None:
        """Closes the connection."""
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
        self._inner = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(name: str) -> Connection:
    """Opens the connection granted under `name`; `PgError` with kind
    `access-denied` when it is not granted."""
    return Connection(_host.backend.open_postgres(name))
