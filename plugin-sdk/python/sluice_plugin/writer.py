"""Writer plugins: they land rows in a store through granted capabilities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from .schema import Schema


@dataclass(frozen=True)
class RowRejection:
    """A row the store refused for good (index in the batch from 0, and why). Its
    message goes to the dead-letter exchange with the reason."""

    row: int
    reason: str


class Writer:
    """Subclass it and override `open` and `write`:

        class Grants(Writer):
            def open(self, config, schema):
                self.conn = postgres.connect(config.get("connection", "main"))

            def write(self, rows):
                for r in rows:
                    self.conn.execute("INSERT ... ON CONFLICT DO NOTHING", [r["id"]])

    `write` is all or nothing except for the rows it rejects: return normally
    only once the rows are durable; raise `Retriable` (store unavailable) or
    `Fatal` and nothing of the batch may be visible. Writes must be idempotent on
    the schema's key columns."""

    def open(self, config: dict, schema: Schema) -> None:
        """Reads the configuration (the writer's `config` table, as a dict),
        connects, and creates what the schema needs."""
        raise NotImplementedError("a Writer must define open(self, config, schema)")

    def write(self, rows: List[Dict[str, Any]]) -> Optional[Sequence[RowRejection]]:
        """Writes the rows (dicts by column name); returns the rejected rows, if any."""
        raise NotImplementedError("a Writer must define write(self, rows)")


def rejections(result: Any, count: int) -> List[RowRejection]:
    """`write`'s result as rejections (None, or RowRejection / (row, reason)
    items), each row checked to be in the batch."""
    out: List[RowRejection] = []
    for item in result or ():
        r = item if isinstance(item, RowRejection) else RowRejection(*item)
        if not isinstance(r.row, int) or not 0 <= r.row < count:
            raise ValueError(f"write rejected row {r.row!r}, but the batch has rows 0 to {count - 1}")
        out.append(r)
    return out
