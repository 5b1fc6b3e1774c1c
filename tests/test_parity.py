"""Comparators and verdicts, without a server."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim.parity.compare import blocking, compare, percentiles
from shim.parity.verdicts import judge, markdown
from tests.flipping import ROUTES
from tests.servers import SHIM, base_env


def kinds(comparison: Any) -> dict[str, str]:
    return {d.path: d.kind for d in comparison.differences}


def test_json_diff_names_missing_extra_type_and_value_changes_by_path() -> None:
    rust = {"columns": ["a", "b"], "rows": [[1, "x"]], "row_count": 1, "rust_only": True}
    go = {"columns": ["a", "b"], "rows": [[1.0000001, 2]], "row_count": 1, "go_only": 1}
    result = compare("json", rust, go, tolerance=1e-6)
    assert kinds(result) == {
        "$.rust_only": "missing_in_go",
        "$.go_only": "missing_in_rust",
        "$.rows[0][1]": "type_changed",
    }
    assert result.only_in == {"rust": ["$.rust_only"], "go": ["$.go_only"]}
    strict = compare("json", rust, go, tolerance=1e-9)
    assert kinds(strict)["$.rows[0][0]"] == "value_changed"


def test_ignored_paths_are_left_out() -> None:
    result = compare(
        "json",
        {"a": 1, "t": 5, "rows": [[1, 9]]},
        {"a": 1, "t": 6, "rows": [[1, 8]]},
        ignore=["$.t", "$.rows[*][1]"],
    )
    assert result.differences == []


def test_ranking_reports_recall_missed_ids_rank_agreement_and_score_drift() -> None:
    rust = {
        "results": [
            {"id": "a", "score": 0.9},
            {"id": "b", "score": 0.8},
            {"id": "c", "score": 0.7},
            {"id": "d", "score": 0.6},
        ]
    }
    go = {
        "results": [
            {"id": "b", "score": 0.8},
            {"id": "c", "score": 0.7},
            {"id": "d", "score": 0.6},
            {"id": "e", "score": 0.5, "x": 1},
        ]
    }
    result = compare("ranking", rust, go)
    assert result.metrics["recall"] == 0.75
    assert result.missed_ids == ["a"]
    assert result.metrics["rank_agreement"] == 0.0
    assert result.metrics["score_drift"] == pytest.approx(0.0)
    assert result.only_in["go"] == ["$.results[].x"]
    assert blocking(result) == []  # recall decides; the threshold is applied by the verdict


def test_cosine_comparator_is_magnitude_invariant() -> None:
    rust = {"embeddings": [[0.6, 0.8], [1.0, 0.0]], "dimensions": 2, "model": "m"}
    go = {"embeddings": [[6.0, 8.0], [0.0, 1.0]], "dimensions": 2, "model": "m"}
    result = compare("cosine", rust, go)
    assert result.metrics["min_cosine"] == pytest.approx(0.0)
    assert result.metrics["worst_index"] == 1
    assert blocking(result) == []


def sample(endpoint: str, **fields: Any) -> dict[str, Any]:
    return {
        "ts": 1.0,
        "endpoint": endpoint,
        "kind": "shadow",
        "metrics": {},
        "blocking": [],
        **fields,
    }


def route_needing(endpoint: str, samples: int) -> Any:
    route = ROUTES[endpoint]
    return dataclasses.replace(route, parity=dataclasses.replace(route.parity, min_samples=samples))


def test_too_few_samples_is_inconclusive_never_pass() -> None:
    verdict = judge(route_needing("sql", 20), [sample("sql")] * 19)
    assert verdict.verdict == "INCONCLUSIVE" and verdict.headline() == "INCONCLUSIVE 19/20 samples"
    assert (
        judge(route_needing("sql", 20), []).reasons[0].endswith("(no shadow data: turn shadow on)")
    )


def test_the_same_error_on_both_sides_is_not_evidence_of_parity() -> None:
    """Bad requests both backends refuse alike (400 and 400) match, but say nothing of the
    answers: a window of them alone never reaches PASS, and never opens the gate."""
    refused = [sample("sql", status={"rust": 400, "go": 400})] * 25
    answered = [sample("sql", status={"rust": 200, "go": 200})] * 20
    only_errors = judge(route_needing("sql", 20), refused)
    assert only_errors.verdict == "INCONCLUSIVE"
    assert only_errors.headline() == "INCONCLUSIVE 0/20 samples"
    assert "25 where both backends answered the same error status" in only_errors.reasons[0]
    assert judge(route_needing("sql", 20), refused[:5] + answered[:15]).verdict == "INCONCLUSIVE"
    mixed = judge(route_needing("sql", 20), refused[:5] + answered)
    assert mixed.verdict == "PASS" and mixed.metrics["agreed_errors"] == 5
    assert mixed.headline().startswith("PASS 25/25")
    differing = sample("sql", status={"rust": 400, "go": 500}, error="status 400 vs 500")
    assert judge(route_needing("sql", 20), [differing] * 20 + refused).verdict == "FAIL"


def test_differences_the_backend_also_shows_with_itself_are_noise() -> None:
    took = [{"path": "$.took_ms", "kind": "value_changed"}]
    noise = [{**sample("sql", blocking=took), "kind": "noise"}]
    noisy = [sample("sql", blocking=took) for _ in range(5)]
    assert judge(route_needing("sql", 5), noisy + noise).verdict == "PASS"
    assert judge(route_needing("sql", 5), noisy).verdict == "FAIL"
    real = [sample("sql", blocking=[{"path": "$.rows[0][1]", "kind": "value_changed"}])] * 5
    assert judge(route_needing("sql", 5), real + noise).verdict == "FAIL"


def test_cosine_threshold_relaxes_to_the_measured_noise_floor() -> None:
    route = route_needing("embed", 3)  # configured min_cosine 0.9999
    shadows = [sample("embed", metrics={"min_cosine": 0.9995})] * 3
    assert judge(route, shadows).verdict == "FAIL"
    noise = [{**sample("embed", metrics={"min_cosine": 0.9990}), "kind": "noise"}]
    verdict = judge(route, shadows + noise)
    assert verdict.verdict == "PASS" and verdict.noise["effective_min_cosine"] == 0.9990


def test_shadow_errors_fail_parity() -> None:
    verdict = judge(
        route_needing("retrieve", 2),
        [
            sample("retrieve", metrics={"recall": 1.0}),
            sample("retrieve", error="the go backend did not answer in time"),
        ],
    )
    assert verdict.verdict == "FAIL" and verdict.passed == 1


def test_markdown_rows_follow_the_seed_log() -> None:
    verdict = judge(
        route_needing("embed", 2),
        [
            sample(
                "embed",
                metrics={"min_cosine": 0.999996, "p50_cosine": 1.0},
                only_in={"rust": [], "go": ["$.took_ms"]},
            )
        ]
        * 2,
    )
    text = markdown(ROUTES, {"embed": verdict})
    assert (
        "| `embed` |" in text and "| `/ai/embed` | `/v1/embed` | ✅ PASS 2/2 cos≥0.99999 |" in text
    )
    assert "| `$.took_ms` | — | 2/2 |" in text


def test_forgetting_one_endpoints_samples_keeps_the_others(tmp_path: Path) -> None:
    from shim.parity.verdicts import ParityStore

    store = ParityStore(tmp_path)
    for endpoint in ("embed", "sql", "embed"):
        store.append({**sample(endpoint), "ts": time.time()})
    (store.directory / "torn.jsonl").write_bytes(b'{"endpoint": "sql", "ts": 1')  # a crash
    assert store.forget("embed") == 2
    assert [r["endpoint"] for r in store.samples(window_seconds=60)] == ["sql"]
    assert store.forget(None) == 1 and store.samples(window_seconds=60) == []


@given(st.lists(st.floats(-1, 1), min_size=1, max_size=64))
def test_percentiles_agree_with_numpys_default_method(values: list[float]) -> None:
    array = np.array(values)
    points = (0, 1, 50, 99, 100)
    expected = [np.percentile(array, p) for p in points]
    assert np.allclose(percentiles(array, points), expected)


def test_markdown_notes_say_what_each_verdict_rests_on_and_claim_nothing_without_samples() -> None:
    with_samples = judge(
        route_needing("embed", 3),
        [sample("embed", metrics={"min_cosine": 1.0, "p50_cosine": 1.0})] * 2
        + [sample("embed", kind="probe", metrics={"min_cosine": 1.0, "p50_cosine": 1.0})],
    )
    without = judge(route_needing("sql", 3), [])
    rows = markdown(ROUTES, {"embed": with_samples, "sql": without}).splitlines()
    [embed_row] = [row for row in rows if row.startswith("| `embed`")]
    [sql_row] = [row for row in rows if row.startswith("| `sql`")]
    assert "1 probe request, 2 shadowed live requests" in embed_row
    assert "shadowed" not in sql_row and "probe requests" not in sql_row
    assert "0 of 3 comparisons needed" in sql_row


def shim_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`shim ARGS` with nothing running: these answers come before any backend is asked."""
    env = base_env(SHIM_STATE_DIR=str(tmp_path / "state"), SHIM_RUST_URL="http://127.0.0.1:9")
    return subprocess.run(
        [*SHIM, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["chat"], 1, "chat is not idempotent"),
        (["chat", "--input", "requests.jsonl"], 1, "chat is not idempotent"),
        (["matrix_search"], 1, "Go-only"),
        (["embed", "--input", "missing.jsonl"], 2, "cannot read missing.jsonl"),
        (["embed", "--input", "."], 2, "is a directory"),
        (["embed", "--input", "empty.jsonl"], 2, "holds no request bodies"),
        (["embed", "--samples", "0"], 2, "--samples: must be 1 or more"),
        (["embed", "--samples", "-3"], 2, "--samples: must be 1 or more"),
    ],
)
def test_probe_mistakes_are_one_line_with_the_right_advice(
    tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "requests.jsonl").write_text('{"messages": []}\n')
    result = shim_cli(tmp_path, "parity", "probe", *args)
    assert result.returncode == code, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert "turn shadow on" not in result.stderr + result.stdout
    assert "pass --input" not in result.stderr


def test_history_limit_below_one_is_refused(tmp_path: Path) -> None:
    result = shim_cli(tmp_path, "flags", "--history", "--limit", "-1")
    assert result.returncode == 2 and "--limit: must be 1 or more" in result.stderr


def test_endpoint_help_lists_the_route_tables_names(tmp_path: Path) -> None:
    flags_help = shim_cli(tmp_path, "flags", "set", "--help").stdout
    probe_help = shim_cli(tmp_path, "parity", "probe", "--help").stdout
    for name in ROUTES.routes:
        assert name in " ".join(flags_help.split())
    assert "embed" in probe_help and "chat" not in probe_help
    assert "seed's log format" in probe_help  # --markdown says what it does
