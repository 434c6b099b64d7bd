import decimal

from sluice_plugin import InvalidConfig, Schema, testing

from {{module}} import {{class}}

SCHEMA = Schema("events", 1).key("id", "int64").optional("amount", "numeric")


class Recording:
    """Stands in for a granted Postgres connection: records the statements."""

    def __init__(self):
        self.statements = []

    def batch_execute(self, sql):
        self.statements.append(sql)

    def execute(self, statement, params):
        self.statements.append((statement, params))
        return 1


def test_rows_become_json_documents_in_one_transaction():
    conn = Recording()
    run = testing.run_writer({{class}}, {"connection": "main"}, SCHEMA,
                             [(1, decimal.Decimal("2.50")), (2, None)], grants={"main": conn})
    assert run.error is None and run.rejections == []
    assert conn.statements[1] == "BEGIN" and conn.statements[-1] == "COMMIT"
    assert conn.statements[2][1] == ["[1]", '{"id": 1, "amount": "2.50"}']


def test_without_the_grant_the_writer_cannot_open():
    run = testing.run_writer({{class}}, {"connection": "main"}, SCHEMA, [(1, None)], grants={})
    assert run.error is not None and "not granted" in str(run.error)


def test_a_bad_table_name_is_invalid_config():
    run = testing.run_writer({{class}}, {"connection": "main", "table": "Drop Table"}, SCHEMA, [],
                             grants={"main": Recording()})
    assert isinstance(run.error, InvalidConfig)
