"""Search, retrieve, sql and chat adapters: round-trips and declared losses, no server."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.base import DIALECTS
from adapters.chat import CHAT
from adapters.errors import ShapeError
from adapters.search import RETRIEVE, VECTORS_SEARCH
from adapters.sql import SQL
from shim.route_config import load_routes

ids = st.text(min_size=1, max_size=8)
scores = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)
rust_hits = st.lists(
    st.fixed_dictionaries({"id": ids, "score": scores}, optional={"text": st.text()}), max_size=10
)


def round_trip(adapter: Any, body: dict[str, Any], first: str, second: str) -> Any:
    original = copy.deepcopy(body)
    there = adapter.translate_response(body, client=second, backend=first, options=None).body
    back = adapter.translate_response(there, client=first, backend=second, options=None)
    assert body == original
    return back.body


@settings(max_examples=150, deadline=None)
@given(rust_hits)
def test_search_hits_round_trip_rust_go_rust(hits: list[dict[str, Any]]) -> None:
    back = round_trip(VECTORS_SEARCH, {"results": hits}, "rust", "go")
    assert [h["id"] for h in back["results"]] == [h["id"] for h in hits]
    for got, want in zip(back["results"], hits, strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-12)
        assert got.get("text") == want.get("text")


def test_score_is_one_minus_distance_and_order_is_kept() -> None:
    go = {
        "hits": [{"id": "a", "distance": 0.1, "text": "t"}, {"id": "b", "distance": 0.4}],
        "took": 2,
    }
    rust = RETRIEVE.translate_response(go, client="rust", backend="go", options=None).body
    assert rust == {
        "results": [
            {"id": "a", "score": pytest.approx(0.9), "text": "t"},
            {"id": "b", "score": pytest.approx(0.6)},
        ],
        "took": 2,
    }


def test_search_request_renames_k() -> None:
    body = {"index": "workers", "vector": [0.1, 0.2], "k": 3}
    assert VECTORS_SEARCH.translate_request(body, client="rust", backend="go", options=None) == {
        "index": "workers",
        "vector": [0.1, 0.2],
        "top_k": 3,
    }
    with pytest.raises(ShapeError):
        VECTORS_SEARCH.translate_request(
            {"index": "w", "vector": ["x"], "k": 3}, client="rust", backend="go", options=None
        )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1), max_size=5), st.integers(0, 5))
def test_sql_round_trip_go_rust_go_loses_only_types(names: list[str], n: int) -> None:
    rows = [[i] * len(names) for i in range(n)]
    go = {"columns": [{"name": c, "type": "INTEGER"} for c in names], "rows": rows}
    back = round_trip(SQL, go, "go", "rust")
    assert [c["name"] for c in back["columns"]] == names and back["rows"] == rows
    assert all(c["type"] == "unknown" for c in back["columns"])  # declared loss


def test_sql_rust_face_gets_row_count_and_go_face_is_told_types_are_lost() -> None:
    go = {"columns": [{"name": "id", "type": "INTEGER"}], "rows": [[1], [2]]}
    rust = SQL.translate_response(go, client="rust", backend="go", options=None)
    assert rust.body == {"columns": ["id"], "rows": [[1], [2]], "row_count": 2}
    back = SQL.translate_response(rust.body, client="go", backend="rust", options=None)
    assert back.lossy == "column-types"
    assert SQL.translate_request(
        {"sql": "select 1"}, client="rust", backend="go", options=None
    ) == {"query": "select 1"}


@settings(max_examples=100, deadline=None)
@given(st.text(), st.integers(0, 10**6), st.integers(0, 10**6))
def test_chat_round_trip_rust_go_rust(reply: str, prompt: int, completion: int) -> None:
    rust = {
        "reply": reply,
        "provider": "p",
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }
    assert round_trip(CHAT, rust, "rust", "go") == rust


def test_missing_required_field_names_it() -> None:
    with pytest.raises(ShapeError) as caught:
        CHAT.translate_response(
            {"provider": "p", "tokens": {"input": 1, "output": 2}},
            client="rust",
            backend="go",
            options=None,
        )
    assert caught.value.field == "content"


SHIPPED = load_routes(Path(__file__).resolve().parent.parent / "config" / "routes.toml")
TRANSLATING = [route for route in SHIPPED.routes.values() if route.adapter is not None]


@pytest.mark.parametrize("route", TRANSLATING, ids=lambda route: route.name)
def test_every_loss_an_adapter_declares_has_a_description(route: Any) -> None:
    for client in DIALECTS:
        for backend in DIALECTS:
            loss = route.losses(client, backend)
            assert loss is None or loss in route.adapter.loss_descriptions, (client, backend)


@pytest.mark.parametrize("route", TRANSLATING, ids=lambda route: route.name)
def test_probe_samples_are_requests_the_adapter_translates_and_may_repeat(route: Any) -> None:
    if not route.shadowable:
        assert route.samples("rust", 3) == []  # chat: never sent twice, so never probed
        return
    for client in DIALECTS:
        samples = route.samples(client, 10)
        assert len(samples) == 10, client
        for sample in samples:
            assert route.may_repeat(sample, client)
            route.adapter.translate_request(
                sample,
                client=client,
                backend="go" if client == "rust" else "rust",
                options=route.options,
            )


@pytest.mark.parametrize(
    ("statement", "repeatable"),
    [
        ("select id from workers", True),
        ("with t as (select 1) select * from t", True),
        ("select 1; delete from workers", False),
        ("update workers set years = 1", False),
        ("/* select */ insert into workers values (1)", False),
    ],
)
def test_sql_may_repeat_only_read_only_statements_in_either_dialect(
    statement: str, repeatable: bool
) -> None:
    assert SQL.repeat_rule == "read-only statements"
    assert SQL.may_repeat({"sql": statement}, client="rust", options=None) is repeatable
    assert SQL.may_repeat({"query": statement}, client="go", options=None) is repeatable
    assert not SQL.may_repeat({"sql": statement}, client="go", options=None)  # wrong field
    assert not SQL.may_repeat([statement], client="rust", options=None)


def test_search_compares_hits_in_each_dialects_own_fields() -> None:
    assert VECTORS_SEARCH.comparing.fields("rust") == ("results", "score")
    assert RETRIEVE.comparing.fields("go") == ("hits", "distance")
