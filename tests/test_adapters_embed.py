"""The embed adapter, without a server: table cases and hypothesis round-trips."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adapters.embed import EMBED, EmbedOptions
from adapters.errors import NonFiniteError, OptionsError, ShapeError

OPTIONS = EmbedOptions(default_model={"rust": "nomic-embed-text", "go": "nomic-embed-text-v2-moe"})
NORMALISING = EmbedOptions(default_model=OPTIONS.default_model, normalize_go_face=True)


def go_answer(vectors: list[list[float]], **extra: object) -> dict[str, object]:
    return {
        "vectors": vectors,
        "dimension": len(vectors[0]) if vectors else 0,
        "model": "m",
        **extra,
    }


def test_go_answer_becomes_rust_shape_with_unit_rows() -> None:
    result = EMBED.translate_response(
        go_answer([[3.0, 4.0], [0.0, 20.0]]), client="rust", backend="go", options=OPTIONS
    )
    assert set(result.body) == {"embeddings", "dimensions", "model"}
    assert np.allclose(result.body["embeddings"], [[0.6, 0.8], [0.0, 1.0]])
    assert result.body["dimensions"] == 2
    assert result.lossy is None


def test_zero_vector_stays_zero() -> None:
    result = EMBED.translate_response(
        go_answer([[0.0, 0.0]]), client="rust", backend="go", options=OPTIONS
    )
    assert result.body["embeddings"].tolist() == [[0.0, 0.0]]


def test_go_face_keeps_raw_magnitudes_unless_configured() -> None:
    raw = {"embeddings": [[0.6, 0.8]], "dimensions": 2, "model": "m"}
    plain = EMBED.translate_response(raw, client="go", backend="rust", options=OPTIONS)
    assert set(plain.body) == {"vectors", "dimension", "model"}
    assert plain.lossy == "magnitude"
    go_raw = go_answer([[30.0, 40.0]])
    same = EMBED.translate_response(go_raw, client="go", backend="go", options=NORMALISING)
    assert np.allclose(same.body["vectors"], [[0.6, 0.8]])


def test_needs_rewrite_only_across_dialects_or_when_normalising_go_face() -> None:
    assert not EMBED.needs_rewrite(client="rust", backend="rust", options=OPTIONS)
    assert not EMBED.needs_rewrite(client="go", backend="go", options=OPTIONS)
    assert EMBED.needs_rewrite(client="go", backend="rust", options=OPTIONS)
    assert EMBED.needs_rewrite(client="go", backend="go", options=NORMALISING)


def test_unknown_fields_pass_through() -> None:
    answer = go_answer([[1.0, 0.0]], took_ms=3, extra={"a": 1})
    result = EMBED.translate_response(answer, client="rust", backend="go", options=OPTIONS)
    assert result.body["took_ms"] == 3 and result.body["extra"] == {"a": 1}


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        ({"dimension": 2, "model": "m"}, "vectors"),
        ({"vectors": [[1.0, 2.0]], "model": "m"}, "dimension"),
        ({"vectors": [[1.0, 2.0]], "dimension": 2}, "model"),
        ({"vectors": [[1.0, 2.0], [1.0]], "dimension": 2, "model": "m"}, "vectors"),
        ({"vectors": [["a", "b"]], "dimension": 2, "model": "m"}, "vectors"),
        ({"vectors": [[1.0, 2.0]], "dimension": 3, "model": "m"}, "dimension"),
        ({"vectors": [[1.0, 2.0]], "dimension": "2", "model": "m"}, "dimension"),
        ([1, 2], "$"),
    ],
)
def test_bad_backend_answer_names_the_field(answer: object, field: str) -> None:
    with pytest.raises(ShapeError) as caught:
        EMBED.translate_response(answer, client="rust", backend="go", options=OPTIONS)
    assert caught.value.field == field


def test_non_finite_values_are_refused() -> None:
    answer = go_answer([[float("nan"), 1.0]])
    with pytest.raises(NonFiniteError):
        EMBED.translate_response(answer, client="rust", backend="go", options=OPTIONS)


def test_request_without_model_names_the_client_face_default() -> None:
    body = {"texts": ["a"]}
    assert EMBED.translate_request(body, client="rust", backend="go", options=OPTIONS) == {
        "texts": ["a"],
        "model": "nomic-embed-text",
    }
    assert EMBED.translate_request(body, client="go", backend="rust", options=OPTIONS) == {
        "texts": ["a"],
        "model": "nomic-embed-text-v2-moe",
    }
    explicit = {"texts": ["a"], "model": "x"}
    assert (
        EMBED.translate_request(explicit, client="rust", backend="go", options=OPTIONS) == explicit
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"texts": "a"}, "texts"),
        ({"texts": [1]}, "texts[0]"),
        ({}, "texts"),
        ({"texts": ["a"], "model": 3}, "model"),
        ("texts", "$"),
    ],
)
def test_bad_client_request_names_the_field(body: object, field: str) -> None:
    with pytest.raises(ShapeError) as caught:
        EMBED.translate_request(body, client="rust", backend="go", options=OPTIONS)
    assert caught.value.field == field


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
matrices = st.integers(1, 6).flatmap(
    lambda n: st.integers(1, 16).flatmap(lambda d: arrays(np.float64, (n, d), elements=finite))
)


@settings(max_examples=200, deadline=None)
@given(matrices)
def test_rust_to_go_to_rust_gives_back_the_input(matrix: np.ndarray) -> None:
    rust = {"embeddings": unit_rows(matrix).tolist(), "dimensions": matrix.shape[1], "model": "m"}
    original = copy.deepcopy(rust)
    as_go = EMBED.translate_response(rust, client="go", backend="rust", options=OPTIONS).body
    back = EMBED.translate_response(as_go, client="rust", backend="go", options=OPTIONS).body
    assert rust == original  # the input was not mutated
    assert back["dimensions"] == rust["dimensions"] and back["model"] == "m"
    assert np.allclose(back["embeddings"], rust["embeddings"], atol=1e-9)


# What each number type promises for a unit vector's elements (|x| <= 1): float64 as
# before; float32 one float32 ulp of 1 (2**-23), the rounding it is written in.
VECTOR_TYPE_TOLERANCE = {"float64": 1e-9, "float32": 2.0**-23}


@pytest.mark.parametrize("vector_type", ["float32", "float64"])
@settings(max_examples=200, deadline=None)
@given(matrix=matrices)
def test_go_to_rust_to_go_keeps_directions(matrix: np.ndarray, vector_type: str) -> None:
    options = EmbedOptions(default_model=OPTIONS.default_model, vector_type=vector_type)  # type: ignore[arg-type]  # a Literal, from the parametrize list
    go = {"vectors": matrix.tolist(), "dimension": matrix.shape[1], "model": "m"}
    original = copy.deepcopy(go)
    as_rust = EMBED.translate_response(go, client="rust", backend="go", options=options).body
    back = EMBED.translate_response(as_rust, client="go", backend="rust", options=options)
    assert go == original
    assert back.lossy == "magnitude"  # declared: raw magnitudes do not survive Rust
    tolerance = VECTOR_TYPE_TOLERANCE[vector_type]
    assert np.allclose(back.body["vectors"], unit_rows(matrix), rtol=0, atol=tolerance)


@pytest.mark.parametrize("vector_type", ["float32", "float64"])
@settings(max_examples=100, deadline=None)
@given(matrix=matrices)
def test_unit_rows_pass_through_unchanged_in_either_type(
    matrix: np.ndarray, vector_type: str
) -> None:
    """Rows already unit are not normalised again: the same ndarray comes back (and the proxy
    may then pass the backend's own number text on)."""
    options = EmbedOptions(default_model=OPTIONS.default_model, vector_type=vector_type)  # type: ignore[arg-type]  # a Literal, from the parametrize list
    unit = unit_rows(matrix).astype(vector_type).astype(np.float64)
    body = {"vectors": unit, "dimension": matrix.shape[1], "model": "m"}
    out = EMBED.translate_response(body, client="rust", backend="go", options=options).body
    assert out["embeddings"] is unit


def test_vector_type_is_a_route_option_defaulting_to_float32() -> None:
    raw = {"default_model": dict(OPTIONS.default_model)}
    assert EMBED.parse_options(raw).vector_type == "float32"
    assert EMBED.parse_options({**raw, "vector_type": "float64"}).vector_type == "float64"
    with pytest.raises(OptionsError) as caught:
        EMBED.parse_options({**raw, "vector_type": "float16"})
    assert caught.value.field == "vector_type"


def test_float32_normalisation_keeps_extreme_rows_exact() -> None:
    """Rows float32 cannot carry (beyond 3.4e38, or underflowing) are normalised in float64
    and then rounded once, never turned into inf, NaN or zero."""
    go = go_answer([[3e300, 4e300], [3e-300, 4e-300], [0.0, 0.0]])
    out = EMBED.translate_response(go, client="rust", backend="go", options=OPTIONS).body
    assert out["embeddings"].dtype == np.float32
    assert (
        out["embeddings"].tolist()
        == np.array([[0.6, 0.8], [0.6, 0.8], [0.0, 0.0]], dtype=np.float32).tolist()
    )


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Reference normalisation, one row at a time in exact-ish float arithmetic."""
    rows = []
    for row in matrix:
        biggest = max((abs(float(v)) for v in row), default=0.0)
        if biggest == 0:
            rows.append([0.0] * len(row))
            continue
        scaled = [float(v) / biggest for v in row]
        norm = sum(v * v for v in scaled) ** 0.5
        rows.append([v / norm for v in scaled])
    return np.array(rows)


@pytest.mark.parametrize("magnitude", [1e-300, 1e-160, 1.0, 1e160, 1e300])
def test_unit_rows_at_extreme_magnitudes(magnitude: float) -> None:
    go = {"vectors": [[3.0 * magnitude, 4.0 * magnitude]], "dimension": 2, "model": "m"}
    result = EMBED.translate_response(go, client="rust", backend="go", options=OPTIONS)
    assert np.allclose(result.body["embeddings"], [[0.6, 0.8]], atol=1e-12)
