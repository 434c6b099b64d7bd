"""A misbehaving Python source for the integration tests. Each message body
says what to do: `raise`, `loop` (forever), `alloc` (without bound); any other
body is one row `(body)`."""

from sluice_plugin import Schema, Source


class Chaos(Source):
    def configure(self, config):
        return Schema("chaos", 1).key("body", "text")

    def decode_message(self, message):
        body = message.body.decode()
        if body == "raise":
            raise RuntimeError("chaos: asked to raise")
        if body == "loop":
            n = 0
            while True:
                n += 1
        if body == "alloc":
            hog = []
            while True:
                hog.append(bytearray(1 << 20))
        return [(body,)]
