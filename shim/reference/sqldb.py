"""The reference SQL engine: the corpus as an in-memory, read-only SQLite table."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from shim.reference.corpus import Worker

SCHEMA = """CREATE TABLE workers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, years INTEGER NOT NULL,
    shift TEXT NOT NULL, city TEXT NOT NULL, rate REAL NOT NULL)"""
SQLITE_TYPES = {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB", type(None): "NULL"}
MAX_ROWS = 10_000


class SqlRefused(Exception):
    """A statement the engine refuses: a syntax error, a write, or too many rows."""


class SqlDatabase:
    """One connection, query-only, guarded by a lock (SQLite connections are not shared)."""

    def __init__(self, workers: list[Worker]) -> None:
        self._connection = sqlite3.connect(":memory:", check_same_thread=False)
        self._connection.execute(SCHEMA)
        self._connection.executemany(
            "INSERT INTO workers VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(w.id, w.name, w.role, w.years, w.shift, w.city, w.rate) for w in workers],
        )
        self._connection.commit()
        self._connection.execute("PRAGMA query_only = ON")
        self._lock = threading.Lock()

    def run(self, statement: str) -> tuple[list[str], list[str], list[list[Any]]]:
        """Column names, column types (from the first row's values) and rows."""
        with self._lock:
            try:
                cursor = self._connection.execute(statement)
                rows = [list(row) for row in cursor.fetchmany(MAX_ROWS + 1)]
            except sqlite3.Error as exc:
                raise SqlRefused(str(exc)) from None
        if len(rows) > MAX_ROWS:
            raise SqlRefused(f"more than {MAX_ROWS} rows; add a LIMIT")
        names = [column[0] for column in cursor.description or []]
        types = (
            [SQLITE_TYPES.get(type(v), "TEXT") for v in rows[0]] if rows else ["NULL"] * len(names)
        )
        return names, types, rows
