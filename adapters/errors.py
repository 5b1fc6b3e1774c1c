"""The adapter error tree.

    AdapterError            a body could not be translated; `field` is the JSON path that failed
    ├── ShapeError          a field is missing or has the wrong type
    ├── NonFiniteError      a number is NaN or infinite
    └── OptionsError        a route's adapter options are invalid (caught at start-up)

Whether a failure is the client's fault (400) or the backend's (502) is decided by the caller,
which knows which side the body came from.
"""

from __future__ import annotations


class AdapterError(Exception):
    """A body could not be translated between dialects."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ShapeError(AdapterError):
    """A required field is missing or has the wrong type."""


class NonFiniteError(AdapterError):
    """A number that must be finite is NaN or infinite."""


class OptionsError(AdapterError):
    """An adapter option in the route table is invalid."""
