"""Measure the upstream client choice: one raw ASGI pass-through, three clients.

Run: .venv/bin/python benchmarks/client_choice.py   (needs `wrk`: apt-get install wrk)

Starts benchmarks/stub_backend.py, then for each client a one-worker uvicorn proxy
(benchmarks/client_proxy.py) in front of it, drives it with wrk at 32 connections, two
rounds alternating, and prints RPS and the proxy's CPU time per request.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from shim.bench import cpu_seconds, free_port

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
    backend_port = free_port()
    backend = uvicorn("stub_backend", backend_port, {})
    wait_port(backend_port)
    try:
        for round_number in range(2):
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
    finally:
        backend.terminate()


if __name__ == "__main__":
    main()
