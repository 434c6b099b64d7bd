import datetime as dt
import decimal

import pytest

from csv_source import CsvSource
from sluice_plugin import InvalidConfig, testing

CONFIG = {
    "schema": "calls",
    "version": 2,
    "columns": [
        {"name": "call_id", "type": "text", "key": True, "field": "Call ID"},
        {"name": "secs", "type": "int32"},
        {"name": "cost", "type": "numeric", "nullable": True},
        {"name": "started", "type": "timestamp", "nullable": True},
        {"name": "ok", "type": "bool", "nullable": True},
    ],
}


def test_maps_header_fields_to_typed_columns():
    body = "secs,Call ID,ok,cost,started,ignored\n12,c1,yes,0.10,2026-12-06T17:00:00Z,x\n3,c2,,,,\n"
    run = testing.run_source(CsvSource, CONFIG, [body])
    assert run.schema.name == "calls" and run.schema.version == 2
    assert run.rows == [
        {"call_id": "c1", "secs": 12, "cost": decimal.Decimal("0.10"),
         "started": dt.datetime(2026, 12, 6, 17, tzinfo=dt.timezone.utc), "ok": True},
        {"call_id": "c2", "secs": 3, "cost": None, "started": None, "ok": None},
    ]


def test_a_bad_line_rejects_its_message_with_the_line_number():
    good = "Call ID,secs\nc1,1\n"
    bad = "Call ID,secs\nc2,2\n\nc3,ten\n"
    run = testing.run_source(CsvSource, CONFIG, [good, bad, "Call ID,secs\n,4\n", "Call ID\nc5\n"])
    assert [r["call_id"] for r in run.rows] == ["c1"]
    assert run.rejection(1) == "line 4, column secs: 'ten' is not an integer"
    assert run.rejection(2) == "line 2, column call_id: empty, but the column is required"
    assert run.rejection(3) == "line 1: the header has no field 'secs'"


def test_tsv_without_header_by_position():
    config = {"format": "tsv", "header": False, "columns": [
        {"name": "id", "type": "int64", "key": True, "index": 1},
        {"name": "name", "type": "text"},
    ]}
    run = testing.run_source(CsvSource, config, ["x\t1\n", "a\t2\tb\n", "only-one\n"])
    # "name" defaults to index 1 too: its position in the list.
    assert run.rows == [{"id": 1, "name": "1"}, {"id": 2, "name": "2"}]
    assert run.rejection(2) == "line 1: 1 fields, no field 2 for column id"


def test_out_of_range_and_non_utf8_are_rejected():
    run = testing.run_source(CsvSource, CONFIG, ["Call ID,secs\nc1,99999999999\n", b"Call ID,secs\n\xff,1\n"])
    assert run.rejection(0) == "line 2, column secs: 99999999999 is out of range for int32"
    assert run.rejection(1) == "the body is not UTF-8 (byte 13)"


def test_every_configuration_problem_is_reported_at_once():
    with pytest.raises(InvalidConfig) as e:
        testing.configure_source(CsvSource, {"format": "xml", "colums": [], "columns": [
            {"name": "a", "type": "int"}, {"name": "b", "type": "complex"}]})
    text = str(e.value)
    assert "unknown key 'colums'" in text
    assert "format 'xml'" in text
    assert "columns[1] (b): unknown column type 'complex'" in text
    assert "no key column" in text
