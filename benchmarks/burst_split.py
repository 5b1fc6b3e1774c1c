"""How bursts of new keep-alive connections are split between two workers.

Run: .venv/bin/python benchmarks/burst_split.py [--bursts 8] [--json FILE]   (Linux: /proc)

Two layouts of the same app (`shim.app:create_app`) with two workers: uvicorn's own
`--workers 2`, where both workers accept from one shared listening socket, and `shim serve
--workers 2`, one SO_REUSEPORT socket per worker (shim/serving/supervisor.py). For each burst, 32
connections are opened at once, each sends one keep-alive `GET /_shim/healthz`, and the
connections each worker holds are counted from /proc; then all are closed. The README's
Workers section quotes a stored run (benchmarks/results/*-burst-split.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' server helpers, run from any directory

from tests.servers import Server, Shim, base_env, free_port  # noqa: E402
from tests.test_workers import connections_per_worker  # noqa: E402

CONNECTIONS = 32
REQUEST = b"GET /_shim/healthz HTTP/1.1\r\nHost: shim\r\n\r\n"


def burst(port: int, pids: set[int]) -> list[int]:
    """Open CONNECTIONS at once, one request on each, and count them per worker (by pid)."""
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    try:
        for sock in sockets:
            sock.sendall(REQUEST)
        for sock in sockets:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "healthz did not answer"
        counts = connections_per_worker(port, pids)
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.3)  # the workers see the closes before the next burst
    return [counts[pid] for pid in sorted(pids)]


def serving_workers(state_dir: Path, count: int) -> set[int]:
    """The workers' pids, from the status file each publishes once it serves."""
    deadline = time.monotonic() + 30
    while len(pids := {int(p.stem) for p in (state_dir / "workers").glob("*.json")}) < count:
        assert time.monotonic() < deadline, f"fewer than {count} workers serve"
        time.sleep(0.1)
    return pids


def shared_socket(tmp: Path, bursts: int) -> list[list[int]]:
    """uvicorn --workers 2: one listening socket, accepted from by whichever worker wakes."""
    port = free_port()
    env = base_env(SHIM_PORT=str(port), SHIM_ADMIN_PORT=str(free_port()))
    env["SHIM_STATE_DIR"] = str(tmp / "shared")
    command = [sys.executable, "-m", "uvicorn", "shim.app:create_app", "--factory"]
    command += ["--port", str(port), "--workers", "2", "--loop", "uvloop"]
    command += ["--http", "httptools", "--no-access-log", "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}/_shim/healthz"
    server = Server(command, ready_url=url, env=env, log=tmp / "shared.log", cwd=ROOT).start()
    try:
        pids = serving_workers(tmp / "shared", 2)
        return [burst(port, pids) for _ in range(bursts)]
    finally:
        server.stop()


def socket_per_worker(tmp: Path, bursts: int) -> list[list[int]]:
    """shim serve --workers 2: the kernel spreads new connections over the two sockets.
    The backends are never contacted (healthz is the shim's own), so none is started."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    shim = Shim(tmp / "own", rust_url=nowhere, go_url=nowhere, workers=2).start()
    try:
        pids = serving_workers(shim.state_dir, 2)
        return [burst(shim.port, pids) for _ in range(bursts)]
    finally:
        shim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the splits to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        (tmp / "own").mkdir()
        result = {
            "command": "python benchmarks/burst_split.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).date().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            "connections_per_burst": CONNECTIONS,
            "shared_socket": shared_socket(tmp, args.bursts),
            "socket_per_worker": socket_per_worker(tmp, args.bursts),
        }
    for layout in ("shared_socket", "socket_per_worker"):
        splits = ", ".join("/".join(map(str, split)) for split in result[layout])
        print(f"{layout:18s} {splits}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
