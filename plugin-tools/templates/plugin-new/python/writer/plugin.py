"""{{name}}: a Sluice writer plugin. It stores each row as a JSON document in a
Postgres table `(key jsonb PRIMARY KEY, doc jsonb NOT NULL)`: `key` holds the
schema's key columns, `doc` every column. It writes idempotently on the key.

It reaches Postgres only through the connection the pipeline grants it.
Configuration (the writer's `config` table): `connection` (a name of the
writer's `grants.postgres`, required), `table` (default: the schema's name).
"""

import datetime
import decimal
import json
import re
import uuid

from sluice_plugin import InvalidConfig, Writer, log, postgres

_TABLE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def _plain(v):
    if isinstance(v, (decimal.Decimal, uuid.UUID)):
        return str(v)
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return v


class {{class}}(Writer):
    def open(self, config, schema):
        connection = config.get("connection")
        if not isinstance(connection, str):
            raise InvalidConfig("connection: the name of a granted Postgres connection is required")
        self.table = config.get("table", schema.name)
        if not isinstance(self.table, str) or not _TABLE.match(self.table):
            raise InvalidConfig(f"table: {self.table!r} is not `name` or `schema.name` (lowercase)")
        self.keys = [c.name for c in schema.columns if c.key]
        self.conn = postgres.connect(connection)
        self.conn.batch_execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (key jsonb PRIMARY KEY, doc jsonb NOT NULL)"
        )
        log.info(f"{{name}}: writing to {self.table} through {connection}")

    def write(self, rows):
        self.conn.batch_execute("BEGIN")
        try:
            for row in rows:
                key = json.dumps([_plain(row[k]) for k in self.keys])
                doc = json.dumps({k: _plain(v) for k, v in row.items()})
                self.conn.execute(
                    f"INSERT INTO {self.table} (key, doc) VALUES ($1::text::jsonb, $2::text::jsonb) "
                    "ON CONFLICT (key) DO NOTHING",
                    [key, doc],
                )
            self.conn.batch_execute("COMMIT")
        except BaseException:
            self.conn.batch_execute("ROLLBACK")
            raise
