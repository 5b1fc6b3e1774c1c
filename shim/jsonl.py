"""JSON-lines files written by appending: the audit trail and the parity samples.

Readers read past anything that is not a record (a torn last line from a crash, garbage
written over the file by another tool) and say how many lines they skipped; writers start
on a fresh line, so a record appended after garbage is never glued to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import orjson


class Lines(NamedTuple):
    """The records of a JSON-lines file, and how many lines were not records."""

    records: list[dict[str, Any]]
    unreadable: int


def read_lines(path: Path) -> Lines:
    """Every complete record of `path`, oldest first; a missing file has none."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return Lines([], 0)
    records = []
    unreadable = 0
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            unreadable += bool(line.strip())
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            unreadable += 1
    return Lines(records, unreadable)


def read_records(path: Path) -> list[dict[str, Any]]:
    """`read_lines(path).records`."""
    return read_lines(path).records


def append_lines(path: Path, lines: bytes, *, sync: bool = False) -> int:
    """Append complete lines to `path`, on a line of their own; returns the file's size."""
    with path.open("a+b") as file:  # readable too: the last byte decides the newline
        size = file.seek(0, os.SEEK_END)
        if size and os.pread(file.fileno(), 1, size - 1) != b"\n":
            lines = b"\n" + lines
        file.write(lines)
        if sync:
            file.flush()
            os.fsync(file.fileno())
        return file.tell()
