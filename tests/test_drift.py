"""The drift catalogue proposes jq mappings: each proposal, run by jq on the source answer,
gives the target answer back (checked here with jq itself and the shim's comparator)."""

from __future__ import annotations

from typing import Any

import jq
import numpy as np
import pytest

from shim.parity.compare import compare, leaf_columns
from shim.parity.drift import propose


def record(target: dict[str, Any], source: dict[str, Any], *, dialect: str = "rust") -> Any:
    """A parity record as the shadow writes it, comparing in `dialect`."""
    rust, go = (target, source) if dialect == "rust" else (source, target)
    comparison = compare("json", rust, go)
    return {**comparison.to_dict(), "compared_in": dialect}


CASES = {
    "renamed list of objects": (
        {"results": [{"index": 2, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.4}]},
        {"ranking": [{"doc": 2, "score": 0.9}, {"doc": 0, "score": 0.4}], "took_ms": 3},
        "del(.ranking) + {results: [.ranking[] | {index: .doc, relevance_score: .score}]}",
    ),
    "score is one minus distance": (
        {"results": [{"id": "a", "score": 0.75}, {"id": "b", "score": 0.5}]},
        {"hits": [{"id": "a", "distance": 0.25}, {"id": "b", "distance": 0.5}]},
        "del(.hits) + {results: [.hits[] | {id: .id, score: (1 - .distance)}]}",
    ),
    "same elements in another order": (
        {
            "results": [
                {"index": 2, "relevance_score": 0.9},
                {"index": 0, "relevance_score": 0.4},
                {"index": 1, "relevance_score": 0.1},
            ]
        },
        {"ranking": [{"doc": 0, "score": 0.4}, {"doc": 1, "score": 0.1}, {"doc": 2, "score": 0.9}]},
        "del(.ranking) + {results: [.ranking[] | {index: .doc, relevance_score: .score}]"
        " | sort_by(.relevance_score) | reverse}",
    ),
    "renamed scalars, nested": (
        {"reply": "hi", "usage": {"prompt_tokens": 3, "completion_tokens": 1}, "provider": "x"},
        {"content": "hi", "tokens": {"input": 3, "output": 1}, "provider": "x"},
        "del(.content, .tokens) * {reply: .content, usage: "
        "{completion_tokens: .tokens.output, prompt_tokens: .tokens.input}}",
    ),
    "a list of scalars, sorted": (
        {"tags": ["a", "b", "c"], "n": 1},
        {"labels": ["c", "a", "b"], "n": 1},
        "del(.labels) + {tags: [.labels[] | .] | sort}",
    ),
    "a field renamed inside a list both sides have": (
        {"items": [{"id": 1, "relevance": 0.5}, {"id": 2, "relevance": 0.25}]},
        {"items": [{"id": 1, "score": 0.5}, {"id": 2, "score": 0.25}]},
        ".items |= map(del(.score) + {relevance: .score})",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_proposal_reproduces_the_target_when_run_by_jq(case: str) -> None:
    target, source, expected = CASES[case]
    [proposal] = propose([record(target, source)])
    assert proposal.program == "go_answer_to_rust"
    assert proposal.expression == expected
    assert (proposal.support, proposal.samples) == (1, 1)
    got = jq.compile(proposal.expression).input_value(source).first()
    left = compare("json", target, got, ignore=["$.took_ms"])  # carried over, unexplained
    assert left.differences == [], proposal.expression
    assert proposal.unmapped == (["$.took_ms"] if "took_ms" in source else [])


def test_a_go_face_comparison_proposes_the_rust_answer_to_go_program() -> None:
    target = {"ranking": [{"doc": 1, "score": 0.5}]}
    source = {"results": [{"index": 1, "relevance_score": 0.5}]}
    [proposal] = propose([record(target, source, dialect="go")])
    assert proposal.program == "rust_answer_to_go"
    assert proposal.expression == (
        "del(.results) + {ranking: [.results[] | {doc: .index, score: .relevance_score}]}"
    )


def test_nothing_is_proposed_where_no_values_match() -> None:
    target = {"results": [{"index": 1}, {"index": 2}]}
    source = {"ranking": [{"doc": 7}, {"doc": 9}]}
    assert propose([record(target, source)]) == []


def test_support_counts_the_samples_that_agree() -> None:
    agreeing = [record({"total": n, "rows": [n]}, {"count": n, "rows": [n]}) for n in range(1, 10)]
    coincidence = record({"total": 5, "rows": [0]}, {"count": 6, "size": 5, "rows": [0]})
    [proposal] = propose([*agreeing, coincidence])
    assert proposal.expression == "del(.count) + {total: .count}"
    assert (proposal.support, proposal.samples) == (9, 10)
    assert proposal.mapped == ["`$.total` = `$.count`"]


def test_one_sided_values_become_columns_and_matrices_stay_out_of_the_record() -> None:
    document = {
        "hits": [{"id": "a", "meta": {"x": 1}}, {"id": "b", "meta": {"x": 2}}],
        "matrix": np.zeros((2, 3)),
        "nested": [[1, 2]],
        "tags": ["p", "q"],
        "n": 3,
    }
    assert leaf_columns(document, "$") == {
        "$.hits[].id": ["a", "b"],
        "$.tags[]": ["p", "q"],
        "$.n": [3],
    }
