"""Logging set-up: one JSON line per event on stderr, for the shim's loggers and uvicorn's."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

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


class _ShimHandler(logging.StreamHandler[TextIO]):
    """The shim's own stderr handler: `configure` adds it once however often it is called."""


def configure(level: str) -> None:
    """Route the shim's loggers to stderr as JSON lines at `level` (idempotent)."""
    root = logging.getLogger("shim")
    root.setLevel(level.upper())
    if not any(isinstance(h, _ShimHandler) for h in root.handlers):
        handler = _ShimHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.propagate = False


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's `log_config`: its loggers (`uvicorn`, `uvicorn.error`, `uvicorn.access`)
    write the same JSON lines as the shim's, so a log has one format, not plain-text
    `INFO: Started server process` lines between JSON ones. Spawned workers get this dict
    with their pickled uvicorn Config and apply it themselves."""
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"json": handler},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},  # on to "uvicorn"
            "uvicorn.access": {"handlers": ["json"], "level": level.upper(), "propagate": False},
        },
    }
