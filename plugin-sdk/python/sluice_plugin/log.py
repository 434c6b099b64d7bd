"""Logging into the host's structured log, tagged with the plugin and pipeline.

    from sluice_plugin import log
    log.info("configured 12 columns")
"""

from __future__ import annotations

from . import _host

LEVELS = ("trace", "debug", "info", "warn", "error")


def log(level: str, message: str) -> None:
    """Writes one record at `level` (`trace`, `debug`, `info`, `warn` or `error`)."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (expected one of {', '.join(LEVELS)})")
    _host.backend.log(level, str(message))


def trace(message: str) -> None:
    """A record at trace level."""
    log("trace", message)


def debug(message: str) -> None:
    """A record at debug level."""
    log("debug", message)


def info(message: str) -> None:
    """A record at info level."""
    log("info", message)


def warn(message: str) -> None:
    """A record at warn level."""
    log("warn", message)


def error(message: str) -> None:
    """A record at error level."""
    log("error", message)
