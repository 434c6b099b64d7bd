"""`python-csv-source`: decodes CSV or TSV message bodies into rows, written in
Python with the Sluice SDK.

Configuration (the pipeline's `[pipelines.source.config]` table):

    schema = "calls"            # the schema's name (lowercase letters, digits, `_`)
    version = 1                 # its version
    format = "csv"              # or "tsv" (tab-separated)
    delimiter = ","             # overrides the format's delimiter (one character)
    header = true               # each body starts with a header line (default true)
    columns = [                 # in row order
      { name = "call_id", type = "text", key = true, field = "Call ID" },
      { name = "secs", type = "int32" },
      { name = "cost", type = "numeric", nullable = true },
    ]

Each column: `name`, `type` (`boolean`, `int32`, `int64`, `float64`, `numeric`,
`text`, `bytes` (hex), `timestamp` (ISO 8601 with a zone; `Z` allowed), `date`
(`YYYY-MM-DD`), `uuid`, `json`), `key` (default false), `nullable` (default false;
key columns never), and where its value is: with a header, `field` (the header
name, the column's name by default); without, `index` (from 0, the column's
position by default). An empty field is null.

A body holds one or more lines. A line that does not fit (a bad value, a
missing field, a wrong number of fields, an empty required value) rejects the
whole message, with the line number (from 1, the header counted) and the column:
`line 3, column secs: 'ten' is not an integer`. Blank lines are skipped. A
header without the field of a nullable column gives nulls; without a required
one, the message is rejected.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import uuid

from sluice_plugin import InvalidConfig, Reject, Schema, Source, column_type, log


def _boolean(s):
    v = s.lower()
    if v in ("true", "t", "yes", "y", "1"):
        return True
    if v in ("false", "f", "no", "n", "0"):
        return False
    raise ValueError(f"{s!r} is not a boolean (true/false, yes/no, 1/0)")


def _int(s):
    try:
        return int(s)
    except ValueError:
        raise ValueError(f"{s!r} is not an integer") from None


def _float(s):
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"{s!r} is not a number") from None


def _numeric(s):
    try:
        d = decimal.Decimal(s)
    except decimal.InvalidOperation:
        raise ValueError(f"{s!r} is not a decimal number") from None
    if not d.is_finite():
        raise ValueError(f"{s!r} is not a finite number")
    return d


def _timestamp(s):
    try:
        t = dt.datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise ValueError(f"{s!r} is not an ISO 8601 timestamp") from None
    if t.tzinfo is None:
        raise ValueError(f"{s!r} has no time zone (add Z or an offset such as +02:00)")
    return t


def _date(s):
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{s!r} is not a date (YYYY-MM-DD)") from None


def _bytes(s):
    try:
        return bytes.fromhex(s)
    except ValueError:
        raise ValueError(f"{s!r} is not hexadecimal") from None


def _uuid(s):
    try:
        return uuid.UUID(s)
    except ValueError:
        raise ValueError(f"{s!r} is not a UUID") from None


def _json(s):
    try:
        return json.loads(s)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None


PARSERS = {
    "boolean": _boolean,
    "int32": _int,
    "int64": _int,
    "float64": _float,
    "numeric": _numeric,
    "text": None,  # as it is
    "bytes": _bytes,
    "timestamp": _timestamp,
    "date": _date,
    "uuid": _uuid,
    "json": _json,
}

_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class CsvSource(Source):
    """CSV/TSV lines to rows; see the module documentation."""

    def configure(self, config):
        problems = []
        known = {"schema", "version", "format", "delimiter", "header", "columns"}
        for k in sorted(set(config) - known):
            problems.append(f"unknown key {k!r} (known: {', '.join(sorted(known))})")
        fmt = config.get("format", "csv")
        if fmt not in ("csv", "tsv"):
            problems.append(f"format {fmt!r} is neither \"csv\" nor \"tsv\"")
        delimiter = config.get("delimiter", "\t" if fmt == "tsv" else ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            problems.append(f"delimiter {delimiter!r} is not one character")
        self.delimiter = delimiter
        self.header = config.get("header", True)
        self._header_cache = {}
        if not isinstance(self.header, bool):
            problems.append(f"header {self.header!r} is not true or false")
        schema = Schema(config.get("schema", "rows"), config.get("version", 1))
        columns = config.get("columns")
        if not isinstance(columns, list) or not columns:
            problems.append("columns: a non-empty list of tables is required")
            columns = []
        self.columns = []  # (name, type, nullable, parse, field or index)
        for i, c in enumerate(columns):
            where = f"columns[{i}]"
            if not isinstance(c, dict):
                problems.append(f"{where}: not a table")
                continue
            name = c.get("name")
            where = f"columns[{i}] ({name})"
            for k in sorted(set(c) - {"name", "type", "key", "nullable", "field", "index"}):
                problems.append(f"{where}: unknown key {k!r}")
            try:
                ctype = column_type(str(c.get("type")))
            except ValueError as e:
                problems.append(f"{where}: {e}")
                continue
            key = bool(c.get("key", False))
            nullable = bool(c.get("nullable", False)) and not key
            if key:
                schema.key(name, ctype)
            elif nullable:
                schema.optional(name, ctype)
            else:
                schema.required(name, ctype)
            if self.header:
                where_in_line = c.get("field", name)
            else:
                where_in_line = c.get("index", i)
                if not isinstance(where_in_line, int) or where_in_line < 0:
                    problems.append(f"{where}: index {where_in_line!r} is not a field position from 0")
            self.columns.append((name, ctype, nullable, PARSERS[ctype], where_in_line))
        problems.extend(schema.problems() if columns else [])
        if problems:
            raise InvalidConfig("; ".join(problems))
        log.info(f"csv source: schema {schema.name} v{schema.version}, {len(self.columns)} columns, "
                 f"delimiter {self.delimiter!r}, header {self.header}")
        return schema

    def decode_message(self, message):
        try:
            text = message.body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Reject(f"the body is not UTF-8 (byte {e.start})") from None
        if '"' in text:
            reader = csv.reader(io.StringIO(text), delimiter=self.delimiter, strict=True)
            try:
                return self._rows((reader.line_num, fields) for fields in reader)
            except csv.Error as e:
                raise Reject(f"line {reader.line_num}: not valid CSV ({e})") from None
        # No quoting: plain splitting gives the same fields as the csv module,
        # several times faster.
        d = self.delimiter
        return self._rows((n, line.rstrip("\r").split(d)) for n, line in enumerate(text.split("\n"), 1))

    def _rows(self, lines):
        """The rows of (line number, fields) pairs."""
        rows = []
        positions = None
        columns = self.columns
        for line, fields in lines:
            if not fields or fields == [""]:
                continue
            if positions is None:
                if self.header:
                    positions = self._positions(fields, line)
                    continue
                positions = [c[4] for c in columns]
            row = []
            for (name, ctype, nullable, parse, _), pos in zip(columns, positions):
                if pos is None:
                    row.append(None)
                    continue
                if pos >= len(fields):
                    raise Reject(f"line {line}: {len(fields)} fields, no field {pos + 1} for column {name}")
                s = fields[pos]
                if s == "":
                    if not nullable:
                        raise Reject(f"line {line}, column {name}: empty, but the column is required")
                    row.append(None)
                    continue
                if parse is None:
                    row.append(s)
                    continue
                try:
                    v = parse(s)
                except ValueError as e:
                    raise Reject(f"line {line}, column {name}: {e}") from None
                if ctype in _INT_RANGE:
                    lo, hi = _INT_RANGE[ctype]
                    if not lo <= v <= hi:
                        raise Reject(f"line {line}, column {name}: {v} is out of range for {ctype}")
                row.append(v)
            rows.append(row)
        return rows

    def _positions(self, header, line):
        # Feeds repeat one header: its positions are computed once.
        key = tuple(header)
        cached = self._header_cache.get(key)
        if cached is not None:
            return cached
        positions = self._header_positions(header, line)
        if len(self._header_cache) < 64:
            self._header_cache[key] = positions
        return positions

    def _header_positions(self, header, line):
        index = {}
        for i, h in enumerate(header):
            index.setdefault(h.strip(), i)
        out, missing = [], []
        for name, _, nullable, _, field in self.columns:
            if field in index:
                out.append(index[field])
            elif nullable:
                out.append(None)
            else:
                missing.append(field)
        if missing:
            raise Reject(f"line {line}: the header has no field {', '.join(repr(m) for m in missing)}")
        return out
