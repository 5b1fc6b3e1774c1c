"""`vectors_search` and `retrieve`: ranked hits, `score` (Rust) <-> `distance` (Go).

Rust: request ``{..., "k": int}`` -> ``{"results": [{"id", "score", ...}]}``, score descending.
Go:   request ``{..., "top_k": int}`` -> ``{"hits": [{"id", "distance", ...}]}``, ascending.
score = 1 - distance (cosine), so the order is the same list in both dialects. The two
endpoints differ only in what their requests carry (`index` + `vector`, or `query`).
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
from adapters.vectors import as_matrix

K_FIELD: Mapping[Dialect, str] = {"rust": "k", "go": "top_k"}
HITS_FIELD: Mapping[Dialect, str] = {"rust": "results", "go": "hits"}
RANK_FIELD: Mapping[Dialect, str] = {"rust": "score", "go": "distance"}


def translate_hit(hit: Any, *, client: Dialect, backend: Dialect, field: str) -> JSONObject:
    """One hit into the client's dialect; extra fields such as `text` ride along."""
    hit = require_object(hit, what=field)
    hit_id = hit.get("id")
    if not isinstance(hit_id, str):
        raise ShapeError(f"{field}.id must be a string", field=f"{field}.id")
    rank_field = RANK_FIELD[backend]
    value = hit.get(rank_field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ShapeError(f"{field}.{rank_field} must be a number", field=f"{field}.{rank_field}")
    ranked = value if client == backend else 1.0 - value
    translated: JSONObject = {"id": hit_id, RANK_FIELD[client]: ranked}
    translated.update(passthrough_fields(hit, frozenset({"id", rank_field})))
    return translated


class SearchAdapter(RenamingAdapter):
    """Shared by vector search and hybrid retrieve; `query_fields` are checked per request."""

    def __init__(self, name: str, query_fields: Mapping[str, tuple[type, str]]) -> None:
        self.name = name
        self.query_fields = query_fields

    def translate_request(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> JSONObject:
        """Check the query fields; rename `k` <-> `top_k`.

        >>> RETRIEVE.translate_request({"query": "q", "k": 3}, client="rust", backend="go",
        ...                            options=None)
        {'query': 'q', 'top_k': 3}
        """
        request = require_object(body, what=f"{self.name} request")
        for field, (kind, what) in self.query_fields.items():
            require(request, field, kind, what)
        if "vector" in self.query_fields:
            as_matrix([request["vector"]], field="vector")
        k = require(request, K_FIELD[client], int, "an integer")
        translated = passthrough_fields(request, frozenset({K_FIELD[client]}))
        translated[K_FIELD[backend]] = k
        return translated

    def translate_response(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> Translation:
        """Map every hit, keeping the order; unknown top-level fields are carried over."""
        response = require_object(body, what=f"{self.name} response")
        hits_field = HITS_FIELD[backend]
        hits = require(response, hits_field, list, "a list")
        translated: JSONObject = {
            HITS_FIELD[client]: [
                translate_hit(hit, client=client, backend=backend, field=f"{hits_field}[{i}]")
                for i, hit in enumerate(hits)
            ],
            **passthrough_fields(response, frozenset({hits_field})),
        }
        return Translation(translated)


VECTORS_SEARCH = SearchAdapter(
    "vectors_search", {"index": (str, "a string"), "vector": (list, "a list of numbers")}
)
RETRIEVE = SearchAdapter("retrieve", {"query": (str, "a string")})
