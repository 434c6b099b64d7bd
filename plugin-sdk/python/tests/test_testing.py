import pytest

from sluice_plugin import InvalidConfig, Reject, Retriable, Schema, Source, Writer, log, postgres, testing


class Lines(Source):
    def configure(self, config):
        self.prefix = config.get("prefix", "")
        log.info("configured")
        return Schema("lines", 1).key("id", "text").required("line", "text").optional("n", "int32")

    def decode_message(self, message):
        if message.message_id is None:
            raise Reject("no message id")
        if message.body == b"bad-row":
            return [(message.message_id, "x", "not an int")]
        return [(message.message_id, self.prefix + message.text(), None)]


def test_run_source_decodes_rejects_and_checks_rows():
    run = testing.run_source(
        Lines,
        {"prefix": "> "},
        [testing.message("hello", message_id="m1"), "no id", testing.message("bad-row", message_id="m3")],
    )
    assert run.rows == [{"id": "m1", "line": "> hello", "n": None}]
    assert run.outcomes[0] == ("rows", 1)
    assert run.rejection(0) is None
    assert run.rejection(1) == "no message id"
    assert "row 0, column `n` (int32): expected an int, got str 'not an int'" in run.rejection(2)
    assert run.logs == [("info", "configured")]


def test_config_that_is_not_an_object_is_invalid_config():
    with pytest.raises(InvalidConfig, match="not a JSON object"):
        testing.run_source(Lines, "[1]", [])


class NoKey(Source):
    def configure(self, config):
        return Schema("t", 1).required("a", "text")


def test_a_schema_without_key_is_refused_at_configure():
    with pytest.raises(InvalidConfig, match="no key column"):
        testing.configure_source(NoKey)


class Recording:
    def __init__(self, fail_with=None):
        self.statements = []
        self.fail_with = fail_with

    def batch_execute(self, sql):
        self.statements.append((sql, []))

    def execute(self, statement, params):
        if self.fail_with:
            raise self.fail_with
        self.statements.append((statement, params))
        return 1


class Inserts(Writer):
    def open(self, config, schema):
        self.conn = postgres.connect(config["connection"])
        self.conn.batch_execute("CREATE TABLE IF NOT EXISTS t (id bigint PRIMARY KEY)")

    def write(self, rows):
        out = []
        for i, r in enumerate(rows):
            if r["id"] < 0:
                out.append((i, "negative id"))
                continue
            self.conn.execute("INSERT INTO t VALUES ($1) ON CONFLICT DO NOTHING", [r["id"]])
        return out


SCHEMA = Schema("t", 1).key("id", "int64")


def test_run_writer_with_a_grant_writes_and_rejects_rows():
    conn = Recording()
    run = testing.run_writer(Inserts, {"connection": "main"}, SCHEMA, [(1,), (-2,)], grants={"main": conn})
    assert run.error is None
    assert [(r.row, r.reason) for r in run.rejections] == [(1, "negative id")]
    assert conn.statements[1] == ("INSERT INTO t VALUES ($1) ON CONFLICT DO NOTHING", [1])


def test_run_writer_without_the_grant_is_denied():
    run = testing.run_writer(Inserts, {"connection": "main"}, SCHEMA, [(1,)], grants={})
    assert run.error is not None
    assert "access-denied" not in type(run.error).__name__
    assert "connection `main` is not granted" in str(run.error)


def test_a_retriable_postgres_error_stays_retriable():
    conn = Recording(fail_with=postgres.PgError("retriable", "connection lost"))
    run = testing.run_writer(Inserts, {"connection": "main"}, SCHEMA, [(1,)], grants={"main": conn})
    assert isinstance(run.error, Retriable)
    assert "writing rows: connection lost" in str(run.error)


def test_postgres_parameters_are_plain_values():
    import datetime as dt
    import decimal

    assert postgres.param(decimal.Decimal("1.50")) == "1.50"
    assert postgres.param(dt.date(2026, 1, 2)) == "2026-01-02"
    with pytest.raises(TypeError, match="cannot send object"):
        postgres.param(object())
