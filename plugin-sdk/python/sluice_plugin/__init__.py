"""The Sluice plugin SDK for Python, over the WIT contract `sluice:plugin@0.1.0`.

A source is a `Source` subclass (`configure(config) -> Schema`,
`decode_message(message) -> rows` or `decode(messages)`); a writer is a `Writer`
subclass (`open(config, schema)`, `write(rows)`). Rows are plain Python values
checked against the schema (see `sluice_plugin.rows`). Logging is
`sluice_plugin.log`; a writer's granted Postgres connections are
`sluice_plugin.postgres`. Test a plugin without wasm with `sluice_plugin.testing`,
build it with `sluice plugin build DIR`.
"""

from . import log, postgres
from .errors import Fatal, InvalidConfig, PluginError, Reject, Retriable, RowError
from .message import Message
from .schema import COLUMN_TYPES, Column, Schema, column_type
from .source import Source
from .writer import RowRejection, Writer

#: The WIT contract this SDK implements.
WIT_VERSION = "sluice:plugin@0.1.0"

__all__ = [
    "COLUMN_TYPES",
    "Column",
    "Fatal",
    "InvalidConfig",
    "Message",
    "PluginError",
    "Reject",
    "Retriable",
    "RowError",
    "RowRejection",
    "Schema",
    "Source",
    "WIT_VERSION",
    "Writer",
    "column_type",
    "log",
    "postgres",
]
