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
    """The records of a JSON-lines file, how many lines were not records, and the offset
    where the lines read end (to read only what is appended next: `start=end`)."""

    records: list[dict[str, Any]]
    unreadable: int
    end: int = 0


def read_lines(path: Path, *, start: int = 0) -> Lines:
    """Every complete record of `path`, oldest first; a missing file has none.

    From `start` > 0 (a previous `end`), only the lines appended since, and only whole ones:
    a line still being written is read next time.
    """
    try:
        with path.open("rb") as file:
            file.seek(start)
            data = file.read()
    except FileNotFoundError:
        return Lines([], 0)
    if start:
        data = data[: data.rfind(b"\n") + 1]
    records, unreadable, _ = parse_lines(data)
    return Lines(records, unreadable, start + len(data))


def parse_lines(data: bytes) -> Lines:
    """The records of JSON-lines `data` and how many non-blank lines were not records."""
    records = []
    unreadable = 0
    for line in data.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            unreadable += bool(line.strip())
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            unreadable += 1
    return Lines(records, unreadable, len(data))


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
