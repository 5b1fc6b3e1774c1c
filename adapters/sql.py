"""`sql`: `/query` (Rust) <-> `/v1/sql` (Go).

Rust: ``{"sql": str}`` -> ``{"columns": [str], "rows": [[any]], "row_count": int}``.
Go:   ``{"query": str}`` -> ``{"columns": [{"name": str, "type": str}], "rows": [[any]]}``.
Rust does not say column types, so a Go-face client served by Rust sees ``"type": "unknown"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from adapters.base import (
    Dialect,
    JSONObject,
    RenamingAdapter,
    Translation,
    passthrough_fields,
    require,
    require_object,
)
from adapters.errors import ShapeError

STATEMENT_FIELD: Mapping[Dialect, str] = {"rust": "sql", "go": "query"}
_WRITES = re.compile(
    r"\b(insert|update|delete|replace|merge|upsert|drop|alter|create|truncate|attach|detach|"
    r"pragma|vacuum|reindex|grant|revoke|copy|call|exec|execute|set|begin|commit|rollback)\b",
    re.IGNORECASE,
)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


def is_read_only(statement: str) -> bool:
    """Conservatively: one SELECT/WITH/VALUES/EXPLAIN statement naming no writing keyword.

    Only statements that pass are shadowed (sent to the other backend too); a false "no"
    costs a comparison, a false "yes" could write twice, so the test errs towards "no".
    """
    text = _COMMENTS.sub(" ", statement).strip().rstrip(";").strip()
    if ";" in text or not text:
        return False
    first = text.split(None, 1)[0].lower()
    return first in ("select", "with", "values", "explain") and not _WRITES.search(text)


def statement_of(body: object, dialect: Dialect) -> str | None:
    """The SQL text of a request in `dialect`, if it has one."""
    value = body.get(STATEMENT_FIELD[dialect]) if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


UNKNOWN_TYPE = "unknown"


def column_names(columns: list[Any], *, backend: Dialect) -> list[str]:
    """Column names out of either dialect's `columns`."""
    names = []
    for index, column in enumerate(columns):
        name = column.get("name") if backend == "go" and isinstance(column, dict) else column
        if not isinstance(name, str):
            what = "an object with a string name" if backend == "go" else "a string"
            raise ShapeError(f"columns[{index}] must be {what}", field=f"columns[{index}]")
        names.append(name)
    return names


class SqlAdapter(RenamingAdapter):
    """Renames the statement field and converts the column list; only read-only statements
    are shadowed or retried."""

    name = "sql"
    loss_descriptions: Mapping[str, str] = {
        "column-types": 'column types (Rust does not report them; sent as "unknown")'
    }
    repeat_rule: str | None = "read-only statements"

    def may_repeat(self, request: Any, *, client: Dialect, options: None) -> bool:
        """Only a read-only statement (`is_read_only`) may run twice.

        >>> SQL.may_repeat({"query": "select 1"}, client="go", options=None)
        True
        >>> SQL.may_repeat({"sql": "delete from workers"}, client="rust", options=None)
        False
        """
        statement = statement_of(request, client)
        return statement is not None and is_read_only(statement)

    def samples(self, count: int, *, client: Dialect, options: None) -> list[JSONObject]:
        """Read-only statements over the `workers` table, a different bound each."""
        return [
            {
                STATEMENT_FIELD[client]: (
                    f"select id, role, years from workers where years > {index % 20} limit 10"
                )
            }
            for index in range(count)
        ]

    def translate_request(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> JSONObject:
        request = require_object(body, what="sql request")
        statement = require(request, STATEMENT_FIELD[client], str, "a string")
        translated = passthrough_fields(request, frozenset({STATEMENT_FIELD[client]}))
        translated[STATEMENT_FIELD[backend]] = statement
        return translated

    def translate_response(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> Translation:
        """Columns as strings (Rust) or objects (Go); `row_count` is computed for Rust."""
        response = require_object(body, what="sql response")
        columns = require(response, "columns", list, "a list")
        rows = require(response, "rows", list, "a list")
        names = column_names(columns, backend=backend)
        extra = passthrough_fields(response, frozenset({"columns", "rows", "row_count"}))
        if client == "rust":
            return Translation({"columns": names, "rows": rows, "row_count": len(rows), **extra})
        typed = [{"name": name, "type": UNKNOWN_TYPE} for name in names]
        lossy = self.losses(client=client, backend=backend, options=options)
        return Translation({"columns": typed, "rows": rows, **extra}, lossy)

    def losses(self, *, client: Dialect, backend: Dialect, options: None) -> str | None:
        return "column-types" if backend == "rust" and client == "go" else None


SQL = SqlAdapter()
