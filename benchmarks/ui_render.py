"""Server-side render time of the operator page with 8 endpoints and 10,000 audit entries.

In one process, no network: the admin app (shim/ops/admin.py with the page mounted) over a state
directory holding 10,000 audit records and 400 parity samples, requests sent through
Starlette's TestClient. Cases: the page when nothing changed (what a page polling every
second costs), after the audit trail grew by a line (its tail is read), after the file was
replaced (all 10,000 lines parsed again: the cold case), the live fragment the page polls, and
a deep page of one endpoint's audit trail.

    .venv/bin/python benchmarks/ui_render.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import orjson
from starlette.testclient import TestClient

from shim.cutover.file_store import AUDIT_FILE, FileBackend
from shim.cutover.flag_view import FlagView
from shim.cutover.flags import FlagStore
from shim.cutover.workers import WorkerRegistry
from shim.ops.admin import AdminContext, build_admin
from shim.parity.verdicts import ParityStore
from shim.route_config import load_routes
from shim.serving.upstream import Upstream
from shim.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def audit_line(i: int, endpoint: str) -> bytes:
    record = {
        "time": f"2026-12-03T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        "endpoint": endpoint,
        "before": {"serve": "rust", "shadow": False, "percent": None},
        "after": {"serve": "go", "shadow": True, "percent": i % 100},
        "actor": "cli:ops",
        "reason": f"step {i} of the cutover drill",
        "generation": i,
    }
    return orjson.dumps(record) + b"\n"


def timed(client: TestClient, path: str, rounds: int, before: object = None) -> list[float]:
    timings = []
    for _ in range(rounds):
        if callable(before):
            before()
        started = time.perf_counter()
        answer = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text[:300]
    return timings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    rounds = parser.parse_args().rounds
    state_dir = Path(tempfile.mkdtemp(prefix="shim-ui-render-"))
    routes = load_routes(ROOT / "config" / "routes.toml")
    names = list(routes.routes)[:8]  # the case: 8 endpoints (the table declares more)
    assert len(names) == 8
    audit = state_dir / AUDIT_FILE
    audit.write_bytes(b"".join(audit_line(i, names[i % 8]) for i in range(1, 10_001)))
    parity = ParityStore(state_dir)
    now = time.time()
    parity.append_many(
        [
            {"endpoint": "embed", "kind": "shadow", "ts": now - i, "metrics": {"min_cosine": 1.0}}
            for i in range(200)
        ]
        + [
            {
                "endpoint": "vectors_search",
                "kind": "shadow",
                "ts": now - i,
                "metrics": {"recall": 1},
            }
            for i in range(200)
        ]
    )
    settings = Settings(state_dir=state_dir, admin_token="t")  # type: ignore[call-arg]
    store = FlagStore(FileBackend(state_dir, routes), routes, {})
    flags = FlagView(store, poll_seconds=1)
    flags.refresh()
    context = AdminContext(
        settings, routes, store, flags, Upstream(settings), WorkerRegistry(state_dir), parity
    )
    grow = iter(range(10_001, 10_001 + 10 * rounds))

    def append() -> None:
        with audit.open("ab") as file:
            file.write(audit_line(next(grow), "embed"))

    def replace() -> None:
        copy = audit.with_name("audit.copy")
        copy.write_bytes(audit.read_bytes())
        copy.replace(audit)  # a new inode: the page reads all 10,000 lines again

    with TestClient(build_admin(context), base_url="http://127.0.0.1:4121") as client:
        cases = {
            "page, audit unchanged": timed(client, "/_shim/ui?endpoint=embed", rounds),
            "page, audit grew (reads the tail)": timed(
                client, "/_shim/ui?endpoint=embed", rounds, append
            ),
            "page, audit replaced (reads 10k lines)": timed(
                client, "/_shim/ui?endpoint=embed", rounds, replace
            ),
            "live fragment, audit unchanged": timed(
                client, "/_shim/ui/live?endpoint=embed", rounds
            ),
            "page, audit page 100 of one endpoint": timed(
                client, "/_shim/ui?audit=embed&offset=5000", rounds
            ),
        }
    print(f"8 endpoints, {10_000} audit entries, 400 parity samples; {rounds} rounds each")
    for name, values in cases.items():
        values.sort()
        p95 = values[int(0.95 * (len(values) - 1))]
        print(f"  {name:42} median {statistics.median(values):6.1f} ms  p95 {p95:6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
