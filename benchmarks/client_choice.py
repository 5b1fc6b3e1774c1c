"""Measure the upstream client choice: one raw ASGI pass-through, three clients.

Run: .venv/bin/pip install -e '.[bench]'   (httpx-aiohttp; and wrk: apt-get install wrk)
     .venv/bin/python -m benchmarks.client_choice [--rounds 2] [--json FILE]

Starts benchmarks/stub_backend.py, then for each client a one-worker uvicorn proxy
(benchmarks/client_proxy.py) in front of it, drives it with wrk at 32 connections, the
clients alternating round by round, and prints RPS and the proxy's CPU time per request;
`--json` also stores every round and the medians (the README's table quotes such a file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from benchmarks.processes import cpu_seconds, free_port

HERE = Path(__file__).resolve().parent
KINDS = ("aiohttp", "httpx-aiohttp", "httpx")


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def uvicorn(module: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port)]
    command += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    command += ["--log-level", "warning"]
    return subprocess.Popen(command, cwd=HERE, env={**os.environ, **env})


def wrk(port: int, seconds: int) -> str:
    command = ["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}/x"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every round and the medians here")
    args = parser.parse_args()
    backend_port = free_port()
    backend = uvicorn("stub_backend", backend_port, {})
    wait_port(backend_port)
    rounds: list[dict[str, object]] = []
    try:
        for round_number in range(args.rounds):
            for kind in KINDS:
                port = free_port()
                upstream = f"http://127.0.0.1:{backend_port}"
                proxy = uvicorn("client_proxy", port, {"UPSTREAM": upstream, "KIND": kind})
                wait_port(port)
                wrk(port, 2)  # warm-up
                before = cpu_seconds([proxy.pid])
                output = wrk(port, 6)
                used = cpu_seconds([proxy.pid]) - before
                proxy.terminate()
                proxy.wait()
                requests = int(re.search(r"(\d+) requests in", output).group(1))
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
                per_request = used / requests * 1e6
                print(f"round {round_number} {kind:14s} {rps:9.0f} rps {per_request:7.0f} us CPU")
                rounds.append(
                    {
                        "round": round_number,
                        "client": kind,
                        "rps": rps,
                        "cpu_us_per_request": round(per_request, 1),
                    }
                )
    finally:
        backend.terminate()
    medians = {
        kind: {
            key: median(r[key] for r in rounds if r["client"] == kind)
            for key in ("rps", "cpu_us_per_request")
        }
        for kind in KINDS
    }
    ratio = medians["httpx-aiohttp"]["rps"] / medians["aiohttp"]["rps"]
    print(f"httpx-aiohttp / aiohttp RPS (medians): {ratio:.2f}")
    if args.json:
        result = {
            "command": "python -m benchmarks.client_choice " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).date().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            "rounds": rounds,
            "medians": medians,
            "httpx_aiohttp_over_aiohttp_rps": round(ratio, 2),
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
