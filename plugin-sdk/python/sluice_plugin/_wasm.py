"""The glue between a plugin class and the generated bindings, used only inside
the component: `sluice plugin build` generates an entry module that calls
`source_export` or `writer_export`. The bindings (`wit_world`,
`componentize_py_types`) exist only there, so they are imported here and nowhere
else."""

from __future__ import annotations

import traceback
from typing import Any, Tuple

from . import _host
from .errors import PluginError
from .message import Message
from .postgres import PgError
from .rows import RowEncoder, decode_rows
from .schema import Column, Schema
from .source import configure as _configure
from .source import decode_batch, parse_config
from .writer import rejections

_PG_KINDS = {"ACCESS_DENIED": "access-denied", "RETRIABLE": "retriable", "DATA": "data", "OTHER": "other"}


def _plugin_error(types: Any, e: PluginError) -> Any:
    cls = {
        "invalid-config": types.PluginError_InvalidConfig,
        "retriable": types.PluginError_Retriable,
    }.get(e.kind, types.PluginError_Fatal)
    return cls(e.message)


def _traceback(what: str, e: BaseException) -> str:
    # Frames without their source lines: reading them would need files, which
    # the sandbox has not.
    frames = "".join(
        f"\n  File \"{f.f_code.co_filename}\", line {line}, in {f.f_code.co_name}"
        for f, line in traceback.walk_tb(e.__traceback__)
    )
    return f"{what} raised {type(e).__name__}: {e}\nTraceback (most recent call last):{frames}"


class _LogStream:
    """`sys.stdout` and `sys.stderr` inside the component (which has no WASI
    streams): each line written goes to the plugin's log at `level`."""

    def __init__(self, level: str):
        self.level = level
        self._pending = ""

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            _host.backend.log(self.level, line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ""
            _host.backend.log(self.level, line)

    def isatty(self) -> bool:
        return False


def _redirect_std_streams() -> None:
    import sys

    sys.stdout = _LogStream("info")
    sys.stderr = _LogStream("warn")


class _WasmPg:
    """A granted connection through the host's `postgres` import."""

    def __init__(self, pg: Any, Err: Any, conn: Any):
        self._pg, self._Err, self._conn = pg, Err, conn

    def _value(self, v: Any) -> Any:
        pg = self._pg
        if v is None:
            return pg.PgValue_Null()
        if isinstance(v, bool):
            return pg.PgValue_Boolean(v)
        if isinstance(v, int):
            return pg.PgValue_Int(v)
        if isinstance(v, float):
            return pg.PgValue_Float(v)
        if isinstance(v, str):
            return pg.PgValue_Text(v)
        return pg.PgValue_Bytes(bytes(v))

    def _call(self, f: Any, *args: Any) -> Any:
        try:
            return f(*args)
        except self._Err as e:
            raise _pg_error(e.value) from None

    def batch_execute(self, sql: str) -> None:
        self._call(self._conn.batch_execute, sql)

    def execute(self, statement: str, params: list) -> int:
        return self._call(self._conn.execute, statement, [self._value(p) for p in params])

    def query(self, statement: str, params: list) -> list:
        rows = self._call(self._conn.query, statement, [self._value(p) for p in params])
        return [[getattr(v, "value", None) for v in row] for row in rows]

    def copy_in(self, statement: str, data: bytes) -> int:
        return self._call(self._conn.copy_in, statement, data)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.__exit__(None, None, None)


def _pg_error(e: Any) -> PgError:
    return PgError(_PG_KINDS.get(e.kind.name, "other"), e.message, e.code, e.detail, e.context)


class _WasmBackend(_host.Backend):
    def __init__(self, with_postgres: bool):
        from componentize_py_types import Err
        from wit_world.imports import log

        self._log, self._Err = log, Err
        self._pg = None
        if with_postgres:
            from wit_world.imports import postgres

            self._pg = postgres

    def log(self, level: str, message: str) -> None:
        self._log.log(self._log.Level[level.upper()], message)

    def open_postgres(self, name: str) -> Any:
        if self._pg is None:
            raise PgError("access-denied", "a source plugin has no postgres capability")
        try:
            conn = self._pg.Connection.open(name)
        except self._Err as e:
            raise _pg_error(e.value) from None
        return _WasmPg(self._pg, self._Err, conn)


def _message(m: Any) -> Message:
    return Message(
        body=m.body,
        exchange=m.exchange,
        routing_key=m.routing_key,
        headers=[(k, getattr(v, "value", None)) for k, v in m.headers],
        content_type=m.content_type,
        message_id=m.message_id,
        timestamp=m.timestamp,
        redelivered=m.redelivered,
    )


def source_export(plugin_cls: Any, info: Tuple[str, str, str]) -> type:
    """The class componentize-py exports as `sluice:plugin/source`."""
    from componentize_py_types import Err
    from wit_world.exports import source as wsource
    from wit_world.imports import types

    _host.set_backend(_WasmBackend(with_postgres=False))
    _redirect_std_streams()
    columns_type = types.ColumnType

    # componentize-py may make a new `Source` for each call: the plugin's
    # state lives here, once per component instance.
    class Source:
        plugin: Any = None
        schema: Any = None

        def about(self) -> Any:
            return types.PluginInfo(*info)

        def configure(self, config: str) -> Any:
            try:
                Source.plugin = plugin_cls()
                schema = _configure(self.plugin, config)
            except PluginError as e:
                raise Err(_plugin_error(types, e))
            except Exception as e:
                _host.backend.log("error", _traceback("configure", e))
                raise Err(types.PluginError_Fatal(f"configure raised {type(e).__name__}: {e}"))
            Source.schema = schema
            RowEncoder(schema)  # generates the schema's row encoder now, not in the first decode
            return types.Schema(
                schema.name,
                schema.version,
                [types.Column(c.name, columns_type[c.type.upper()], c.nullable, c.key) for c in schema.columns],
            )

        def decode(self, messages: Any) -> Any:
            if self.plugin is None or self.schema is None:
                raise RuntimeError("decode before configure")
            try:
                outcomes, count, data = decode_batch(self.plugin, self.schema, [_message(m) for m in messages])
            except Exception as e:
                # A bug in the plugin: the host stops this instance (a trap) and
                # handles the batch as for any failed plugin.
                _host.backend.log("error", _traceback("decode", e))
                raise
            return wsource.DecodedBatch(
                [wsource.MessageOutcome_Rows(v) if k == "rows" else wsource.MessageOutcome_Rejected(v) for k, v in outcomes],
                types.RowBatch(count, data),
            )

    return Source


def writer_export(plugin_cls: Any, info: Tuple[str, str, str]) -> type:
    """The class componentize-py exports as `sluice:plugin/writer`."""
    from componentize_py_types import Err
    from wit_world.exports import writer as wwriter
    from wit_world.imports import types

    _host.set_backend(_WasmBackend(with_postgres=True))
    _redirect_std_streams()

    # As for sources: the state is the class's, once per component instance.
    class Writer:
        plugin: Any = None
        schema: Any = None

        def about(self) -> Any:
            return types.PluginInfo(*info)

        def open(self, config: str, schema: Any) -> None:
            try:
                Writer.schema = Schema(
                    schema.name,
                    schema.version,
                    [Column(c.name, c.type.name.lower(), c.nullable, c.key) for c in schema.columns],
                )
                Writer.plugin = plugin_cls()
                self.plugin.open(parse_config(config), self.schema)
            except PluginError as e:
                raise Err(_plugin_error(types, e))
            except PgError as e:
                raise Err(_plugin_error(types, e.plugin_error("opening the writer")))
            except Exception as e:
                _host.backend.log("error", _traceback("open", e))
                raise Err(types.PluginError_Fatal(f"open raised {type(e).__name__}: {e}"))

        def write(self, batch: Any) -> Any:
            if self.plugin is None or self.schema is None:
                raise RuntimeError("write before open")
            try:
                rows = decode_rows(self.schema, batch.count, batch.data)
                result = rejections(self.plugin.write(rows), len(rows))
            except PluginError as e:
                raise Err(_plugin_error(types, e))
            except PgError as e:
                raise Err(_plugin_error(types, e.plugin_error("writing rows")))
            except Exception as e:
                _host.backend.log("error", _traceback("write", e))
                raise
            return [wwriter.RowRejection(r.row, r.reason) for r in result]

    return Writer
