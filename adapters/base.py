"""What every endpoint adapter provides, and the small helpers they share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from adapters.errors import OptionsError, ShapeError

Dialect = Literal["rust", "go"]
DIALECTS: tuple[Dialect, ...] = ("rust", "go")

JSONObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Translation:
    """A translated body, and what the translation could not carry (None when nothing)."""

    body: JSONObject
    lossy: str | None = None


class Adapter(Protocol):
    """Translates one endpoint's JSON bodies between dialects.

    `client` is the dialect the caller speaks, `backend` the one that serves. Adapters never
    mutate their input and never do I/O.
    """

    name: str

    def parse_options(self, raw: Mapping[str, Any]) -> Any:
        """Validate the route table's options; raise OptionsError naming the key."""
        ...

    def needs_rewrite(self, *, client: Dialect, backend: Dialect, options: Any) -> bool:
        """Whether a body must be parsed at all for this pair (False: stream it untouched)."""
        ...

    def translate_request(
        self, body: Any, *, client: Dialect, backend: Dialect, options: Any
    ) -> JSONObject:
        """Client-dialect request body -> backend-dialect request body."""
        ...

    def translate_response(
        self, body: Any, *, client: Dialect, backend: Dialect, options: Any
    ) -> Translation:
        """Backend-dialect response body -> client-dialect response body."""
        ...

    def losses(self, *, client: Dialect, backend: Dialect, options: Any) -> str | None:
        """What a response for this pair cannot carry, in a few words (None: nothing)."""
        ...

    def compared_in(self, client: Dialect) -> Dialect:
        """The dialect both shadow answers are brought to before they are compared, for a
        client of this face (the built-in comparators read Rust field names)."""
        ...


def require_object(body: Any, *, what: str) -> JSONObject:
    """The body itself must be a JSON object."""
    if not isinstance(body, dict):
        raise ShapeError(f"{what} must be a JSON object", field="$")
    return body


def require(body: JSONObject, field: str, kind: type | tuple[type, ...], what: str) -> Any:
    """A required field of the given JSON type (bool is never accepted as a number)."""
    if field not in body:
        raise ShapeError(f"{field} is required", field=field)
    value = body[field]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ShapeError(f"{field} must be {what}", field=field)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def passthrough_fields(body: JSONObject, known: frozenset[str]) -> JSONObject:
    """Fields an adapter does not know: carried over as they are, never silently dropped."""
    return {key: value for key, value in body.items() if key not in known}


class RenamingAdapter:
    """Base for adapters that take no options and rewrite only across dialects."""

    name: str

    def parse_options(self, raw: Mapping[str, Any]) -> None:
        if raw:
            key = sorted(raw)[0]
            raise OptionsError(f"unknown option {key!r}", field=key)

    def needs_rewrite(self, *, client: Dialect, backend: Dialect, options: None) -> bool:
        return client != backend

    def losses(self, *, client: Dialect, backend: Dialect, options: None) -> str | None:
        return None

    def compared_in(self, client: Dialect) -> Dialect:
        return "rust"
