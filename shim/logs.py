"""Logging set-up: one JSON line per event on stderr."""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    """Access lines are already JSON objects; other records become one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "shim.access":
            return message
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str) -> None:
    """Route the shim's loggers to stderr as JSON lines at `level` (idempotent)."""
    root = logging.getLogger("shim")
    root.setLevel(level.upper())
    if not any(getattr(h, "_shim", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._shim = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
