"""Progressive cutover: sticky canary, the parity gate, the guard, cross-dialect fallback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from shim.cutover.canary import bucket
from shim.cutover.fallback import RetryBudget
from shim.cutover.file_store import FileBackend
from shim.cutover.flag_view import FlagView
from shim.cutover.flags import FlagStore
from shim.cutover.guard import Guard
from shim.headers import client_request
from shim.serving.caller import caller_of
from tests.flipping import ROUTES, wait_for_generation, wait_for_parity
from tests.servers import Shim, free_port

KEYS = [f"caller-{i}" for i in range(2000)]


def backends_by_key(shim: Shim, keys: list[str], *, fresh: bool = False) -> dict[str, str]:
    """Which backend answered each caller (by X-Shim-Key), 8 at a time."""
    limits = httpx.Limits(max_keepalive_connections=0 if fresh else 8)

    with httpx.Client(limits=limits, timeout=10) as client:

        def one(key: str) -> tuple[str, str]:
            response = client.post(
                f"{shim.url}/query", headers={"X-Shim-Key": key}, json={"sql": "select 1"}
            )
            assert response.status_code == 200, response.text
            return key, response.headers["x-shim-backend"]

        with ThreadPoolExecutor(8) as pool:
            return dict(pool.map(one, keys))


def test_canary_share_is_sticky_across_workers_and_only_grows_towards_go(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(workers=4)
    shim.cli("flags", "set", "sql", "rust", "--percent", "10")
    at_10 = backends_by_key(shim, KEYS)
    shim.cli("flags", "set", "sql", "rust", "--percent", "30")
    at_30 = backends_by_key(shim, KEYS)
    go_share = sum(1 for b in at_30.values() if b == "go") / len(KEYS)
    assert 0.27 <= go_share <= 0.33, go_share
    assert 0.07 <= sum(1 for b in at_10.values() if b == "go") / len(KEYS) <= 0.13
    moved_back = [k for k in KEYS if at_10[k] == "go" and at_30[k] == "rust"]
    assert moved_back == []  # 10 -> 30 moves callers towards Go only
    again = backends_by_key(shim, KEYS[:300], fresh=True)  # new connections: other workers
    assert all(again[k] == at_30[k] for k in again)


def test_without_a_key_the_canary_follows_the_client_a_local_proxy_names() -> None:
    """Behind Bun every request comes from 127.0.0.1: the caller is the one it forwards for,
    and only a loopback peer is believed."""
    forwarded = client_request(
        [(b"x-forwarded-for", b"198.51.100.1, 203.0.113.7")],
        client_host="127.0.0.1",
        scheme="http",
        caller_header=b"x-shim-key",
    )
    assert caller_of(forwarded, "127.0.0.1") == "203.0.113.7"
    assert caller_of(forwarded, "192.0.2.9") == "192.0.2.9"  # a remote peer's claim is ignored
    keyed = client_request(
        [(b"x-forwarded-for", b"203.0.113.7"), (b"x-shim-key", b"tenant-4")],
        client_host="127.0.0.1",
        scheme="http",
        caller_header=b"x-shim-key",
    )
    assert caller_of(keyed, "127.0.0.1") == "tenant-4"


def test_canary_buckets_are_stable_and_monotonic() -> None:
    assert bucket("embed", "caller-1") == bucket("embed", "caller-1")
    assert {bucket("embed", k) for k in KEYS} == set(range(100))
    shares = [sum(1 for k in KEYS if bucket("sql", k) < p) for p in range(0, 101, 10)]
    assert shares == sorted(shares) and shares[0] == 0 and shares[-1] == len(KEYS)


def audit(shim: Shim) -> list[dict[str, object]]:
    path = shim.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_parity_gate_refuses_without_evidence_force_is_audited_dry_run_changes_nothing(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(SHIM_PARITY_GATE="true", SHIM_ADMIN_TOKEN="t0ken")
    refused = shim.cli("flags", "set", "embed", "go", check=False)
    assert refused.returncode == 1
    assert "needs a recent PASS parity verdict" in refused.stderr
    assert "INCONCLUSIVE 0/20" in refused.stderr
    canary = shim.cli("flags", "set", "sql", "rust", "--percent", "20", check=False)
    assert canary.returncode == 1  # a higher canary share is traffic towards Go too
    dry = shim.cli("flags", "set", "embed", "go", "--dry-run", check=False)
    assert dry.returncode == 1 and "nothing changed" in dry.stdout
    assert "gate: refuses" in dry.stdout and "no parity data" in dry.stdout
    assert audit(shim) == []
    forced = shim.cli("flags", "set", "embed", "go", "--force", "--reason", "drill")
    assert "forced past the parity gate" in forced.stderr
    [record] = audit(shim)
    assert record["forced"] is True and record["after"]["serve"] == "go"
    back = shim.cli("flags", "set", "embed", "rust")  # towards Rust: never gated
    assert back.returncode == 0
    api = f"{shim.admin_url}/_shim/flags/embed"
    auth = {"Authorization": "Bearer t0ken"}
    gated = httpx.put(api, json={"serve": "go"}, headers=auth)
    assert gated.status_code == 412 and gated.json()["error"]["code"] == "parity_gate"
    pushed = httpx.put(api, json={"serve": "go", "force": True}, headers=auth)
    assert pushed.status_code == 200 and pushed.json()["forced"] is True


def test_parity_gate_opens_on_a_pass_verdict(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim(SHIM_PARITY_GATE="true")
    shim.cli("flags", "set", "embed", "rust", "--shadow")
    for i in range(20):
        assert httpx.post(f"{shim.url}/ai/embed", json={"texts": [f"g{i}"]}).status_code == 200
    assert wait_for_parity(shim, "embed", samples=20)["samples"] >= 20
    dry = shim.cli("flags", "set", "embed", "go", "--shadow", "--dry-run")
    assert "gate: allows: parity PASS 20/20" in dry.stdout
    flipped = shim.cli("flags", "set", "embed", "go", "--shadow")
    assert flipped.returncode == 0 and "forced" not in flipped.stderr
    assert "forced" not in audit(shim)[-1]


def test_guard_rolls_back_a_failing_go_while_clients_get_fallback_answers(
    start_shim: Callable[..., Shim], flaky_go: str
) -> None:
    shim = start_shim(go_url=flaky_go)
    shim.cli("flags", "set", "embed", "go")
    started = time.monotonic()
    results: list[tuple[int, str, str | None]] = []
    rolled = threading.Event()

    def client(worker: int) -> None:
        """Load until Rust answers directly again (the guard acted), 30 s at most."""
        with httpx.Client(timeout=10) as http:
            i = 0
            while not rolled.is_set() and time.monotonic() - started < 30:
                response = http.post(f"{shim.url}/ai/embed", json={"texts": [f"{worker}-{i}"]})
                i += 1
                outcome = (
                    response.status_code,
                    response.headers["x-shim-backend"],
                    response.headers.get("x-shim-fallback"),
                )
                results.append(outcome)
                assert set(response.json()) == {"embeddings", "dimensions", "model"}
                if outcome == (200, "rust", None):
                    rolled.set()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(client, range(6)))
    assert {status for status, _, _ in results} == {200}  # fallbacks, never errors
    assert any(fallback == "go->rust" for _, _, fallback in results)
    rolled_back = [r for r in audit(shim) if r["actor"] == "guard"]
    assert len(rolled_back) == 1, audit(shim)
    assert "go error ratio" in str(rolled_back[0]["reason"])
    assert rolled_back[0]["after"]["serve"] == "rust"  # type: ignore[index]
    assert time.monotonic() - started < 30
    assert rolled.is_set()  # after the rollback, Rust answered directly (no fallback)
    metrics = httpx.get(f"{shim.admin_url}/metrics").text
    assert 'shim_guard_rollbacks_total{endpoint="embed"} 1.0' in metrics
    assert (
        'shim_fallbacks_total{cause="status_503",direction="go->rust",endpoint="embed"}' in metrics
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard_on_go(tmp_path: Path) -> tuple[Guard, Clock]:
    store = FlagStore(FileBackend(tmp_path, ROUTES), ROUTES, {})
    store.set("embed", serve="go", actor="test")
    view = FlagView(store, poll_seconds=0.2)
    view.refresh()
    clock = Clock()
    return Guard(ROUTES, view, store, clock=clock), clock


def test_guard_does_nothing_without_traffic_for_a_simulated_minute(tmp_path: Path) -> None:
    guard, clock = guard_on_go(tmp_path)
    for _ in range(120):
        clock.now += 0.5
        assert guard.evaluate() == []
    for _ in range(5):  # a few failures are still too little data
        guard.observe("embed", ok=False, seconds=0.01)
    for _ in range(10):
        clock.now += 0.5
        assert guard.evaluate() == []


def test_guard_trips_only_after_repeated_failing_checks(tmp_path: Path) -> None:
    guard, clock = guard_on_go(tmp_path)
    for i in range(40):
        guard.observe("embed", ok=i % 2 == 0, seconds=0.01)
    assert guard.evaluate() == []  # one failing check: not yet (hysteresis)
    clock.now += 0.5
    [trip] = guard.evaluate()
    assert trip.endpoint == "embed" and "go error ratio 0.50" in trip.reason
    clock.now += 0.5
    assert guard.evaluate() == []  # the window starts afresh after acting


def test_guard_trips_on_failing_parity(tmp_path: Path) -> None:
    guard, clock = guard_on_go(tmp_path)
    for _ in range(10):
        guard.observe_parity("embed", matched=False)
    guard.evaluate()
    clock.now += 0.5
    [trip] = guard.evaluate()
    assert "parity failing in 10/10" in trip.reason


def test_connection_refused_falls_back_in_the_clients_dialect_but_never_for_writes(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(go_url=f"http://127.0.0.1:{free_port()}")
    shim.cli("flags", "set", "embed", "go")
    for path, keys in [
        ("/ai/embed", {"embeddings", "dimensions", "model"}),
        ("/_go/v1/embed", {"vectors", "dimension", "model"}),
    ]:
        response = httpx.post(shim.url + path, json={"texts": ["fallback"]})
        assert response.status_code == 200
        assert response.headers["x-shim-fallback"] == "go->rust"
        assert response.headers["x-shim-backend"] == "rust"
        assert set(response.json()) == keys
    record = httpx.post(
        f"{shim.url}/v1/matrix/playbooks/record",
        json={"query": "q", "id": "w-001", "role": "CNC Operator", "score": 1.0},
    )
    assert record.status_code == 502
    assert record.json()["error"]["code"] == "backend_unreachable"
    assert "x-shim-fallback" not in record.headers
    wait_for_generation(shim, 1)


def test_retry_budget_bounds_fallbacks_to_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.6, burst=20)
    granted = 0
    for _ in range(1000):  # the backend fails every request
        budget.earn()
        granted += budget.spend()
    assert granted <= 0.6 * 1000 + 20


def test_retry_budget_rides_out_a_backend_failing_every_other_request() -> None:
    budget = RetryBudget(ratio=0.6, burst=20)
    for i in range(5000):
        budget.earn()
        if i % 2 == 0:
            assert budget.spend()
