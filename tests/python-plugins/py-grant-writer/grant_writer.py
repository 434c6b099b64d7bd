"""A Python writer for the integration tests: each row becomes `(key text
PRIMARY KEY, doc jsonb)` in `<schema>.<table>`, through the granted connection
named by `connection`, idempotently on the key, one transaction per batch."""

import json

from sluice_plugin import InvalidConfig, Writer, log, postgres


def _plain(v):
    return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)


class GrantWriter(Writer):
    def open(self, config, schema):
        missing = [k for k in ("connection", "schema", "table") if not isinstance(config.get(k), str)]
        if missing:
            raise InvalidConfig(f"missing string keys: {', '.join(missing)}")
        self.table = f'{config["schema"]}.{config["table"]}'
        self.keys = [c.name for c in schema.columns if c.key]
        self.conn = postgres.connect(config["connection"])
        try:
            self.conn.batch_execute(f"CREATE TABLE IF NOT EXISTS {self.table} (key text PRIMARY KEY, doc jsonb NOT NULL)")
        except postgres.PgError as e:
            # Two consumers opening at once: the other one created it.
            if e.code not in ("23505", "42P07"):
                raise
        log.info(f"py-grant-writer: writing to {self.table}")

    def write(self, rows):
        self.conn.batch_execute("BEGIN")
        try:
            for row in rows:
                key = "|".join(str(row[k]) for k in self.keys)
                doc = json.dumps({k: _plain(v) for k, v in row.items()})
                self.conn.execute(
                    f"INSERT INTO {self.table} (key, doc) VALUES ($1, $2::text::jsonb) ON CONFLICT (key) DO NOTHING",
                    [key, doc],
                )
            self.conn.batch_execute("COMMIT")
        except BaseException:
            self.conn.batch_execute("ROLLBACK")
            raise
