import datetime as dt
import decimal
import uuid

import pytest

from sluice_plugin import Column, RowError, Schema
from sluice_plugin.rows import decode_rows, encode_rows


def all_types():
    return (
        Schema("t", 1)
        .key("id", "int64")
        .required("flag", "boolean")
        .optional("small", "int32")
        .optional("f", "float64")
        .optional("amount", "numeric")
        .optional("name", "text")
        .optional("raw", "bytes")
        .optional("at", "timestamp")
        .optional("day", "date")
        .optional("u", "uuid")
        .optional("doc", "json")
    )


def test_every_type_round_trips_through_the_row_encoding():
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    at = dt.datetime(2026, 12, 6, 17, 0, 0, 123456, tzinfo=dt.timezone.utc)
    row = (7, True, -5, 1.5, decimal.Decimal("-12.340"), "é", b"\x00\x01", at, dt.date(2026, 1, 2), u, {"a": [1, None]})
    count, data = encode_rows(all_types(), [row, (8, False) + (None,) * 9])
    assert count == 2
    rows = decode_rows(all_types(), count, data)
    assert rows[0] == dict(zip(all_types().column_names(), row))
    assert rows[1]["id"] == 8 and rows[1]["flag"] is False and rows[1]["doc"] is None


def test_known_encoding_bytes():
    # int64 7, then text "ab": tag, little-endian value; tag, u32 length, bytes.
    count, data = encode_rows(Schema("t").key("id", "int64").required("s", "text"), [{"id": 7, "s": "ab"}])
    assert (count, data) == (1, b"\x01\x07\x00\x00\x00\x00\x00\x00\x00\x01\x02\x00\x00\x00ab")


def test_a_timestamp_is_microseconds_since_the_epoch_and_a_date_days():
    s = Schema("t").key("at", "timestamp").required("d", "date")
    _, data = encode_rows(s, [(dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc), dt.date(1970, 1, 3))])
    assert data == b"\x01" + (1_000_000).to_bytes(8, "little") + b"\x01" + (2).to_bytes(4, "little")


@pytest.mark.parametrize(
    "row, expected",
    [
        ((None, True), "row 1, column `id` (int64): None in a column that is not nullable"),
        (("7", True), "row 1, column `id` (int64): expected an int, got str '7'"),
        ((True, True), "row 1, column `id` (int64): expected an int, got bool True"),
        ((2**63, True), "row 1, column `id` (int64): 9223372036854775808 is out of range for int64"),
        ((1, "yes"), "row 1, column `flag` (boolean): expected a bool, got str 'yes'"),
        ((1,), "the row has 1 values, the schema `t` has 2 columns"),
        ({"id": 1, "flag": True, "nope": 1}, "row 1, column `nope` (?): no such column in schema `t`"),
    ],
)
def test_bad_values_name_the_row_and_the_column(row, expected):
    s = Schema("t").key("id", "int64").required("flag", "boolean")
    with pytest.raises(RowError) as e:
        encode_rows(s, [(0, False), row])
    assert expected in str(e.value)


@pytest.mark.parametrize(
    "ctype, value, expected",
    [
        ("int32", 2**31, "out of range for int32"),
        ("numeric", 1.5, "give a Decimal"),
        ("numeric", "1,5", "is not a decimal number"),
        ("numeric", decimal.Decimal("NaN"), "not a finite number"),
        ("timestamp", dt.datetime(2026, 1, 1), "has no time zone"),
        ("date", dt.datetime(2026, 1, 1), "expected a date"),
        ("uuid", "not-a-uuid", "is not a UUID"),
        ("json", {1: float("nan")}, "not JSON"),
        ("bytes", "text", "expected bytes"),
    ],
)
def test_values_that_do_not_fit_their_type_are_refused(ctype, value, expected):
    s = Schema("t").key("id", "int32").optional("v", ctype)
    with pytest.raises(RowError) as e:
        encode_rows(s, [(1, value)])
    assert "row 0, column `v`" in str(e.value) and expected in str(e.value)


def test_numeric_keeps_every_digit():
    s = Schema("t").key("v", "numeric")
    rows = decode_rows(s, *encode_rows(s, [("0.10000000000000000001",), (decimal.Decimal("1E+3"),), ("2e2",)]))
    assert [r["v"] for r in rows] == [decimal.Decimal("0.10000000000000000001"), 1000, 200]


def test_schema_problems_are_all_reported():
    s = Schema("Bad", 1, [Column("a", "nope", nullable=True, key=True)])
    problems = s.problems()
    assert any("schema name 'Bad'" in p for p in problems)
    assert any("unknown type 'nope'" in p for p in problems)
    assert any("key column cannot be nullable" in p for p in problems)
    assert Schema("t").required("a", "text").problems() == ["no key column: at least one column must be a key"]
