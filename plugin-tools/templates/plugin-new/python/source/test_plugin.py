from sluice_plugin import testing

from {{module}} import {{class}}


def test_each_line_is_a_row():
    run = testing.run_source({{class}}, {}, ["1,one\n2,\n"])
    assert run.rows == [{"id": 1, "value": "one"}, {"id": 2, "value": None}]


def test_a_bad_line_rejects_its_message_with_the_line_number():
    run = testing.run_source({{class}}, {}, ["1,a", "1,a\nx,b\n", "no comma"])
    assert [r["id"] for r in run.rows] == [1]
    assert run.rejection(1) == "line 2: id 'x' is not an integer"
    assert run.rejection(2) == "line 1: no comma (expected `id,value`)"


def test_the_schema_name_comes_from_the_config():
    assert testing.configure_source({{class}}, {"schema": "events"}).name == "events"
