"""What every endpoint adapter provides, and the small helpers they share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from adapters.errors import OptionsError, ShapeError

Dialect = Literal["rust", "go"]
DIALECTS: tuple[Dialect, ...] = ("rust", "go")

JSONObject = dict[str, Any]
Comparator = Literal["cosine", "ranking", "json"]
SAMPLE_PHRASES = (
    "forklift operator",
    "CNC operator night shift",
    "warehouse associate Dayton",
    "quality inspector with 10 years experience",
    "welder weekend shift",
    "shipping clerk",
    "maintenance technician Toledo",
    "machine operator swing shift",
)
"""Job-search phrases the built-in adapters make their probe samples from."""


@dataclass(frozen=True, slots=True)
class Translation:
    """A translated body, and what the translation could not carry (None when nothing)."""

    body: JSONObject
    lossy: str | None = None


@dataclass(frozen=True, slots=True)
class Comparing:
    """How two answers of one endpoint are compared (shadow, probe), once both are in the
    dialect `Adapter.compared_in` chose: the comparator and the fields it reads there.

    `field` names, per dialect, the list the metric judges (cosine: the vectors; ranking: the
    hits, each with an `id`); `score` each hit's number whose drift is measured (ranking).
    The JSON diff reads no field: it walks the whole answer.

    >>> Comparing("ranking", field={"rust": "results", "go": "hits"},
    ...           score={"rust": "score", "go": "distance"}).fields("go")
    ('hits', 'distance')
    """

    comparator: Comparator = "json"
    field: Mapping[Dialect, str] | None = None
    score: Mapping[Dialect, str] | None = None

    def __post_init__(self) -> None:
        # A programmer's mistake, caught when the adapter is built, never per request.
        assert self.comparator == "json" or self.field is not None, "cosine/ranking need field"
        assert self.comparator != "ranking" or self.score is not None, "ranking needs score"

    def fields(self, dialect: Dialect) -> tuple[str | None, str | None]:
        """(the judged list, the hits' score) in `dialect`; None where not read."""
        return (
            None if self.field is None else self.field[dialect],
            None if self.score is None else self.score[dialect],
        )


JSON_DIFF = Comparing()


class Adapter(Protocol):
    """Everything the shim knows about one endpoint family, beyond its paths.

    The wire shapes in both dialects (`translate_*`), what a translation loses and what each
    loss means, how shadow answers are compared, which requests may be sent twice, and
    requests to probe it with. The route table names the adapter (a built-in name, or
    `package.module:ATTRIBUTE` for one of your own); nothing else in the shim is keyed by
    endpoint. `client` is the dialect the caller speaks, `backend` the one that serves.
    Adapters never mutate their input and never do I/O.
    """

    name: str
    comparing: Comparing
    """The comparator and the fields it reads (the route table may still say "json" or
    "bytes"; only the adapter knows the fields of another comparator)."""
    loss_descriptions: Mapping[str, str]
    """Every value `losses` may return (sent as X-Shim-Lossy), and what it means to a client;
    `shim check --explain` prints it."""
    repeat_rule: str | None
    """None: any request of a method the route table calls idempotent may be sent twice
    (shadowed, retried on the other backend). Else the rule `may_repeat` applies to each
    request, in a few words ("read-only statements"); only then is a body parsed to ask."""

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
        client of this face (the built-in adapters compare in Rust field names)."""
        ...

    def may_repeat(self, request: Any, *, client: Dialect, options: Any) -> bool:
        """Whether this parsed request, in the client's dialect, may be sent twice (asked
        only when `repeat_rule` is set). Err towards False: a false "no" costs a comparison
        or a retry, a false "yes" could write twice."""
        ...

    def samples(self, count: int, *, client: Dialect, options: Any) -> list[JSONObject]:
        """`count` request bodies in the client's dialect for `shim parity probe` without
        `--input` (a rehearsal); [] when the adapter has none."""
        ...


ADAPTER_MEMBERS = tuple(
    sorted({*Adapter.__annotations__, *(m for m in vars(Adapter) if not m.startswith("_"))})
)
"""What an adapter of your own must have (the route table checks it when it imports one)."""


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
    """Base for adapters that take no options and rewrite only across dialects: compared by
    JSON diff in the Rust dialect, lossless, every request repeatable, no samples."""

    name: str
    comparing: Comparing = JSON_DIFF
    loss_descriptions: Mapping[str, str] = {}
    repeat_rule: str | None = None

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

    def may_repeat(self, request: Any, *, client: Dialect, options: None) -> bool:
        return True

    def samples(self, count: int, *, client: Dialect, options: None) -> list[JSONObject]:
        return []


def sample_phrase(index: int) -> str:
    """The `index`-th probe phrase: the list, then the list again with a number added."""
    phrase = SAMPLE_PHRASES[index % len(SAMPLE_PHRASES)]
    return phrase if index < len(SAMPLE_PHRASES) else f"{phrase} {index}"
