"""{{name}}: a Sluice source plugin. Each message body holds `id,value` lines;
each line becomes one row (`id` int64, the key; `value` text, nullable when
empty). A message with a bad line is rejected whole, naming the line.

Configuration (the pipeline's `[pipelines.source.config]` table), optional:
`schema` (the schema's name, default "{{module}}").
"""

from sluice_plugin import InvalidConfig, Reject, Schema, Source, log


class {{class}}(Source):
    def configure(self, config):
        name = config.get("schema", "{{module}}")
        if not isinstance(name, str):
            raise InvalidConfig(f"schema: {name!r} is not a string")
        log.info(f"{{name}}: rows go to schema {name}")
        return Schema(name, 1).key("id", "int64").optional("value", "text")

    def decode_message(self, message):
        try:
            text = message.body.decode("utf-8")
        except UnicodeDecodeError:
            raise Reject("the body is not UTF-8") from None
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            id_text, sep, value = line.partition(",")
            if not sep:
                raise Reject(f"line {number}: no comma (expected `id,value`)")
            try:
                id = int(id_text)
            except ValueError:
                raise Reject(f"line {number}: id {id_text!r} is not an integer") from None
            rows.append((id, value or None))
        return rows
