"""Source plugins: they turn queue messages into rows of a declared schema."""

from __future__ import annotations

import json
from typing import Any, Iterable, List, Tuple, Union

from .errors import InvalidConfig, Reject, RowError
from .message import Message
from .rows import RowEncoder
from .schema import Schema


class Source:
    """Subclass it and override `configure` and `decode_message` (or `decode`, to
    see the whole batch):

        class Lines(Source):
            def configure(self, config):
                return Schema("lines", 1).key("id", "text").required("line", "text")

            def decode_message(self, message):
                if message.message_id is None:
                    raise Reject("no message id")
                return [(message.message_id, message.text())]

    One instance serves one plugin instance: `configure` is called once, before
    any `decode`. An exception other than `Reject` is a bug: the host stops the
    instance and handles the batch as for any failed plugin (it is retried, then
    dead-lettered)."""

    def configure(self, config: dict) -> Schema:
        """Reads the configuration (the pipeline's `[pipelines.source.config]`
        table, as a dict) and returns the schema of the rows. Raise
        `InvalidConfig` naming what is wrong."""
        raise NotImplementedError("a Source must define configure(self, config) -> Schema")

    def decode_message(self, message: Message) -> Iterable[Any]:
        """The rows of one message (tuples in column order or dicts by column
        name; none is fine). Raise `Reject(reason)` when it cannot be decoded."""
        raise NotImplementedError("a Source must define decode_message(self, message) or decode(self, messages)")

    def decode(self, messages: List[Message]) -> List[Union[Iterable[Any], Reject]]:
        """One outcome per message, in order: its rows, or a `Reject`. By default,
        `decode_message` for each message."""
        out: List[Union[Iterable[Any], Reject]] = []
        for m in messages:
            try:
                out.append(list(self.decode_message(m)))
            except Reject as r:
                out.append(r)
        return out


def parse_config(config: str) -> dict:
    """The JSON configuration as a dict; `InvalidConfig` when it is not an object."""
    try:
        value = json.loads(config) if config.strip() else {}
    except ValueError as e:
        raise InvalidConfig(f"the configuration is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidConfig(f"the configuration is not a JSON object but {type(value).__name__}")
    return value


def configure(source: Source, config: str) -> Schema:
    """Runs `source.configure` as the host would and checks the schema."""
    schema = source.configure(parse_config(config))
    if not isinstance(schema, Schema):
        raise InvalidConfig(f"configure returned {type(schema).__name__}, not a Schema")
    schema.check()
    return schema


#: One message's outcome: ("rows", n) or ("rejected", reason).
Outcome = Tuple[str, Union[int, str]]


def decode_batch(source: Source, schema: Schema, messages: List[Message]) -> Tuple[List[Outcome], int, bytes]:
    """Decodes a batch as the host would: every row checked against the schema (a
    message whose rows do not fit is rejected, naming the row and column). Returns
    the outcomes, the row count and the encoded rows."""
    results = source.decode(messages)
    results = list(results) if results is not None else []
    if len(results) != len(messages):
        reason = f"the plugin's decode returned {len(results)} outcomes for {len(messages)} messages"
        return [("rejected", reason)] * len(messages), 0, b""
    encoder = RowEncoder(schema)
    outcomes: List[Outcome] = []
    for result in results:
        if isinstance(result, Reject):
            outcomes.append(("rejected", result.reason))
            continue
        try:
            n = encoder.extend(result)
        except RowError as e:
            outcomes.append(("rejected", f"a decoded row does not fit schema `{schema.name}`: {e}"))
            continue
        except TypeError as e:
            outcomes.append(("rejected", f"decode gave no rows for this message: {e}"))
            continue
        outcomes.append(("rows", n))
    count, data = encoder.finish()
    return outcomes, count, data
