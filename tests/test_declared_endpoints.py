"""An endpoint declared in the route table (`rerank`, adapter = "jq"), through real servers:
both faces, both backends, shadow and parity, flags, canary, fallback, the guard, and the
drift catalogue's loop from a missing program to PASS."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.flipping import wait_for_parity
from tests.servers import ROOT, Shim, free_port

SHIPPED = ROOT / "config" / "routes.toml"
DOCUMENTS = [
    "forklift operator nights",
    "CNC machinist",
    "warehouse associate",
    "welder weekend shift",
    "forklift trainer",
]


def rust_request(i: int = 0) -> dict[str, Any]:
    return {"query": f"forklift operator {i}", "documents": DOCUMENTS, "top_n": 3}


def go_request(i: int = 0) -> dict[str, Any]:
    return {"query": f"forklift operator {i}", "docs": DOCUMENTS, "k": 3}


def post(url: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(url, content=json.dumps(body), headers=headers, timeout=10)


def test_both_faces_translate_both_ways_and_each_backend_sees_only_its_dialect(
    start_shim: Callable[..., Shim], backends: dict[str, str]
) -> None:
    rust_direct = post(backends["rust"] + "/ai/rerank", rust_request())
    go_direct = post(backends["go"] + "/v1/rerank", go_request()).json()
    # The reference backends refuse the other dialect: a 200 below proves a translation.
    assert post(backends["go"] + "/v1/rerank", rust_request()).status_code == 400
    assert post(backends["rust"] + "/ai/rerank", go_request()).status_code == 400
    shim = start_shim()

    same = post(shim.url + "/ai/rerank", rust_request())
    assert same.headers["x-shim-backend"] == "rust" and same.content == rust_direct.content
    assert "x-shim-lossy" not in same.headers
    for path in ("/v1/rerank", "/_go/v1/rerank"):
        answer = post(shim.url + path, go_request())
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-shim-backend"] == "rust"
        assert answer.json() == {"ranking": go_direct["ranking"]}  # took_ms: Rust has none
        assert answer.headers["x-shim-lossy"] == "took_ms"

    shim.cli("flags", "set", "rerank", "go")
    served = post(shim.url + "/ai/rerank", rust_request())
    assert served.status_code == 200, served.text
    assert served.headers["x-shim-backend"] == "go"
    assert "x-shim-lossy" not in served.headers  # the lossy direction only
    body = served.json()
    assert body["results"] == rust_direct.json()["results"]
    assert set(body) == {"results", "took_ms"}  # Go's own field rides along
    for path in ("/v1/rerank", "/_go/v1/rerank"):
        answer = post(shim.url + path, go_request())
        assert answer.headers["x-shim-backend"] == "go" and "x-shim-lossy" not in answer.headers
        assert set(answer.json()) == {"ranking", "took_ms"}  # streamed as Go wrote it
        assert answer.json()["ranking"] == go_direct["ranking"]


def test_a_body_that_is_not_an_object_is_400_before_any_backend_is_asked(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    shim = start_shim(go_url=echo_backend)
    shim.cli("flags", "set", "rerank", "go")
    for body in ([1, 2], "forklift", None):
        answer = post(shim.url + "/ai/rerank", body, **{"X-Request-ID": f"not-object-{body}"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "bad_shape"
        assert "rerank request must be a JSON object" in answer.json()["error"]["message"]
    received = httpx.get(echo_backend + "/__received").json()
    assert not [r for r in received if str(r["request_id"]).startswith("not-object-")]


def test_a_program_failing_on_a_backend_answer_is_a_counted_json_502(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    shim = start_shim(go_url=echo_backend)
    shim.cli("flags", "set", "rerank", "go")
    odd = post(shim.url + "/ai/rerank", rust_request(), **{"X-Test-Body": '{"ranking": null}'})
    assert odd.status_code == 502
    error = odd.json()["error"]
    assert error["code"] == "bad_backend_answer"
    assert "routes.rerank.jq.go_answer_to_rust" in error["message"]
    assert "Cannot iterate over null" in error["message"]
    deadline = time.monotonic() + 5
    counted = 'shim_translation_failures_total{endpoint="rerank",side="backend"} 1.0'
    while counted not in httpx.get(shim.admin_url + "/metrics").text:
        assert time.monotonic() < deadline, "the failure was not counted"
        time.sleep(0.2)


def shadow_traffic(shim: Shim, count: int, *, faces: tuple[str, ...] = ("rust", "go")) -> None:
    with httpx.Client(timeout=10) as client:
        for i in range(count):
            face = faces[i % len(faces)]
            path, body = (
                ("/ai/rerank", rust_request(i)) if face == "rust" else ("/v1/rerank", go_request(i))
            )
            answer = client.post(shim.url + path, content=json.dumps(body))
            assert answer.status_code == 200, answer.text


def test_shadow_on_a_faithful_go_passes_with_its_noisy_took_ms_ignored(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim()
    shim.cli("flags", "set", "rerank", "rust", "--shadow")
    shadow_traffic(shim, 24)  # both faces: each compared in its own dialect
    verdict = wait_for_parity(shim, "rerank", samples=24)
    assert verdict["verdict"] == "PASS", verdict
    assert verdict["comparator"] == "json" and verdict["samples"] == 24
    assert verdict["drift"] == {"rust": {}, "go": {}}


def test_shadow_on_a_drifting_go_fails_naming_the_score(
    start_shim: Callable[..., Shim], drifting_go: str
) -> None:
    shim = start_shim(go_url=drifting_go)
    shim.cli("flags", "set", "rerank", "rust", "--shadow")
    shadow_traffic(shim, 20)
    verdict = wait_for_parity(shim, "rerank", samples=20)
    assert verdict["verdict"] == "FAIL", verdict
    assert any(p.startswith("$.results[0].relevance_score") for p in verdict["differing_paths"])
    assert any(p.startswith("$.ranking[0].score") for p in verdict["differing_paths"])


def test_a_canary_splits_callers_stickily_and_every_answer_keeps_the_rust_shape(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim()
    shim.cli("flags", "set", "rerank", "rust", "--percent", "50")
    seen: dict[str, str] = {}
    with httpx.Client(timeout=10) as client:
        for _ in range(2):  # twice: the same caller lands on the same backend
            for i in range(40):
                answer = client.post(
                    shim.url + "/ai/rerank",
                    content=json.dumps(rust_request(i)),
                    headers={"X-Shim-Key": f"caller-{i}"},
                )
                assert answer.status_code == 200, answer.text
                assert "results" in answer.json()
                backend = answer.headers["x-shim-backend"]
                assert seen.setdefault(f"caller-{i}", backend) == backend  # sticky
    assert set(seen.values()) == {"rust", "go"}


def test_an_unreachable_go_falls_back_to_rust_in_either_dialect(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(go_url=f"http://127.0.0.1:{free_port()}")
    shim.cli("flags", "set", "rerank", "go")
    for path, body, keys in [
        ("/ai/rerank", rust_request(), {"results"}),
        ("/_go/v1/rerank", go_request(), {"ranking"}),
    ]:
        answer = post(shim.url + path, body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-shim-fallback"] == "go->rust"
        assert answer.headers["x-shim-backend"] == "rust"
        assert set(answer.json()) == keys


def test_the_guard_rolls_a_failing_go_back_on_a_declared_endpoint(
    start_shim: Callable[..., Shim], flaky_go: str
) -> None:
    shim = start_shim(go_url=flaky_go)
    shim.cli("flags", "set", "rerank", "go")
    started = time.monotonic()
    rolled = threading.Event()
    statuses: list[int] = []

    def client(worker: int) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            while not rolled.is_set() and time.monotonic() - started < 30:
                answer = http.post(shim.url + "/ai/rerank", content=json.dumps(rust_request(i)))
                i += 1
                statuses.append(answer.status_code)
                assert "results" in answer.json()
                if answer.headers["x-shim-backend"] == "rust" and not answer.headers.get(
                    "x-shim-fallback"
                ):
                    rolled.set()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))
    assert set(statuses) == {200} and rolled.is_set()
    history = shim.cli("flags", "--history", "rerank").stdout
    assert "guard" in history and "go error ratio" in history


def draft_table(tmp_path: Path, *, go_answer_to_rust: str | None) -> Path:
    """The shipped route table with rerank's go_answer_to_rust (and the answer example, which
    needs it) taken out, or replaced by `go_answer_to_rust`."""
    text = SHIPPED.read_text()
    text = re.sub(r"(?m)^go_answer_to_rust = .*\n", "", text)
    text = text[: text.index("# An answer example")]  # rerank is the table's last route
    if go_answer_to_rust is not None:
        text = text.replace(
            "[routes.rerank.jq]\n", f"[routes.rerank.jq]\ngo_answer_to_rust = {go_answer_to_rust}\n"
        )
    path = tmp_path / "routes.toml"
    path.write_text(text)
    return path


def test_a_missing_answer_program_is_proposed_by_the_catalogue_and_pasting_it_passes(
    start_shim: Callable[..., Shim], tmp_path: Path
) -> None:
    draft = draft_table(tmp_path, go_answer_to_rust=None)
    shim = start_shim(SHIM_ROUTES_FILE=str(draft))
    shim.cli("flags", "set", "rerank", "rust", "--shadow")
    shadow_traffic(shim, 20, faces=("rust",))
    verdict = wait_for_parity(shim, "rerank", samples=20)
    assert verdict["verdict"] == "FAIL"
    assert verdict["drift"] == {"rust": {"$.results": 20}, "go": {"$.ranking": 20}}
    [proposal] = verdict["proposals"]
    assert proposal["program"] == "go_answer_to_rust"
    assert (proposal["support"], proposal["samples"]) == (20, 20)
    markdown = shim.cli("parity", "--endpoint", "rerank", "--markdown").stdout
    [line] = [ln for ln in markdown.splitlines() if ln.startswith("go_answer_to_rust = ")]
    assert "`$.results[].index` = `$.ranking[].doc`" in markdown
    pasted = line.removeprefix("go_answer_to_rust = ")
    # The shipped route table carries exactly what the catalogue proposes.
    assert line in SHIPPED.read_text()

    shim.stop()
    draft_table(tmp_path, go_answer_to_rust=pasted)
    shim.cli("parity", "reset", "--endpoint", "rerank")
    shim = start_shim(SHIM_ROUTES_FILE=str(draft))
    shadow_traffic(shim, 20, faces=("rust",))
    verdict = wait_for_parity(shim, "rerank", samples=20)
    assert verdict["verdict"] == "PASS", verdict
    assert verdict["proposals"] == []


def test_readme_worked_example_runs_against_a_live_demo(tmp_path: Path) -> None:
    from tests.test_demo import live_demo, tour_lines

    with live_demo(tmp_path) as run:
        outputs = [run(line) for line in tour_lines("rerank-tour")]
    text = "\n".join(r.stdout + r.stderr for r in outputs)
    assert "jq go_answer_to_rust" in text and "examples: 2 checked" in text
    assert "x-shim-lossy: took_ms" in text.lower() and '"ranking"' in text
    assert "FAIL 0/20" in text and "| `$.ranking` | — | 20/20 |" in text
    assert "Proposed mapping to the Rust side, supported by 20 of 20 samples" in text
    proposed = "go_answer_to_rust = 'del(.ranking) + {results: [.ranking[] | {index: .doc, "
    assert text.count(proposed) == 2  # proposed by the probe, carried by the route table
    assert "rerank    PASS 20/20 identical" in text  # the probe with the shipped table
    assert "rerank: rust+shadow -> go+shadow" in text
    assert "x-shim-backend: go" in text.lower() and '"results"' in text
