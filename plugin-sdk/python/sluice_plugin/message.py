"""One queue message, as a source sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple


@dataclass
class Message:
    """A message from the queue. Header values are plain Python values: None (AMQP
    void), bool, int, float, str (nested tables and arrays as JSON text), bytes;
    an AMQP timestamp header is an int of seconds since the epoch."""

    body: bytes
    exchange: str = ""
    routing_key: str = ""
    headers: List[Tuple[str, Any]] = field(default_factory=list)
    content_type: Optional[str] = None
    message_id: Optional[str] = None
    #: The `timestamp` property: seconds since 1970-01-01T00:00:00Z.
    timestamp: Optional[int] = None
    redelivered: bool = False

    def header(self, name: str) -> Any:
        """The value of the first header called `name`, or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def text(self) -> str:
        """The body as UTF-8 text; `UnicodeDecodeError` when it is not."""
        return self.body.decode("utf-8")
