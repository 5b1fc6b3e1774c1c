"""JSON-lines files written by appending: the audit trail and the parity samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of `path`, oldest first; a torn last line (a writer that
    crashed mid-line) is skipped, and a missing file has no records."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
