"""`embed`: `/ai/embed` (Rust) <-> `/v1/embed` (Go).

Request, both dialects: ``{"texts": [str], "model"?: str}``.
Response, Rust: ``{"embeddings": [[float]], "dimensions": int, "model": str}``, unit-L2 rows.
Response, Go:   ``{"vectors": [[float]], "dimension": int, "model": str}``, raw magnitudes.

A flip must not change the embedding space: when the client omits `model`, the request sent
to the other backend names the *client face's* default model.

Number type (`vector_type`, default float32): both gateways write float32 values as their
shortest float32 text, so vectors the shim normalises are carried, normalised and written in
float32. Vectors it does not change (rename only, or rows already unit) come back as the very
same ndarray it was given, so a caller holding the backend's bytes may pass their text on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapters.base import (
    DIALECTS,
    Comparing,
    Dialect,
    JSONObject,
    Translation,
    passthrough_fields,
    require,
    require_object,
    sample_phrase,
)
from adapters.errors import OptionsError, ShapeError
from adapters.vectors import VECTOR_TYPES, VectorType, as_matrix, to_unit_rows

VECTORS_FIELD: Mapping[Dialect, str] = {"rust": "embeddings", "go": "vectors"}
DIMENSION_FIELD: Mapping[Dialect, str] = {"rust": "dimensions", "go": "dimension"}


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """`normalize_go_face`: Go-face answers are unit-L2 too. `default_model`: per dialect.
    `vector_type`: the type normalised vectors are computed and written in."""

    default_model: Mapping[Dialect, str]
    normalize_go_face: bool = False
    vector_type: VectorType = "float32"


class EmbedAdapter:
    """Renames the vector and dimension fields, normalises, and pins the default model."""

    name = "embed"
    comparing = Comparing("cosine", field=VECTORS_FIELD)
    loss_descriptions: Mapping[str, str] = {
        "magnitude": "raw vector magnitudes (Rust answers only unit-L2 vectors)"
    }
    repeat_rule: str | None = None

    def parse_options(self, raw: Mapping[str, Any]) -> EmbedOptions:
        unknown = set(raw) - {"default_model", "normalize_go_face", "vector_type"}
        if unknown:
            raise OptionsError(f"unknown option {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
        normalize = raw.get("normalize_go_face", False)
        if not isinstance(normalize, bool):
            raise OptionsError("normalize_go_face must be true or false", field="normalize_go_face")
        models = raw.get("default_model")
        if not isinstance(models, Mapping) or set(models) != set(DIALECTS):
            raise OptionsError(
                "default_model must name a model for both rust and go", field="default_model"
            )
        for dialect, model in models.items():
            if not isinstance(model, str) or not model:
                raise OptionsError(
                    "default model must be a non-empty string", field=f"default_model.{dialect}"
                )
        vector_type = raw.get("vector_type", "float32")
        if vector_type not in VECTOR_TYPES:
            raise OptionsError(
                f"vector_type must be one of {', '.join(VECTOR_TYPES)}", field="vector_type"
            )
        return EmbedOptions(
            default_model=dict(models), normalize_go_face=normalize, vector_type=vector_type
        )

    def needs_rewrite(self, *, client: Dialect, backend: Dialect, options: EmbedOptions) -> bool:
        return client != backend or (client == "go" and options.normalize_go_face)

    def translate_request(
        self, body: Any, *, client: Dialect, backend: Dialect, options: EmbedOptions
    ) -> JSONObject:
        """Validate the request; name the client face's default model when it sent none.

        >>> opts = EmbedOptions(default_model={"rust": "v1", "go": "v2"})
        >>> EmbedAdapter().translate_request({"texts": ["a"]}, client="rust", backend="go",
        ...                                   options=opts)
        {'texts': ['a'], 'model': 'v1'}
        """
        request = require_object(body, what="embed request")
        texts = require(request, "texts", list, "a list of strings")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ShapeError("texts must be a list of strings", field=f"texts[{index}]")
        if "model" in request and not isinstance(request["model"], str):
            raise ShapeError("model must be a string", field="model")
        translated = dict(request)
        if "model" not in translated and client != backend:
            translated["model"] = options.default_model[client]
        return translated

    def translate_response(
        self, body: Any, *, client: Dialect, backend: Dialect, options: EmbedOptions
    ) -> Translation:
        """Rename fields into the client's dialect; unit-L2 rows for a Rust face (or if set).

        Unknown fields are carried over. The vector matrix is returned as an ndarray, ready
        for a numpy-aware serialiser; when its numbers do not change it is the very ndarray
        the body held (given one), so the caller can tell.
        """
        response = require_object(body, what="embed response")
        vectors_field, dimension_field = VECTORS_FIELD[backend], DIMENSION_FIELD[backend]
        matrix = as_matrix(
            require(response, vectors_field, (list, np.ndarray), "a list"), field=vectors_field
        )
        dimension = require(response, dimension_field, int, "an integer")
        require(response, "model", str, "a string")
        if matrix.shape[0] and matrix.shape[1] != dimension:
            raise ShapeError(
                f"{dimension_field} is {dimension} but the vectors have {matrix.shape[1]} values",
                field=dimension_field,
            )
        if client == "rust" or options.normalize_go_face:
            unit = to_unit_rows(matrix, options.vector_type)
            matrix = matrix if unit is None else unit
        translated: JSONObject = {
            VECTORS_FIELD[client]: matrix,
            DIMENSION_FIELD[client]: dimension,
            **passthrough_fields(response, frozenset({vectors_field, dimension_field})),
        }
        return Translation(translated, self.losses(client=client, backend=backend, options=options))

    def losses(self, *, client: Dialect, backend: Dialect, options: EmbedOptions) -> str | None:
        if backend == "rust" and client == "go" and not options.normalize_go_face:
            return "magnitude"  # Rust only answers unit vectors: raw Go magnitudes are gone
        return None

    def compared_in(self, client: Dialect) -> Dialect:
        return "rust"  # unit rows on both sides: the cosine is read from `embeddings`

    def may_repeat(self, request: Any, *, client: Dialect, options: EmbedOptions) -> bool:
        return True

    def samples(self, count: int, *, client: Dialect, options: EmbedOptions) -> list[JSONObject]:
        """Two texts a request, one phrase apart (`{"texts": [p, p + " certified"]}`)."""
        phrases = (sample_phrase(index) for index in range(count))
        return [{"texts": [phrase, f"{phrase} certified"]} for phrase in phrases]


EMBED = EmbedAdapter()
