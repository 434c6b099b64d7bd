"""Rows as plain Python values, checked against the schema and encoded in the WIT
row encoding (version 1, see `types.wit`), and decoded back for writers.

| column type | Python values accepted |
|-------------|------------------------|
| boolean | `bool` |
| int32, int64 | `int` (not `bool`), in range |
| float64 | `float` or `int` |
| numeric | `decimal.Decimal` (finite), `int`, or a `str` decimal literal |
| text | `str` |
| bytes | `bytes`, `bytearray`, `memoryview` |
| timestamp | `datetime.datetime` with a time zone |
| date | `datetime.date` (not a datetime) |
| uuid | `uuid.UUID`, or its `str` form |
| json | `dict`, `list`, `str`, `int`, `float`, `bool` (stored as JSON text) |

`None` is null, allowed in nullable columns only. A row is a `tuple`/`list` in
column order or a `dict` by column name (a missing name is None).
"""

from __future__ import annotations

import datetime as _dt
import decimal as _decimal
import json as _json
import re as _re
import struct as _struct
import uuid as _uuid
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

from .errors import RowError
from .schema import Column, Schema

_I32 = _struct.Struct("<i")
_I64 = _struct.Struct("<q")
_U32 = _struct.Struct("<I")
_F64 = _struct.Struct("<d")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_NUMERIC = _re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_ONE_MICRO = _dt.timedelta(microseconds=1)


class _Bad(Exception):
    """A value does not fit its column (the caller adds the row and column)."""


def _kind(v: Any) -> str:
    text = repr(v)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(v).__name__} {text}"


def _boolean(v: Any) -> bytes:
    if v is True:
        return b"\x01\x01"
    if v is False:
        return b"\x01\x00"
    raise _Bad(f"expected a bool, got {_kind(v)}")


def _int(lo: int, hi: int, packer: _struct.Struct, name: str) -> Callable[[Any], bytes]:
    def enc(v: Any) -> bytes:
        if type(v) is not int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise _Bad(f"expected an int, got {_kind(v)}")
        if not lo <= v <= hi:
            raise _Bad(f"{v} is out of range for {name}")
        return b"\x01" + packer.pack(v)

    return enc


def _float64(v: Any) -> bytes:
    if type(v) is float or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return b"\x01" + _F64.pack(float(v))
    raise _Bad(f"expected a float or an int, got {_kind(v)}")


def _text_bytes(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"\x01" + _U32.pack(len(b)) + b


def _numeric(v: Any) -> bytes:
    if isinstance(v, _decimal.Decimal):
        if not v.is_finite():
            raise _Bad(f"{v} is not a finite number")
        return _text_bytes(format(v, "f"))
    if isinstance(v, int) and not isinstance(v, bool):
        return _text_bytes(str(v))
    if isinstance(v, str):
        s = v.strip()
        if not _NUMERIC.match(s):
            raise _Bad(f"{v!r} is not a decimal number")
        return _text_bytes(format(_decimal.Decimal(s), "f") if ("e" in s or "E" in s) else s)
    if isinstance(v, float):
        raise _Bad(f"got the float {v!r}: give a Decimal (or a str) so no digit is lost")
    raise _Bad(f"expected a Decimal, an int or a decimal str, got {_kind(v)}")


def _text(v: Any) -> bytes:
    if type(v) is str or isinstance(v, str):
        return _text_bytes(v)
    raise _Bad(f"expected a str, got {_kind(v)}")


def _bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        return b"\x01" + _U32.pack(len(b)) + b
    raise _Bad(f"expected bytes, got {_kind(v)}")


def _timestamp(v: Any) -> bytes:
    if not isinstance(v, _dt.datetime):
        raise _Bad(f"expected a datetime, got {_kind(v)}")
    if v.tzinfo is None or v.utcoffset() is None:
        raise _Bad(f"the datetime {v.isoformat()} has no time zone (give tzinfo, e.g. datetime.timezone.utc)")
    return b"\x01" + _I64.pack((v - _EPOCH) // _ONE_MICRO)


def _date(v: Any) -> bytes:
    if isinstance(v, _dt.datetime) or not isinstance(v, _dt.date):
        raise _Bad(f"expected a date, got {_kind(v)}")
    return b"\x01" + _I32.pack(v.toordinal() - _EPOCH_ORDINAL)


def _uuid_enc(v: Any) -> bytes:
    if isinstance(v, _uuid.UUID):
        return b"\x01" + v.bytes
    if isinstance(v, str):
        try:
            return b"\x01" + _uuid.UUID(v).bytes
        except ValueError:
            raise _Bad(f"{v!r} is not a UUID") from None
    raise _Bad(f"expected a UUID or its str form, got {_kind(v)}")


def _json_enc(v: Any) -> bytes:
    try:
        return _text_bytes(_json.dumps(v, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise _Bad(f"not JSON: {e}") from None


_ENCODERS: Dict[str, Callable[[Any], bytes]] = {
    "boolean": _boolean,
    "int32": _int(-(2**31), 2**31 - 1, _I32, "int32"),
    "int64": _int(-(2**63), 2**63 - 1, _I64, "int64"),
    "float64": _float64,
    "numeric": _numeric,
    "text": _text,
    "bytes": _bytes,
    "timestamp": _timestamp,
    "date": _date,
    "uuid": _uuid_enc,
    "json": _json_enc,
}


# The common cases of each type, tested and encoded inline by the generated row
# encoder (see `_compile`); anything else goes through the full encoder above,
# which checks it and says what is wrong.
_FAST = {
    "boolean": ("v is True or v is False", "append(b'\\x01\\x01' if v else b'\\x01\\x00')"),
    "int32": ("type(v) is int and -2147483648 <= v <= 2147483647", "append(b'\\x01' + _I32p(v))"),
    "int64": ("type(v) is int and -9223372036854775808 <= v <= 9223372036854775807", "append(b'\\x01' + _I64p(v))"),
    "float64": ("type(v) is float", "append(b'\\x01' + _F64p(v))"),
    "text": ("type(v) is str", "b = v.encode(); append(b'\\x01' + _U32p(len(b)) + b)"),
}


class _BadAt(Exception):
    """A value of column `index` does not fit (`problem`)."""

    def __init__(self, index: int, problem: str):
        super().__init__(problem)
        self.index = index
        self.problem = problem


_COMPILED: Dict[Tuple[Tuple[str, bool], ...], Callable[..., None]] = {}


def _compile(columns: Sequence[Column]) -> Callable[[Sequence[Any], Callable[[bytes], None]], None]:
    """The row encoder of these columns (made once per column types)."""
    key = tuple((c.type, c.nullable) for c in columns)
    f = _COMPILED.get(key)
    if f is None:
        f = _COMPILED[key] = _generate(columns)
    return f


def _generate(columns: Sequence[Column]) -> Callable[[Sequence[Any], Callable[[bytes], None]], None]:
    """A function encoding one row's values (in column order) through `append`,
    written out for this schema: one call per row instead of one per value keeps
    rows cheap in an interpreter (CPython in wasm)."""
    lines = ["def encode_row(values, append):"]
    env: Dict[str, Any] = {
        "_I32p": _I32.pack, "_I64p": _I64.pack, "_F64p": _F64.pack, "_U32p": _U32.pack,
        "_Bad": _Bad, "_BadAt": _BadAt,
    }
    lines.append("    " + ", ".join(f"v{i}" for i in range(len(columns))) + (", = values" if len(columns) == 1 else " = values"))
    for i, c in enumerate(columns):
        env[f"E{i}"] = _ENCODERS[c.type]
        null = "append(b'\\x00')" if c.nullable else f"raise _BadAt({i}, 'None in a column that is not nullable')"
        lines.append(f"    v = v{i}")
        lines.append("    if v is None:")
        lines.append(f"        {null}")
        fast = _FAST.get(c.type)
        if fast:
            lines.append(f"    elif {fast[0]}:")
            lines.append(f"        {fast[1]}")
        lines.append("    else:")
        lines.append("        try:")
        lines.append(f"            append(E{i}(v))")
        lines.append("        except _Bad as e:")
        lines.append(f"            raise _BadAt({i}, str(e)) from None")
    exec("\n".join(lines), env)  # noqa: S102 - code generated from the schema's column types only
    return env["encode_row"]


class RowEncoder:
    """Checks rows against a schema and encodes them into one batch buffer."""

    __slots__ = ("schema", "_columns", "_names", "_index", "_parts", "_encode_row", "count")

    def __init__(self, schema: Schema):
        self.schema = schema
        self._columns = [(c.name, c.type) for c in schema.columns]
        self._names = [c.name for c in schema.columns]
        self._index = set(self._names)
        self._encode_row = _compile(schema.columns)
        self._parts: List[bytes] = []
        #: Rows encoded so far.
        self.count = 0

    def _values(self, row: Any, row_number: int) -> Sequence[Any]:
        if type(row) is tuple or type(row) is list:
            if len(row) == len(self._names):
                return row
        elif isinstance(row, dict):
            if not self._index.issuperset(row):
                unknown = sorted(str(k) for k in row if k not in self._index)
                raise RowError(
                    row_number, unknown[0], "?",
                    f"no such column in schema `{self.schema.name}` (its columns: {', '.join(self._names)})",
                )
            return [row.get(n) for n in self._names]
        elif not isinstance(row, (tuple, list)):
            raise RowError(row_number, self._names[0], "row", f"a row is a tuple, list or dict, got {_kind(row)}")
        if len(row) != len(self._names):
            raise RowError(
                row_number, self._names[min(len(row), len(self._names) - 1)], "row",
                f"the row has {len(row)} values, the schema `{self.schema.name}` has {len(self._names)} columns",
            )
        return row

    def encode(self, row: Any, row_number: int) -> bytes:
        """One row's bytes, or `RowError` naming `row_number` and the column."""
        parts: List[bytes] = []
        self._encode_into(row, row_number, parts.append)
        return b"".join(parts)

    def _encode_into(self, row: Any, row_number: int, append: Callable[[bytes], None]) -> None:
        values = self._values(row, row_number)
        try:
            self._encode_row(values, append)
        except _BadAt as e:
            name, ctype = self._columns[e.index]
            raise RowError(row_number, name, ctype, e.problem) from None

    def extend(self, rows: Iterable[Any], first_row_number: int = 0) -> int:
        """Checks and appends `rows`, all or none: on `RowError` nothing of them is
        kept. Returns how many were appended."""
        parts = self._parts
        mark = len(parts)
        n = 0
        try:
            for i, r in enumerate(rows):
                self._encode_into(r, first_row_number + i, parts.append)
                n += 1
        except BaseException:
            del parts[mark:]
            raise
        self.count += n
        return n

    def finish(self) -> Tuple[int, bytes]:
        """(row count, encoded rows)."""
        return self.count, b"".join(self._parts)


def encode_rows(schema: Schema, rows: Iterable[Any]) -> Tuple[int, bytes]:
    """Checks and encodes rows; `RowError` names the first bad row and column."""
    enc = RowEncoder(schema)
    enc.extend(rows)
    return enc.finish()


class RowDecodeError(ValueError):
    """A row batch that does not follow the row encoding."""


def decode_rows(schema: Schema, count: int, data: bytes) -> List[Dict[str, Any]]:
    """The rows of an encoded batch as dicts by column name, with the Python values
    of the table in this module's documentation (numeric as `Decimal`, json parsed)."""
    mv = memoryview(data)
    pos = 0
    out: List[Dict[str, Any]] = []
    cols: Sequence[Column] = schema.columns
    for r in range(count):
        row: Dict[str, Any] = {}
        for c in cols:
            if pos >= len(mv):
                raise RowDecodeError(f"row {r}, column `{c.name}`: the batch ends early")
            tag = mv[pos]
            pos += 1
            if tag == 0:
                row[c.name] = None
                continue
            if tag != 1:
                raise RowDecodeError(f"row {r}, column `{c.name}`: bad tag {tag}")
            t = c.type
            if t == "boolean":
                row[c.name] = mv[pos] != 0
                pos += 1
            elif t in ("int32", "date"):
                (n,) = _I32.unpack_from(mv, pos)
                pos += 4
                row[c.name] = n if t == "int32" else _dt.date.fromordinal(n + _EPOCH_ORDINAL)
            elif t in ("int64", "timestamp"):
                (n,) = _I64.unpack_from(mv, pos)
                pos += 8
                row[c.name] = n if t == "int64" else _EPOCH + _dt.timedelta(microseconds=n)
            elif t == "float64":
                (row[c.name],) = _F64.unpack_from(mv, pos)
                pos += 8
            elif t == "uuid":
                row[c.name] = _uuid.UUID(bytes=bytes(mv[pos : pos + 16]))
                pos += 16
            else:
                (n,) = _U32.unpack_from(mv, pos)
                pos += 4
                raw = bytes(mv[pos : pos + n])
                if len(raw) != n:
                    raise RowDecodeError(f"row {r}, column `{c.name}`: the batch ends early")
                pos += n
                if t == "bytes":
                    row[c.name] = raw
                elif t == "numeric":
                    row[c.name] = _decimal.Decimal(raw.decode("utf-8"))
                elif t == "json":
                    row[c.name] = _json.loads(raw.decode("utf-8"))
                else:
                    row[c.name] = raw.decode("utf-8")
        out.append(row)
    if pos != len(mv):
        raise RowDecodeError(f"{len(mv) - pos} bytes left after {count} rows")
    return out
