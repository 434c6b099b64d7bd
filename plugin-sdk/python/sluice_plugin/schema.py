"""Schemas: the named, versioned list of columns a source declares."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Sequence

from .errors import InvalidConfig

#: Every column type, as named in the WIT contract (`column-type`).
COLUMN_TYPES = (
    "boolean",
    "int32",
    "int64",
    "float64",
    "numeric",
    "text",
    "bytes",
    "timestamp",
    "date",
    "uuid",
    "json",
)

_ALIASES = {"bool": "boolean", "int": "int64", "float": "float64", "double": "float64", "string": "text"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def column_type(name: str) -> str:
    """The column type called `name` (`int64`, or an alias such as `bool`);
    `ValueError` naming the known types otherwise."""
    t = _ALIASES.get(name, name)
    if t not in COLUMN_TYPES:
        raise ValueError(f"unknown column type {name!r} (expected one of {', '.join(COLUMN_TYPES)})")
    return t


@dataclass(frozen=True)
class Column:
    """One column: its name, type (one of `COLUMN_TYPES`), whether it may hold
    None, and whether it is part of the key (key columns are never nullable)."""

    name: str
    type: str
    nullable: bool = False
    key: bool = False


@dataclass
class Schema:
    """The shape of a source's rows. Build it with `key`, `required` and
    `optional`, each returning the schema:

        Schema("cdr", 1).key("call_id", "text").required("secs", "int32").optional("cost", "numeric")
    """

    name: str
    version: int = 1
    columns: List[Column] = field(default_factory=list)

    def key(self, name: str, type: str) -> "Schema":
        """Adds a key column (never nullable)."""
        self.columns.append(Column(name, type, nullable=False, key=True))
        return self

    def required(self, name: str, type: str) -> "Schema":
        """Adds a column that may not hold None."""
        self.columns.append(Column(name, type, nullable=False, key=False))
        return self

    def optional(self, name: str, type: str) -> "Schema":
        """Adds a nullable column."""
        self.columns.append(Column(name, type, nullable=True, key=False))
        return self

    def column_names(self) -> List[str]:
        """The column names, in row order."""
        return [c.name for c in self.columns]

    def problems(self) -> List[str]:
        """Every way this schema breaks the contract (empty when it is valid)."""
        out = []
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            out.append(f"schema name {self.name!r} is not lowercase ASCII letters, digits and `_` starting with a letter")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or not 0 <= self.version < 2**32:
            out.append(f"schema version {self.version!r} is not an integer from 0 to 4294967295")
        if not self.columns:
            out.append("the schema has no column")
        seen = set()
        for i, c in enumerate(self.columns):
            where = f"columns[{i}] ({c.name})"
            if not isinstance(c.name, str) or not _NAME.match(c.name):
                out.append(f"{where}: the name is not lowercase ASCII letters, digits and `_` starting with a letter")
            if c.name in seen:
                out.append(f"{where}: the name appears twice")
            seen.add(c.name)
            if c.type not in COLUMN_TYPES:
                out.append(f"{where}: unknown type {c.type!r} (expected one of {', '.join(COLUMN_TYPES)})")
            if c.key and c.nullable:
                out.append(f"{where}: a key column cannot be nullable")
        if self.columns and not any(c.key for c in self.columns):
            out.append("no key column: at least one column must be a key")
        return out

    def check(self) -> None:
        """Raises `InvalidConfig` listing every problem, if there is any."""
        problems = self.problems()
        if problems:
            raise InvalidConfig("the declared schema is invalid: " + "; ".join(problems))


def check_columns(columns: Sequence[Column]) -> None:
    """Raises `InvalidConfig` when columns break the contract (see `Schema.problems`)."""
    Schema("checked", 1, list(columns)).check()
