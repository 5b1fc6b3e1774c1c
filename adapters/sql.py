"""`sql`: `/query` (Rust) <-> `/v1/sql` (Go).

Rust: ``{"sql": str}`` -> ``{"columns": [str], "rows": [[any]], "row_count": int}``.
Go:   ``{"query": str}`` -> ``{"columns": [{"name": str, "type": str}], "rows": [[any]]}``.
Rust does not say column types, so a Go-face client served by Rust sees ``"type": "unknown"``.
"""

from __future__ import annotations

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
    """Renames the statement field and converts the column list."""

    name = "sql"

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
