"""`adapter = "jq"`: the route table's programs, examples and errors, without a server."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.declared import JqAdapter
from adapters.errors import AdapterError, ShapeError
from shim.errors import ConfigError
from shim.route_config import load_routes, parse_routes

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "routes.toml"


def shipped() -> dict[str, Any]:
    return tomllib.loads(SHIPPED.read_text())


def rerank() -> JqAdapter:
    adapter = load_routes(SHIPPED)["rerank"].adapter
    assert isinstance(adapter, JqAdapter)
    return adapter


def with_rerank(change: Any) -> dict[str, Any]:
    document = copy.deepcopy(shipped())
    change(document["routes"]["rerank"])
    return document


def test_requests_and_answers_translate_both_ways_and_inputs_are_not_mutated() -> None:
    adapter = rerank()
    request = {"query": "q", "documents": ["a", "b"], "top_n": 1}
    before = copy.deepcopy(request)
    go = adapter.translate_request(request, client="rust", backend="go", options=None)
    assert go == {"query": "q", "docs": ["a", "b"], "k": 1} and request == before
    back = adapter.translate_request(go, client="go", backend="rust", options=None)
    assert back == request
    answer = {"ranking": [{"doc": 1, "score": 0.5}], "took_ms": 1.5}
    rust = adapter.translate_response(answer, client="rust", backend="go", options=None)
    assert rust.body == {"results": [{"index": 1, "relevance_score": 0.5}], "took_ms": 1.5}
    assert rust.lossy is None
    go_face = adapter.translate_response(
        {"results": [{"index": 1, "relevance_score": 0.5}]},
        client="go",
        backend="rust",
        options=None,
    )
    assert go_face.body == {"ranking": [{"doc": 1, "score": 0.5}]}
    assert go_face.lossy == "took_ms"


def test_same_dialect_streams_and_a_pair_without_programs_streams_too() -> None:
    adapter = rerank()
    assert not adapter.needs_rewrite(client="rust", backend="rust", options=None)
    assert not adapter.needs_rewrite(client="go", backend="go", options=None)
    assert adapter.needs_rewrite(client="rust", backend="go", options=None)
    bare = JqAdapter.declare("same", {}, examples=[])
    assert not bare.needs_rewrite(client="rust", backend="go", options=None)
    lossy_only = JqAdapter.declare("same", {"lossy": {"go_answer_to_rust": "x"}}, examples=[])
    assert lossy_only.needs_rewrite(client="rust", backend="go", options=None)


def test_a_request_that_is_not_an_object_is_a_shape_error() -> None:
    with pytest.raises(ShapeError) as caught:
        rerank().translate_request([1, 2], client="rust", backend="go", options=None)
    assert caught.value.field == "$"


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ({"ranking": None}, "Cannot iterate over null"),
        ({"ranking": [1]}, "Cannot index number"),
        (None, "Cannot iterate over null"),
    ],
)
def test_a_program_failing_on_an_odd_answer_names_route_and_program(answer: Any, says: str) -> None:
    with pytest.raises(AdapterError) as caught:
        rerank().translate_response(answer, client="rust", backend="go", options=None)
    assert "routes.rerank.jq.go_answer_to_rust" in caught.value.message
    assert says in caught.value.message


def test_a_program_must_give_exactly_one_object() -> None:
    for program, found in [(".[]", "2 values"), ("empty", "0 values"), (".a", "a list")]:
        adapter = JqAdapter.declare("x", {"go_answer_to_rust": program}, examples=[])
        with pytest.raises(AdapterError) as caught:
            adapter.translate_response(
                {"a": [1], "b": 2}, client="rust", backend="go", options=None
            )
        assert found in caught.value.message, program


def test_null_input_does_not_fail_an_object_constructor() -> None:
    """Field notes: `{query, ...}` does not fail on null; the request check comes first."""
    adapter = JqAdapter.declare("x", {"rust_request_to_go": "{query}"}, examples=[])
    with pytest.raises(ShapeError):
        adapter.translate_request(None, client="rust", backend="go", options=None)


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (
            lambda r: r["jq"].update(go_answer_to_rust="{results: "),
            "routes.rerank.jq.go_answer_to_rust",
            "does not compile: jq: error: syntax error",
        ),
        (lambda r: r["jq"].update(colour="red"), "routes.rerank.jq.colour", "unknown key"),
        (
            lambda r: r["jq"].update(rust_answer_to_go=""),
            "routes.rerank.jq.rust_answer_to_go",
            "non-empty",
        ),
        (
            lambda r: r["jq"]["lossy"].update(go_answer_to_go="x"),
            "routes.rerank.jq.lossy.go_answer_to_go",
            "must name a program",
        ),
        (
            lambda r: r["jq"]["lossy"].update(rust_answer_to_go="tööк"),
            "routes.rerank.jq.lossy.rust_answer_to_go",
            "printable ASCII",
        ),
        (lambda r: r.update(options={"x": 1}), "routes.rerank.options.x", "takes no options"),
        (
            lambda r: r["parity"].update(comparator="ranking"),
            "routes.rerank.parity.comparator",
            '"json" or "bytes"',
        ),
        (lambda r: r["examples"][0].pop("kind"), "routes.rerank.examples", "example 1 of"),
        (
            lambda r: r["examples"][1].update(kind="reply"),
            "routes.rerank.examples",
            "example 2 of",
        ),
    ],
)
def test_a_bad_declaration_names_the_key(change: Any, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_routes(with_rerank(change))
    assert caught.value.key == key
    assert says in caught.value.message


def test_jq_keys_on_a_built_in_endpoint_are_refused() -> None:
    document = copy.deepcopy(shipped())
    document["routes"]["sql"]["jq"] = {"go_answer_to_rust": "."}
    with pytest.raises(ConfigError) as caught:
        parse_routes(document)
    assert caught.value.key == "routes.sql.jq"


def test_a_failing_example_names_route_program_and_example_with_a_diff() -> None:
    def drift(route: dict[str, Any]) -> None:
        route["examples"][1]["rust"]["results"][0]["relevance_score"] = 0.83

    with pytest.raises(ConfigError) as caught:
        parse_routes(with_rerank(drift))
    message = caught.value.message
    assert caught.value.key == "routes.rerank.jq.go_answer_to_rust"
    assert 'example 2 of [[routes.rerank.examples]] (kind = "answer")' in message
    assert '-      "relevance_score": 0.83' in message
    assert '+      "relevance_score": 0.82' in message


def test_a_missing_program_is_checked_as_the_same_shape() -> None:
    def forget(route: dict[str, Any]) -> None:
        del route["jq"]["go_request_to_rust"]

    with pytest.raises(ConfigError) as caught:
        parse_routes(with_rerank(forget))
    assert caught.value.key == "routes.rerank.jq.go_request_to_rust"
    assert "no program (same shape)" in caught.value.message


def test_a_lossy_direction_is_checked_one_way_only() -> None:
    """The answer example's Go side has no took_ms, Rust never has it: with the Rust->Go
    direction declared lossy, an example whose Go side shows took_ms still passes."""

    def real_go_answer(route: dict[str, Any]) -> None:
        route["examples"][1]["go"]["took_ms"] = 0.4
        route["jq"]["go_answer_to_rust"] = "del(.took_ms) | " + route["jq"]["go_answer_to_rust"]

    assert "rerank" in parse_routes(with_rerank(real_go_answer)).routes

    def not_lossy(route: dict[str, Any]) -> None:
        real_go_answer(route)
        del route["jq"]["lossy"]

    with pytest.raises(ConfigError) as caught:
        parse_routes(with_rerank(not_lossy))
    assert caught.value.key == "routes.rerank.jq.rust_answer_to_go"


def test_shim_check_prints_the_failing_example_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "routes.toml"
    bad.write_text(SHIPPED.read_text().replace("k: .top_n}", "k: .top_n, extra: 1}"))
    config = tmp_path / "shim.toml"
    config.write_text(f'routes_file = "{bad}"\nstate_dir = "{tmp_path / "state"}"\n')
    check = [sys.executable, "-m", "shim", "check", "--config", str(config)]
    result = subprocess.run(check, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "shim: config error: routes.rerank.jq.rust_request_to_go: example 1 of"
    )
    assert '+  "extra": 1,' in result.stderr
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    explained = subprocess.run([*check, "--explain"], capture_output=True, text=True, cwd=ROOT)
    assert explained.returncode == 0, explained.stderr
    text = explained.stdout
    assert "rerank  (default rust; adapter jq; idempotent: POST)" in text
    assert (
        "go   client <- rust backend: translated by jq (go_request_to_rust, rust_answer_to_go)"
        in text
    )
    assert "loses took_ms (X-Shim-Lossy: took_ms)" in text
    assert (
        "  jq rust_request_to_go  del(.documents, .top_n) + {docs: .documents, k: .top_n}" in text
    )
    assert "[loses took_ms]" in text and "examples: 2 checked" in text


def test_jq_doubles_come_back_serialisable() -> None:
    """jq prints 1e300 as a 301-digit integer; it comes back a float orjson can write."""
    answer = {"ranking": [{"doc": 2**40, "score": 1e300}]}
    body = rerank().translate_response(answer, client="rust", backend="go", options=None).body
    assert body == {"results": [{"index": 2**40, "relevance_score": 1e300}]}
    assert isinstance(body["results"][0]["relevance_score"], float)
    assert orjson.loads(orjson.dumps(body)) == body


scores = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
rust_answers = st.fixed_dictionaries(
    {
        "results": st.lists(
            st.fixed_dictionaries({"index": st.integers(0, 2**53), "relevance_score": scores}),
            max_size=20,
        )
    }
)
rust_requests = st.fixed_dictionaries(
    {
        "query": st.text(max_size=30),
        "documents": st.lists(st.text(max_size=30), max_size=10),
        "top_n": st.integers(1, 1000),
    }
)


@settings(max_examples=100, deadline=None)
@given(rust_requests, rust_answers)
def test_rust_to_go_to_rust_gives_back_what_went_in(request: Any, answer: Any) -> None:
    adapter = rerank()
    go = adapter.translate_request(request, client="rust", backend="go", options=None)
    assert adapter.translate_request(go, client="go", backend="rust", options=None) == request
    go_answer = adapter.translate_response(answer, client="go", backend="rust", options=None)
    back = adapter.translate_response(go_answer.body, client="rust", backend="go", options=None)
    assert back.body == answer
