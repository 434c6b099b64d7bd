"""Run a plugin the way the host would, in plain Python (`python -m pytest`), with
no wasm and no host: the same configuration parsing, schema checks and row
encoding as inside Sluice; logs captured; Postgres grants given as objects.

    def test_decodes_a_line():
        run = testing.run_source(CsvSource, {"columns": [...]}, [testing.message(b"1,a")])
        assert run.rows == [{"id": 1, "name": "a"}]
        assert run.rejection(0) is None
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

from . import _host
from .errors import PluginError
from .message import Message
from .postgres import PgError
from .rows import decode_rows, encode_rows
from .schema import Schema
from .source import Source, configure, decode_batch
from .writer import RowRejection, Writer, rejections


def message(body: Union[bytes, str], **props: Any) -> Message:
    """A message with this body (str is UTF-8 encoded) and properties
    (`message_id=`, `headers=`, `content_type=`...)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return Message(body=body, **props)


class Harness(_host.Backend):
    """Stands in for the host: records log lines and opens granted connections.
    `grants` maps a connection name to an object with the methods of
    `postgres.Connection` (`batch_execute`, `execute`, `query`, `copy_in`), or to a
    callable returning one."""

    def __init__(self, grants: Optional[Mapping[str, Any]] = None):
        self.grants = dict(grants or {})
        #: (level, message) of every log line, in order.
        self.logs: List[Tuple[str, str]] = []

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    def open_postgres(self, name: str) -> Any:
        if name not in self.grants:
            raise PgError("access-denied", f"connection `{name}` is not granted to this plugin")
        g = self.grants[name]
        return g() if callable(g) and not hasattr(g, "execute") else g

    def __enter__(self) -> "Harness":
        self._old = _host.set_backend(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _host.set_backend(self._old)


@dataclass
class SourceRun:
    """What the host would have seen from one batch."""

    schema: Schema
    #: One per message: ("rows", n) or ("rejected", reason).
    outcomes: List[Tuple[str, Union[int, str]]]
    #: Every accepted row, decoded back from the row encoding (dicts by column name).
    rows: List[Dict[str, Any]]
    #: The (level, message) log lines.
    logs: List[Tuple[str, str]] = field(default_factory=list)

    def rejection(self, index: int) -> Optional[str]:
        """The reason message `index` was rejected, or None if it was not."""
        kind, value = self.outcomes[index]
        return value if kind == "rejected" else None  # type: ignore[return-value]

    def rejections(self) -> Dict[int, str]:
        """Every rejected message's index and reason."""
        return {i: v for i, (k, v) in enumerate(self.outcomes) if k == "rejected"}  # type: ignore[misc]


def _config_text(config: Union[str, Mapping[str, Any], None]) -> str:
    if config is None:
        return "{}"
    return config if isinstance(config, str) else json.dumps(config)


def configure_source(source: Union[Source, Type[Source]], config: Union[str, Mapping[str, Any], None] = None) -> Schema:
    """Runs `configure` as the host would (the config goes through JSON) and
    returns the checked schema; raises the `PluginError` the host would get."""
    plugin = source() if isinstance(source, type) else source
    with Harness():
        return configure(plugin, _config_text(config))


def run_source(
    source: Union[Source, Type[Source]],
    config: Union[str, Mapping[str, Any], None],
    messages: Iterable[Union[Message, bytes, str]],
) -> SourceRun:
    """Configures a source (a class, or an instance) and decodes one batch of
    `messages` (bytes or str bodies become messages), as the host would."""
    plugin = source() if isinstance(source, type) else source
    msgs = [m if isinstance(m, Message) else message(m) for m in messages]
    with Harness() as h:
        schema = configure(plugin, _config_text(config))
        outcomes, count, data = decode_batch(plugin, schema, msgs)
    return SourceRun(schema, outcomes, decode_rows(schema, count, data), h.logs)


@dataclass
class WriterRun:
    """What the host would have seen from `write`."""

    #: The rows rejected for good.
    rejections: List[RowRejection]
    #: The error `open` or `write` raised (the host would retry), or None.
    error: Optional[PluginError]
    logs: List[Tuple[str, str]] = field(default_factory=list)


def run_writer(
    writer: Union[Writer, Type[Writer]],
    config: Union[str, Mapping[str, Any], None],
    schema: Schema,
    rows: Iterable[Any],
    grants: Optional[Mapping[str, Any]] = None,
) -> WriterRun:
    """Opens a writer with `grants` and writes `rows` (tuples or dicts, checked
    against `schema` and passed through the row encoding first), as the host would.
    A `PluginError` (or a `PgError`, turned into one by the SDK's rule) is returned
    in `error`, not raised."""
    plugin = writer() if isinstance(writer, type) else writer
    schema.check()
    count, data = encode_rows(schema, rows)
    decoded = decode_rows(schema, count, data)
    from .source import parse_config

    with Harness(grants) as h:
        try:
            try:
                plugin.open(parse_config(_config_text(config)), schema)
            except PgError as e:
                raise e.plugin_error("opening the writer") from None
            try:
                result = rejections(plugin.write(decoded), len(decoded))
            except PgError as e:
                raise e.plugin_error("writing rows") from None
        except PluginError as e:
            return WriterRun([], e, h.logs)
    return WriterRun(result, None, h.logs)
