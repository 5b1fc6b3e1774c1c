"""`vectors_search` and `retrieve`: ranked hits, `score` (Rust) <-> `distance` (Go).

Rust: request ``{..., "k": int}`` -> ``{"results": [{"id", "score", ...}]}``, score descending.
Go:   request ``{..., "top_k": int}`` -> ``{"hits": [{"id", "distance", ...}]}``, ascending.
score = 1 - distance (cosine), so the order is the same list in both dialects. The two
endpoints differ only in what their requests carry (`index` + `vector`, or `query`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from adapters.base import (
    Comparing,
    Dialect,
    JSONObject,
    RenamingAdapter,
    Translation,
    passthrough_fields,
    require,
    require_object,
    sample_phrase,
)
from adapters.errors import ShapeError
from adapters.vectors import as_matrix

K_FIELD: Mapping[Dialect, str] = {"rust": "k", "go": "top_k"}
HITS_FIELD: Mapping[Dialect, str] = {"rust": "results", "go": "hits"}
RANK_FIELD: Mapping[Dialect, str] = {"rust": "score", "go": "distance"}
SAMPLE_K = 5
SAMPLE_DIMENSIONS = 768  # nomic-embed-text's, the contract's default embed model


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
    """Shared by vector search and hybrid retrieve; `query_fields` are checked per request,
    `sample_query` gives a probe sample's query fields for a phrase."""

    comparing = Comparing("ranking", field=HITS_FIELD, score=RANK_FIELD)

    def __init__(
        self,
        name: str,
        query_fields: Mapping[str, tuple[type, str]],
        sample_query: Callable[[str], JSONObject],
    ) -> None:
        self.name = name
        self.query_fields = query_fields
        self.sample_query = sample_query

    def samples(self, count: int, *, client: Dialect, options: None) -> list[JSONObject]:
        """One query a phrase, the top five hits asked for in the client's own `k` field."""
        return [
            {**self.sample_query(sample_phrase(index)), K_FIELD[client]: SAMPLE_K}
            for index in range(count)
        ]

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


def sample_vector(phrase: str) -> list[float]:
    """A unit vector drawn from a generator seeded by the phrase: the same on every run, so
    both backends are asked the same search (any vector will do to compare them)."""
    generator = np.random.default_rng(list(phrase.encode()))
    vector = generator.standard_normal(SAMPLE_DIMENSIONS)
    return [float(value) for value in vector / np.linalg.norm(vector)]


VECTORS_SEARCH = SearchAdapter(
    "vectors_search",
    {"index": (str, "a string"), "vector": (list, "a list of numbers")},
    lambda phrase: {"index": "workers", "vector": sample_vector(phrase)},
)
RETRIEVE = SearchAdapter("retrieve", {"query": (str, "a string")}, lambda phrase: {"query": phrase})
