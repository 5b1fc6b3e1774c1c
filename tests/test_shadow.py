"""Shadow traffic and parity on live requests, against real servers on loopback."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from shim.cutover.file_store import FileBackend
from shim.cutover.flags import FlagStore
from shim.reference.embedding import unit_embedding
from shim.serving.shadow import WorkBudget, compare_pair
from tests.flipping import ROUTES, wait_for_generation, wait_for_parity
from tests.servers import Shim, reference

SEED_ROW = re.compile(
    r"^\| `embed` \| \d{4}-\d{2}-\d{2} \| `/ai/embed` \| `/v1/embed` \| "
    r"✅ PASS (\d+)/\1 cos≥(?:0\.99999|1\.00000) \| [^|]+ \|$",
    re.M,
)


def shadow_on(shim: Shim, *endpoints: str) -> None:
    for endpoint in endpoints:
        shim.cli("flags", "set", endpoint, "rust", "--shadow")


def test_healthy_backends_pass_embed_parity_and_print_the_seed_row(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(workers=2)
    shadow_on(shim, "embed")
    for i in range(24):
        face = "/ai/embed" if i % 2 else "/_go/v1/embed"
        response = httpx.post(shim.url + face, json={"texts": [f"operator {i}", "forklift"]})
        assert response.status_code == 200 and response.headers["x-shim-backend"] == "rust"
    verdict = wait_for_parity(shim, "embed", samples=24)
    assert verdict["verdict"] == "PASS", verdict
    assert verdict["samples"] == 24 and verdict["metrics"]["min_cosine"] >= 0.99999
    table = shim.cli("parity", "--markdown").stdout
    assert SEED_ROW.search(table), table
    assert "No field was seen on one side only." in table


def test_a_drifting_go_backend_fails_naming_min_cosine_missed_id_and_drift(
    start_shim: Callable[..., Shim], drifting_go: str, backends: dict[str, str]
) -> None:
    shim = start_shim(go_url=drifting_go)
    shadow_on(shim, "embed", "vectors_search")
    vector = unit_embedding("forklift operator night shift", "nomic-embed-text").tolist()
    for i in range(20):
        assert httpx.post(f"{shim.url}/ai/embed", json={"texts": [f"t{i}"]}).status_code == 200
        search = httpx.post(
            f"{shim.url}/vectors/search", json={"index": "workers", "vector": vector, "k": 5}
        )
        assert search.status_code == 200
    top_id = httpx.post(
        f"{backends['rust']}/vectors/search", json={"index": "workers", "vector": vector, "k": 5}
    ).json()["results"][0]["id"]
    embed = wait_for_parity(shim, "embed", samples=20)
    assert embed["verdict"] == "FAIL"
    assert embed["metrics"]["min_cosine"] == pytest.approx(0.95, abs=0.005)
    assert embed["drift"]["go"] == {"$.took_ms": 20}
    search = wait_for_parity(shim, "vectors_search", samples=20)
    assert search["verdict"] == "FAIL"
    assert search["metrics"]["min_recall"] == pytest.approx(0.8)
    assert search["worst"][0]["missed_ids"] == [top_id]
    report = shim.cli("parity", "--markdown").stdout
    assert "❌ FAIL 0/20 min cos=0.95" in report
    assert f"missed ids {top_id}" in report
    assert "| `$.took_ms` | — | 20/20 |" in report


def median_latency(shim: Shim, count: int = 25) -> float:
    timings = []
    with httpx.Client() as client:
        for i in range(count):
            started = time.perf_counter()
            response = client.post(f"{shim.url}/ai/embed", json={"texts": [f"latency {i}"]})
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
    return statistics.median(timings)


@pytest.fixture(scope="module")
def slow_go(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, url = reference("go", tmp_path_factory.mktemp("slow-go"), latency_ms=300)
    yield url
    server.stop()


def test_a_slow_shadow_backend_never_slows_the_client(
    start_shim: Callable[..., Shim], slow_go: str
) -> None:
    shim = start_shim(go_url=slow_go)
    median_latency(shim, 5)  # warm the pools
    without = median_latency(shim)
    shadow_on(shim, "embed")
    with_shadow = median_latency(shim)
    assert with_shadow <= without * 1.10 + 0.005, (without, with_shadow)
    assert wait_for_parity(shim, "embed", samples=25)["samples"] >= 25  # the shadows did run


def test_shadow_saturation_skips_and_counts_and_hurts_no_primary(
    start_shim: Callable[..., Shim], slow_go: str
) -> None:
    shim = start_shim(go_url=slow_go, SHIM_SHADOW_MAX_INFLIGHT="2")
    shadow_on(shim, "embed")

    def call(i: int) -> int:
        return httpx.post(f"{shim.url}/ai/embed", json={"texts": [f"burst {i}"]}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(call, range(40)))
    assert statuses == [200] * 40
    text = httpx.get(f"{shim.admin_url}/metrics").text
    found = re.search(
        r'shim_shadow_skipped_total\{endpoint="embed",reason="saturated"\} (\S+)', text
    )
    assert found and float(found.group(1)) >= 1, text


def test_shadow_work_past_its_share_of_the_worker_is_skipped_as_budget(
    start_shim: Callable[..., Shim],
) -> None:
    """A share so small that one comparison spends it: the rest are skipped, not queued."""
    shim = start_shim(SHIM_SHADOW_CPU_SHARE="0.00001")
    shadow_on(shim, "embed")
    with httpx.Client() as client:
        statuses = [
            client.post(f"{shim.url}/ai/embed", json={"texts": [f"t{i}"]}).status_code
            for i in range(30)
        ]
    assert statuses == [200] * 30
    text = httpx.get(f"{shim.admin_url}/metrics").text
    found = re.search(r'shim_shadow_skipped_total\{endpoint="embed",reason="budget"\} (\S+)', text)
    assert found and float(found.group(1)) >= 25, text


def test_the_work_budget_refills_at_its_share_of_the_clock() -> None:
    now = [0.0]
    budget = WorkBudget(0.02, clock=lambda: now[0])
    assert budget.available()
    budget.spend(0.15)  # a burst overdraws the 0.1 s banked (5 s at 2%)
    now[0] = 1.0
    assert not budget.available()  # 0.02 s earned back, 0.03 still owed
    now[0] = 3.0
    assert budget.available()
    now[0] = 1000.0
    budget.available()
    assert budget.tokens == pytest.approx(0.1)  # at most BANKED_SECONDS' worth saved


def test_chat_and_playbook_records_are_never_shadowed(
    start_shim: Callable[..., Shim], echo_backend: str, tmp_path: Path
) -> None:
    # Rust is the echo backend: anything mirrored towards Rust would show up in its log.
    shim = start_shim(rust_url=echo_backend)
    for endpoint in ("chat", "playbooks_record"):
        refused = shim.cli("flags", "set", endpoint, "go", "--shadow", check=False)
        assert refused.returncode == 1 and "cannot be shadowed" in refused.stderr
    store = FlagStore(FileBackend(shim.state_dir, ROUTES), ROUTES, {})
    store.set("chat", serve="go", actor="test")
    # A hand-edited flag file turning shadow on anyway: the proxy must still refuse.
    document = json.loads((shim.state_dir / "flags.json").read_text())
    for endpoint in ("chat", "playbooks_record"):
        document["flags"][endpoint] = {
            **document["flags"].get(endpoint, {"serve": "go"}),
            "shadow": True,
        }
    document["generation"] += 1
    (shim.state_dir / "flags.json").write_text(json.dumps(document))
    wait_for_generation(shim, document["generation"])
    tag = f"never-shadowed-{time.time_ns()}"
    chat = httpx.post(
        f"{shim.url}/v1/chat",
        headers={"X-Request-ID": tag},
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    record = httpx.post(
        f"{shim.url}/v1/matrix/playbooks/record",
        headers={"X-Request-ID": tag},
        json={"query": "q", "id": "w-001", "role": "CNC Operator", "score": 0.2},
    )
    assert chat.status_code == record.status_code == 200
    assert chat.headers["x-shim-backend"] == record.headers["x-shim-backend"] == "go"
    time.sleep(0.5)
    received = httpx.get(f"{echo_backend}/__received").json()
    assert not [r for r in received if r["request_id"] == tag]


def test_probe_compares_both_backends_on_demand(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim()
    result = shim.cli("parity", "probe", "embed", "--samples", "5")
    assert "PASS 5/5 cos≥0.99999" in result.stdout
    search = shim.cli("parity", "probe", "vectors_search", "--samples", "3", "--markdown")
    assert "✅ PASS 3/3 recall@k≥1.000" in search.stdout


def test_probe_of_a_drifting_backend_exits_non_zero(
    start_shim: Callable[..., Shim], drifting_go: str, tmp_path: Path
) -> None:
    shim = start_shim(go_url=drifting_go)
    inputs = tmp_path / "requests.jsonl"
    inputs.write_text("\n".join(json.dumps({"texts": [f"probe {i}"]}) for i in range(4)))
    result = shim.cli("parity", "probe", "embed", "--input", str(inputs), check=False)
    assert result.returncode == 1
    assert "FAIL 0/4 min cos=0.95" in result.stdout


def test_a_noise_check_translates_both_answers_from_the_backend_that_gave_them() -> None:
    go_answer = orjson.dumps({"vectors": [[3.0, 4.0]], "dimension": 2, "model": "m"})
    route = ROUTES["embed"]
    same = compare_pair(route, ("go", 200, go_answer), ("go", 200, go_answer), client="rust")
    assert same.differences == [] and same.metrics["min_cosine"] > 0.99999
