"""Embed answers at the byte level (`shim.serving.vector_wire`): the fast path gives what the slow
one gives, splices only where the numbers do not change, and every bad answer still fails the same
way. Plus one end-to-end check through `shim serve`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adapters.embed import EMBED, EmbedOptions
from adapters.errors import AdapterError, NonFiniteError, ShapeError
from shim.parity.compare import compare
from shim.serving.vector_wire import embed_answer, load_vectors, parse_answer
from tests.servers import Shim

MODELS = {"rust": "nomic-embed-text", "go": "nomic-embed-text-v2-moe"}
OPTIONS = EmbedOptions(default_model=MODELS)
FLOAT64 = EmbedOptions(default_model=MODELS, vector_type="float64")
NORMALISING = EmbedOptions(default_model=MODELS, normalize_go_face=True)
NUMPY = orjson.OPT_SERIALIZE_NUMPY
DIRECTIONS = [("rust", "go"), ("go", "rust"), ("go", "go"), ("rust", "rust")]


def fast(raw: bytes, client: str, backend: str, options: EmbedOptions = OPTIONS) -> bytes:
    body, _ = embed_answer(
        EMBED, raw, client=client, backend=backend, options=options, slow=orjson.loads
    )
    return body


def slow(raw: bytes, client: str, backend: str, options: EmbedOptions = OPTIONS) -> bytes:
    """The old way: orjson, the adapter, orjson."""
    result = EMBED.translate_response(
        orjson.loads(raw), client=client, backend=backend, options=options
    )
    return orjson.dumps(result.body, option=NUMPY)


def answer(backend: str, matrix: Any, **extra: Any) -> bytes:
    """An answer written the way the gateways write it (float32 shortest text when given one)."""
    vectors, dimension = (
        ("embeddings", "dimensions") if backend == "rust" else ("vectors", "dimension")
    )
    shape = np.shape(matrix)
    body = {vectors: matrix, dimension: shape[1] if len(shape) == 2 else 0, "model": "m", **extra}
    return orjson.dumps(body, option=NUMPY)


def vectors_text(raw: bytes) -> bytes:
    """The text between the first `":` and the `]]` that closes the matrix (test helper only)."""
    start = raw.index(b'":') + 2
    return raw[start : raw.index(b"]]", start) + 2]


finite32 = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
matrices32 = st.integers(1, 6).flatmap(
    lambda n: st.integers(1, 24).flatmap(lambda d: arrays(np.float32, (n, d), elements=finite32))
)


@settings(max_examples=200, deadline=None)
@given(matrices32, st.sampled_from(DIRECTIONS), st.sampled_from([OPTIONS, FLOAT64, NORMALISING]))
def test_fast_path_answers_what_the_slow_path_answers(
    matrix: np.ndarray, direction: tuple[str, str], options: EmbedOptions
) -> None:
    client, backend = direction
    raw = answer(backend, matrix)
    quick, old = fast(raw, client, backend, options), slow(raw, client, backend, options)
    # Same numbers, same keys; bytes too, except where the fast path kept the backend's text.
    assert orjson.loads(quick) == orjson.loads(old)
    if vectors_text(raw) not in quick:
        assert quick == old


@settings(max_examples=200, deadline=None)
@given(matrices32)
def test_rename_only_passes_every_number_on_as_the_backend_wrote_it(matrix: np.ndarray) -> None:
    """A Go-face client served by Rust (normalize_go_face = false): only the keys change."""
    raw = answer("rust", matrix, took_ms=3)
    out = fast(raw, "go", "rust")
    assert out.startswith(b'{"vectors":' + vectors_text(raw) + b",")
    body = orjson.loads(out)
    assert set(body) == {"vectors", "dimension", "model", "took_ms"}
    assert body["dimension"] == matrix.shape[1] and body["took_ms"] == 3


@settings(max_examples=100, deadline=None)
@given(matrices32)
def test_go_answer_already_unit_is_spliced_for_a_rust_face(matrix: np.ndarray) -> None:
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1, keepdims=True)
    unit = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0).astype(np.float32)
    raw = answer("go", unit)
    out = fast(raw, "rust", "go")
    assert out.startswith(b'{"embeddings":' + vectors_text(raw))


@settings(max_examples=200, deadline=None)
@given(matrices32)
def test_normalised_in_float32_within_one_ulp_of_the_rounded_unit_vector(
    matrix: np.ndarray,
) -> None:
    raw = answer("go", matrix)
    got = np.array(orjson.loads(fast(raw, "rust", "go"))["embeddings"], dtype=np.float32)
    exact = matrix.astype(np.float64)
    norms = np.linalg.norm(exact, axis=1, keepdims=True)
    exact = np.divide(exact, norms, out=np.zeros_like(exact), where=norms > 0)
    rounded = exact.astype(np.float32)  # the correctly rounded unit vector
    # 1 ulp in float32's normal range. A subnormal input has fewer bits than its text shows,
    # and its text is all the wire carries: it is known to half a subnormal step, and dividing
    # by the norm scales that uncertainty by 1/norm (hypothesis found 2 steps at 1.9e-41, and
    # 11 for an input of 28 steps in a row of norm 1/64).
    f32 = np.finfo(np.float32)
    subnormal_in = np.abs(matrix) < f32.tiny
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    carried = subnormal_in * (4 * float(f32.smallest_subnormal)) * np.maximum(scale, 1.0)
    bound = np.spacing(np.abs(rounded)) + carried.astype(np.float32)
    assert np.all(np.abs(got - rounded) <= bound)
    nonzero = norms[:, 0] > 0
    assert np.allclose(np.linalg.norm(got[nonzero].astype(np.float64), axis=1), 1.0, atol=1e-6)


def test_float32_answer_text_is_compact_and_recovers_the_gateways_bits() -> None:
    matrix = (np.random.default_rng(7).standard_normal((8, 768)) * 0.7).astype(np.float32)
    raw = answer("go", matrix)
    out = fast(raw, "rust", "go")
    float64_text = slow(raw, "rust", "go", FLOAT64)
    assert len(out) < 0.7 * len(float64_text)
    # Text read back as float32 gives exactly the float32 values the shim computed.
    back = np.array(orjson.loads(out)["embeddings"], dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64)).astype(np.float32)
    assert np.array_equal(back, matrix / norms[:, None])


@pytest.mark.parametrize(
    ("raw", "field", "error"),
    [
        (b'{"vectors":[[1.0,2.0],[1.0]],"dimension":2,"model":"m"}', "vectors", ShapeError),
        (b'{"vectors":[[1.0,2.0,3.0],[4.0]],"dimension":2,"model":"m"}', "vectors", ShapeError),
        (b'{"vectors":[[1.0,null]],"dimension":2,"model":"m"}', "vectors", ShapeError),
        (b'{"vectors":[["a",1.0]],"dimension":2,"model":"m"}', "vectors", ShapeError),
        (b'{"vectors":[[[1.0],2.0]],"dimension":2,"model":"m"}', "vectors", ShapeError),
        (b'{"vectors":[[[1.0]],[[2.0]]],"dimension":1,"model":"m"}', "vectors", ShapeError),
        (b'{"vectors":[1.0,2.0],"dimension":2,"model":"m"}', "vectors", ShapeError),
        (b'{"vectors":[[1.0,2.0]],"dimension":3,"model":"m"}', "dimension", ShapeError),
        (b'{"vectors":[[1.0,2.0]],"model":"m"}', "dimension", ShapeError),
        (b'{"dimension":2,"model":"m"}', "vectors", ShapeError),
        (b'{"vectors":[[1.0,2.0]],"dimension":2}', "model", ShapeError),
        (b"[[1.0,2.0]]", "$", ShapeError),
    ],
)
def test_every_bad_answer_fails_as_it_did_naming_the_field(
    raw: bytes, field: str, error: type[AdapterError]
) -> None:
    for way in (fast, slow):
        with pytest.raises(error) as caught:
            way(raw, "rust", "go")
        assert caught.value.field == field


@pytest.mark.parametrize(
    "raw",
    [
        b'{"vectors":[[NaN,1.0]],"dimension":2,"model":"m"}',
        b'{"vectors":[[1e400,2.0]],"dimension":2,"model":"m"}',  # infinite as a double
        b'{"vectors":[[1.0,2.0]],"dimension":2,"model":"\xff"}',
        b'{"vectors":[[1.0,2.0]],"dimension":2,"model":"m"',
        b'{"vectors":[[1.0,2.0]],"dimension":2,"model":"m"} trailing',
    ],
)
def test_text_that_is_not_json_is_refused_as_before(raw: bytes) -> None:
    for way in (fast, slow):
        with pytest.raises(orjson.JSONDecodeError):
            way(raw, "rust", "go")


def test_non_finite_vectors_given_as_a_matrix_are_refused() -> None:
    document = {"vectors": np.array([[np.inf, 1.0]]), "dimension": 2, "model": "m"}
    with pytest.raises(NonFiniteError):
        EMBED.translate_response(document, client="rust", backend="go", options=OPTIONS)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"vectors":[[3.0,4.0]],"dimension":2,"model":"m"}\n',  # Go's json.Encoder
        b'{"model":"m","vectors":[[3.0,4.0]],"dimension":2}',  # another key order
        b'{\n  "vectors": [\n    [3.0, 4.0]\n  ],\n  "dimension": 2,\n  "model": "m"\n}',
        b'{"vect\\u006frs":[[3.0,4.0]],"dimension":2,"model":"m"}',  # an escaped key
        b'{"vectors":[[3.0,4.0]],"dimension":2,"model":"m","note":"a [\\"vectors\\":[[1]]"}',
        b'{"vectors":[[3.0,4.0]],"dimension":2,"model":"m","note":"\\u005b"}',
        b'{"vectors":[[3.0,4.0]],"dimension":2,"model":"m","x":123456789012345678901234}',
        b'{"vectors":[[3.0,4.0]],"vectors":[[5.0,12.0]],"dimension":2,"model":"m"}',
        b'{"vectors":[[3,4]],"dimension":2,"model":"m","extra":{"a":[1,{"b":null}]}}',
        b'{"vectors":[[0.0,0.0],[-0.0,0]],"dimension":2,"model":"m"}',  # zero vectors
        b'{"vectors":[],"dimension":0,"model":"m"}',  # empty batch
    ],
)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_unusual_but_valid_answers_translate_as_the_slow_path_does(
    raw: bytes, direction: tuple[str, str]
) -> None:
    client, backend = direction
    if backend == "rust":
        raw = raw.replace(b'"vectors"', b'"embeddings"').replace(b'"dimension"', b'"dimensions"')
        raw = raw.replace(b"vect\\u006frs", b"embeddin\\u0067s")
    assert orjson.loads(fast(raw, client, backend)) == orjson.loads(slow(raw, client, backend))


def test_rename_only_splices_around_a_huge_dimension() -> None:
    matrix = np.random.default_rng(3).standard_normal((2, 200_000)).astype(np.float32)
    raw = answer("rust", matrix)
    out = fast(raw, "go", "rust")
    assert vectors_text(raw) in out and orjson.loads(out)["dimension"] == 200_000


def test_nested_rows_are_not_flattened_into_a_valid_matrix() -> None:
    """simdjson's as_buffer reads [[[1],2]] as [[1,2]]: the fast parse must not take it."""
    assert load_vectors(b'{"vectors":[[[1.0],2.0]],"dimension":2}', "vectors") is None
    assert load_vectors(b'{"vectors":[[1.0,2.0]],"dimension":2}', "vectors") is not None


def test_a_failed_parse_leaves_the_parser_usable() -> None:
    good = answer("go", np.ones((2, 3), dtype=np.float32))
    for bad in (b'{"vectors":[[1.0,null]]}', b"{", b'{"vectors":[["x"]]}', b'{"vectors":7}'):
        assert load_vectors(bad, "vectors") is None
        assert load_vectors(good, "vectors") is not None


def test_threads_each_parse_with_their_own_parser() -> None:
    """Shadow comparisons of big bodies run in threads, alongside the loop's own parses."""
    rng = np.random.default_rng(5)
    raws = [answer("go", rng.standard_normal((4, 64)).astype(np.float32)) for _ in range(8)]
    expected = [slow(raw, "rust", "go") for raw in raws]
    failures: list[str] = []

    def work() -> None:
        for _ in range(200):
            for raw, want in zip(raws, expected, strict=True):
                if fast(raw, "rust", "go") != want:
                    failures.append("differs")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_shadow_comparison_parses_embed_answers_into_matrices() -> None:
    go = answer("go", np.array([[3.0, 4.0]], dtype=np.float32))
    document = parse_answer(EMBED, go, "go")
    assert isinstance(document["vectors"], np.ndarray)
    assert parse_answer(EMBED, b'{"vectors":[[1,null]]}', "go") == {"vectors": [[1, None]]}


def test_answers_one_float32_ulp_apart_are_at_parity() -> None:
    """float32 normalisation differs from float64-then-cast by 1 ulp on about a quarter of
    the elements: the cosine comparator and the JSON tolerance (1e-6) both see parity."""
    rng = np.random.default_rng(11)
    rust = rng.standard_normal((8, 768)).astype(np.float32)
    rust /= np.linalg.norm(rust, axis=1, keepdims=True).astype(np.float32)
    go = rust.copy()
    nudged = rng.random(go.shape) < 0.25
    go[nudged] = np.nextafter(go[nudged], np.float32(2))
    result = compare("cosine", {"embeddings": rust}, {"embeddings": go})
    assert result.metrics["min_cosine"] >= 1 - 1e-9 and not result.differences
    as_json = compare(
        "json", {"embeddings": rust.tolist()}, {"embeddings": go.tolist()}, tolerance=1e-6
    )
    assert not as_json.differences


def test_go_face_client_served_by_rust_gets_rusts_own_number_text(
    start_shim: Callable[..., Shim], backends: dict[str, str]
) -> None:
    request = {"texts": ["forklift operator", "night shift lead"], "model": "nomic-embed-text"}
    direct = httpx.post(f"{backends['rust']}/ai/embed", json=request).content
    shim = start_shim()
    response = httpx.post(f"{shim.url}/v1/embed", json=request)
    assert response.status_code == 200, response.text
    assert response.headers["x-shim-lossy"] == "magnitude"
    assert response.content.startswith(b'{"vectors":' + vectors_text(direct) + b",")
    assert set(response.json()) == {"vectors", "dimension", "model"}
