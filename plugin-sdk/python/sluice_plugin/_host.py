"""Where host calls go: the real host (inside the component, set by the generated
entry module) or the test harness. Nothing here is for plugin authors."""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional


class Backend:
    """Host calls made without a host: logs go to stderr; no capability is granted."""

    def log(self, level: str, message: str) -> None:
        print(f"[{level}] {message}", file=sys.stderr)

    def open_postgres(self, name: str) -> Any:
        from .postgres import PgError

        raise PgError("access-denied", f"connection `{name}` is not granted (no host: run the plugin with "
                      "sluice_plugin.testing, or inside Sluice)")


backend: Backend = Backend()


def set_backend(b: Backend) -> Backend:
    """Installs `b` and returns the one it replaces."""
    global backend
    old, backend = backend, b
    return old
