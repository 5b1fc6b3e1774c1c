"""Soak: many mixed requests through `shim serve`, watching RSS and open files.

Run: .venv/bin/python -m benchmarks.soak [--requests 200000] [--workers 2] [--concurrency 32]
(or `make soak`). Starts both reference backends and the shim on loopback ports, sends a
mix of same-dialect and cross-dialect embed, search, sql, storage GETs, 404s and bad JSON,
and prints every worker's RSS and file-descriptor count as it goes. Exits non-zero if a
request failed unexpectedly or RSS grew by more than 10% after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.processes import free_port

SHIM = [sys.executable, "-m", "shim"]
MIX = [
    ("POST", "/ai/embed", b'{"texts": ["forklift operator", "night shift"]}', 200),
    ("POST", "/v1/embed", b'{"texts": ["forklift operator"]}', 200),
    ("POST", "/vectors/hybrid", b'{"query": "CNC operator", "k": 5}', 200),
    ("POST", "/v1/matrix/retrieve", b'{"query": "welder", "top_k": 3}', 200),
    ("POST", "/query", b'{"sql": "select id, role from workers limit 5"}', 200),
    ("POST", "/v1/sql", b'{"query": "select count(*) from workers"}', 200),
    ("GET", "/storage/soak/object", b"", 200),
    ("GET", "/nowhere", b"", 404),
    ("POST", "/v1/embed", b'{"texts": [1, 2]}', 400),
]


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return pids or [parent]


def rss_and_fds(pid: int) -> tuple[int, int]:
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def wait_ready(url: str) -> None:
    import urllib.request

    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} never answered")


async def drive(base: str, total: int, concurrency: int, report: callable) -> int:
    failures = 0
    done = 0
    next_report = 20_000
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.put(f"{base}/storage/soak/object", data=os.urandom(64 * 1024)):
            pass

        async def one() -> None:
            nonlocal failures, done, next_report
            while done < total:
                done += 1
                method, path, body, expected = random.choice(MIX)
                async with session.request(method, base + path, data=body or None) as response:
                    await response.read()
                    if response.status != expected:
                        failures += 1
                if done >= next_report:
                    next_report += 20_000
                    report(done)

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shim-soak-"))
    rust_port, go_port, port, admin = (free_port() for _ in range(4))
    env = {
        **os.environ,
        "SHIM_STATE_DIR": str(tmp / "state"),
        "SHIM_ACCESS_LOG": "false",
        "SHIM_RUST_URL": f"http://127.0.0.1:{rust_port}",
        "SHIM_GO_URL": f"http://127.0.0.1:{go_port}",
    }
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [
        subprocess.Popen([*SHIM, "reference", "rust", "--port", str(rust_port)], **quiet),
        subprocess.Popen([*SHIM, "reference", "go", "--port", str(go_port)], **quiet),
    ]
    shim = subprocess.Popen(
        [
            *SHIM,
            "serve",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--workers",
            str(args.workers),
        ],
        env=env,
        **quiet,
    )
    processes.append(shim)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"http://127.0.0.1:{rust_port}/health")
        wait_ready(f"http://127.0.0.1:{go_port}/health")
        wait_ready(f"{base}/_shim/healthz")
        samples: list[tuple[int, int, int]] = []
        started = time.monotonic()

        def report(done: int) -> None:
            rss = fds = 0
            for pid in worker_pids(shim.pid):
                r, f = rss_and_fds(pid)
                rss, fds = rss + r, fds + f
            samples.append((done, rss, fds))
            rate = done / (time.monotonic() - started)
            print(
                f"{done:>8} requests  {rate:7.0f}/s  workers' RSS {rss / 1024:6.1f} MiB  "
                f"open files {fds}",
                flush=True,
            )

        failures = asyncio.run(drive(base, args.requests, args.concurrency, report))
        print(f"unexpected statuses: {failures}")
        if len(samples) >= 3:
            warm, last = samples[1], samples[-1]
            growth = (last[1] - warm[1]) / warm[1]
            print(
                f"RSS after warm-up {warm[1] / 1024:.1f} MiB -> {last[1] / 1024:.1f} MiB "
                f"({growth:+.1%}); open files {warm[2]} -> {last[2]}"
            )
            return 1 if failures or growth > 0.10 else 0
        return 1 if failures else 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    raise SystemExit(main())
