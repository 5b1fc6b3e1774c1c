"""One client's request never costs another an error; failures are rescued and counted.

Real servers on loopback: the reference backends, `shim serve`, and
tests/backends/dying_backend.py, a keep-alive backend that fails the way crashing ones do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flipping import wait_for_parity
from tests.servers import ROOT, SHIM, Server, Shim, base_env, free_port, own_backend

CHAT = {"messages": [{"role": "user", "content": "hello"}]}
EMBED = {"texts": ["forklift operator"]}


@pytest.fixture
def dying(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = Server(
        [sys.executable, str(ROOT / "tests" / "backends" / "dying_backend.py"), str(port)],
        ready_url=f"http://127.0.0.1:{port}/__stats",
        env=base_env(),
        log=tmp_path / "dying.log",
        cwd=ROOT,
    )
    yield server.start() and f"http://127.0.0.1:{port}"
    server.stop()


def upstream_errors(shim: Shim, backend: str) -> dict[str, float]:
    """shim_upstream_errors_total{backend=...} by kind, from the admin listener."""
    text = httpx.get(f"{shim.admin_url}/metrics").text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("shim_upstream_errors_total{") and f'backend="{backend}"' in line:
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            found[kind] = float(line.rsplit(" ", 1)[1])
    return found


def test_a_backend_that_answers_500_then_resets_fails_no_request_behind_it(
    start_shim: Callable[..., Shim], dying: str
) -> None:
    """The 500's connection is never pooled again, so the chats behind it (which may not be
    retried) each get a connection the backend still serves."""
    shim = start_shim(rust_url=dying)
    failed = []
    with httpx.Client(base_url=shim.url, timeout=10) as client:
        for _ in range(20):
            faulty = client.post(
                "/ai/embed", json=EMBED, headers={"X-Test-Fault": "error-then-reset"}
            )
            # The failing client itself is rescued: embed is idempotent, Go answers.
            assert faulty.status_code == 200, faulty.text
            assert faulty.headers["x-shim-fallback"] == "rust->go"
            for _ in range(3):
                chat = client.post("/ai/chat", json=CHAT)
                if chat.status_code != 200:
                    failed.append(chat.text)
    assert failed == []


@pytest.mark.parametrize("cap_mib", [16, 64])
def test_an_oversized_request_that_breaks_the_backend_costs_no_other_client_an_error(
    start_shim: Callable[..., Shim], cap_mib: int
) -> None:
    """The trial's reproduction: 20 MiB to a same-dialect embed made the reference Rust
    backend answer 500 and drop its connection, and the next chat got a 502. Under the
    default 16 MiB cap the shim refuses it (JSON 413, the backend never sees it); with the
    cap raised it reaches the backend, whose own 500 is passed on (a streamed body cannot
    be replayed elsewhere), and costs the chat behind it nothing."""
    shim = start_shim(SHIM_MAX_JSON_BYTES=str(cap_mib * 1024 * 1024))
    big = b'{"texts": ["' + b"word " * (4 * 1024 * 1024) + b'"]}'
    failed = []
    with httpx.Client(base_url=shim.url, timeout=60) as client:
        for _ in range(20):
            faulty = client.post(
                "/ai/embed", content=big, headers={"Content-Type": "application/json"}
            )
            if cap_mib == 16:
                assert faulty.status_code == 413
                assert faulty.json()["error"]["code"] == "payload_too_large"
            else:
                assert faulty.status_code == 500
                assert faulty.headers["x-shim-backend"] == "rust"
            chat = httpx.post(f"{shim.url}/ai/chat", json=CHAT, timeout=10)
            if chat.status_code != 200:
                failed.append(chat.text)
    assert failed == []


def test_a_pooled_connection_the_backend_dropped_is_retried_once_on_a_new_one(
    start_shim: Callable[..., Shim], dying: str
) -> None:
    """Idempotent requests are re-sent when a reused connection fails before any byte of
    the answer; a chat is not (the backend may have acted on it), and gets a JSON 502."""
    shim = start_shim(go_url=dying)
    search = {"query": "forklift", "top_k": 1}
    with httpx.Client(base_url=shim.url, timeout=10) as client:
        for _ in range(5):
            primed = client.post(
                "/v1/matrix/search", json=search, headers={"X-Test-Fault": "reset-next"}
            )
            assert primed.status_code == 200
            retried = client.post("/v1/matrix/search", json=search)
            assert retried.status_code == 200, retried.text
            assert "x-shim-fallback" not in retried.headers  # a new connection, same backend
        client.post("/v1/matrix/search", json=search, headers={"X-Test-Fault": "reset-next"})
        record = {"query": "forklift", "id": "w1", "role": "Forklift Operator", "score": 1}
        write = client.post("/v1/matrix/playbooks/record", json=record)
    assert write.status_code == 502
    assert write.json()["error"]["code"] == "backend_unreachable"
    assert httpx.get(f"{dying}/__stats").json()["resets"] == 6
    time.sleep(1.5)  # metrics are flushed once a second
    text = httpx.get(f"{shim.admin_url}/metrics").text
    assert 'shim_upstream_retries_total{backend="go"} 5.0' in text


def test_go_answering_500_to_every_request_is_rescued_and_counted_until_the_guard_acts(
    start_shim: Callable[..., Shim], dying: str
) -> None:
    """Fallback on any 5xx: clients get Rust's answers; every Go failure is counted."""
    shim = start_shim(go_url=dying)
    shim.cli("flags", "set", "embed", "go")
    results: list[tuple[int, str, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=shim.url, timeout=10) as http:
            while not stop.is_set():
                answer = http.post("/ai/embed", json=EMBED, headers={"X-Test-Fault": "error"})
                results.append(
                    (
                        answer.status_code,
                        answer.headers["x-shim-backend"],
                        answer.headers.get("x-shim-fallback"),
                    )
                )

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        flags = httpx.get(f"{shim.admin_url}/_shim/flags").json()
        if flags["endpoints"]["embed"]["serve"] == "rust":
            assert flags["endpoints"]["embed"]["actor"] == "guard"
            break
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    rescued = sum(1 for _, _, fallback in results if fallback == "go->rust")
    errors = sum(1 for status, _, _ in results if status >= 500)
    assert rescued > 0
    assert errors <= 0.05 * len(results), (errors, len(results))
    assert httpx.get(f"{shim.admin_url}/_shim/flags").json()["endpoints"]["embed"]["serve"] == (
        "rust"
    )
    time.sleep(1.5)
    counted = upstream_errors(shim, "go")
    go_failures = rescued + sum(1 for s, b, _ in results if s >= 500 and b == "go")
    assert counted.get("status_5xx") == go_failures, (counted, go_failures)


def test_a_json_body_over_the_cap_is_refused_before_the_backend_sees_it(
    start_shim: Callable[..., Shim], tmp_path: Path
) -> None:
    backend, echo = own_backend(tmp_path)
    try:
        shim = start_shim(rust_url=echo, go_url=echo, SHIM_MAX_JSON_BYTES=str(1024 * 1024))
        big = b'{"messages": "' + b"x" * (3 * 1024 * 1024) + b'"}'
        with httpx.Client(base_url=shim.url, timeout=10) as client:
            refused = client.post(
                "/ai/chat", content=big, headers={"X-Request-ID": "too-big-declared"}
            )
            assert refused.status_code == 413
            assert refused.json()["error"]["code"] == "payload_too_large"

            def chunks() -> Iterator[bytes]:
                for start in range(0, len(big), 64 * 1024):
                    yield big[start : start + 64 * 1024]

            streamed = client.post(
                "/ai/chat", content=chunks(), headers={"X-Request-ID": "too-big-streamed"}
            )
            assert streamed.status_code == 413
            assert streamed.json()["error"]["code"] == "payload_too_large"
            small = client.post("/ai/chat", json=CHAT)
            assert small.status_code == 200
            # storage is bytes, streamed and never capped
            stored = client.put("/storage/big.bin", content=big)
            assert stored.status_code == 200
            assert stored.json()["body_length"] == len(big)
        received = [r["request_id"] for r in httpx.get(f"{echo}/__received").json()]
        assert "too-big-declared" not in received
    finally:
        backend.stop()


def audit(shim: Shim) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (shim.state_dir / "audit.jsonl").read_text().splitlines()]


def test_garbage_over_every_state_file_costs_no_request_and_one_write_repairs_it(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(workers=2)
    shim.cli("flags", "set", "embed", "go", "--shadow")
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=shim.url, timeout=10) as client:
            while not stop.is_set():
                answer = client.post("/ai/embed", json=EMBED)
                statuses.append((answer.status_code, answer.headers["x-shim-backend"]))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.3)
        files = [p for p in shim.state_dir.rglob("*") if p.is_file()]
        assert len(files) >= 5  # flags, last good copy, audit, workers, parity, metrics
        for path in files:
            path.write_bytes(b"\x00garbage\xff" * 64)
        time.sleep(1.0)
        table = shim.cli("flags")  # read-only: says what is wrong and how to repair it
        assert str(shim.state_dir / "flags.json") in table.stderr
        assert "shim flags set ENDPOINT" in table.stderr
        assert "embed" in table.stdout and "go" in table.stdout  # what the workers serve
        check = shim.cli("check", check=False)
        assert check.returncode == 1 and "flags.json" in check.stderr
        history = shim.cli("flags", "--history")
        assert "unreadable line(s)" in history.stderr
        repaired = shim.cli("flags", "set", "embed", "rust", "--no-shadow", "--reason", "repair")
        assert "kept aside as" in repaired.stderr and "started from the workers" in repaired.stderr
        assert "applied by 2/2 workers" in repaired.stdout
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert {status for status, _ in statuses} == {200}
    assert statuses[-1][1] == "rust"
    assert len(list(shim.state_dir.glob("flags.json.corrupt-*"))) == 1
    [record] = [r for r in audit_records(shim) if r.get("reason") == "repair"]
    assert record["recovered"]["from"] == "workers"
    assert record["before"]["serve"] == "go"  # the last good state, not the defaults


def audit_records(shim: Shim) -> list[dict[str, Any]]:
    """The readable audit records (the file may hold garbage lines)."""
    records = []
    for line in (shim.state_dir / "audit.jsonl").read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def test_force_dry_run_says_what_a_forced_change_would_do_and_exits_0(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(SHIM_PARITY_GATE="true")
    dry = shim.cli("flags", "set", "embed", "go", "--force", "--dry-run", check=False)
    assert dry.returncode == 0, dry.stderr
    assert "gate: refuses" in dry.stdout and "--force: the change would go through" in dry.stdout
    assert "nothing changed" in dry.stdout
    assert not (shim.state_dir / "audit.jsonl").exists()


def test_the_parity_gate_is_the_deployments_not_the_operators_shell(
    start_shim: Callable[..., Shim], tmp_path: Path
) -> None:
    shim = start_shim(SHIM_PARITY_GATE="true")
    lax = {**shim.env, "SHIM_PARITY_GATE": "false"}
    refused = subprocess.run(
        [*SHIM, "flags", "set", "embed", "go"], env=lax, cwd=ROOT, capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert "following the deployment" in refused.stderr
    assert "needs a recent PASS parity verdict" in refused.stderr
    shim.cli("flags", "set", "embed", "go", "--force", "--reason", "drill")
    shim.cli("flags", "set", "embed", "rust", "--shadow")
    for i in range(20):
        assert httpx.post(f"{shim.url}/ai/embed", json={"texts": [f"g{i}"]}).status_code == 200
    assert wait_for_parity(shim, "embed", samples=20)["verdict"] == "PASS"
    shim.cli("flags", "set", "embed", "go", "--shadow", "--reason", "evidence")
    shim.stop()
    ungated = start_shim(SHIM_PARITY_GATE="false")
    ungated.cli("flags", "set", "sql", "go", "--reason", "rehearsal")
    decisions = {r["reason"]: r.get("gate") for r in audit(shim) + audit(ungated)}
    assert decisions["drill"]["decision"] == "forced"
    assert decisions["drill"]["verdict"] == "INCONCLUSIVE"
    assert decisions["evidence"] == {"decision": "passed", "verdict": "PASS", "samples": 20}
    assert decisions["rehearsal"]["decision"] == "off"
    assert "parity_gate=false" in decisions["rehearsal"]["by"]
    assert decisions[None] is None  # towards Rust: no gate decision to record
