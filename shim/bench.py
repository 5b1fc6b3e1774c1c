"""`shim bench`: the shim against Python's floor, the common recipe and direct, in one run.

Starts a stub backend and the reference backends, the shim, and the comparison proxies
(a raw-ASGI + aiohttp pass-through as "Python's floor", Starlette + plain httpx as "the
common recipe", nginx when installed), then drives each with wrk when installed (else a
built-in aiohttp load generator), alternating A B A B, and prints RPS, p50, p99, the
proxy's CPU per request, and ratios measured in the same run. Needs the repository's
`benchmarks/` folder (the comparison proxies live there, not in the package).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from shim.errors import ConfigError
from shim.settings import PROJECT_ROOT

BENCHMARKS = PROJECT_ROOT / "benchmarks"
EMBED_8 = json.dumps(
    {"texts": [f"forklift operator {i}" for i in range(8)], "model": "nomic-embed-text"}
)
SMALL = json.dumps({"sql": "select 1"})


@dataclass
class Result:
    scenario: str
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def tree(pid: int) -> list[int]:
    """A process and its children (uvicorn workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [pid, *(p for kid in kids for p in tree(kid))]


class Stack:
    """The processes of one bench run; stopped together."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="shim-bench-"))

    def start(
        self, command: list[str], *, env: dict[str, str] | None = None, ready: str
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=BENCHMARKS,
        )
        self.processes.append(process)
        wait_ready(ready, process)
        return process

    def uvicorn(self, module: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        return self.start(command, env=env, ready=f"127.0.0.1:{port}")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_ready(address: str, process: subprocess.Popen[bytes]) -> None:
    host, port = address.split(":")
    for _ in range(300):
        if process.poll() is not None:
            raise ConfigError(f"{process.args} exited during start-up", key="bench")
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ConfigError(f"{address} never opened", key="bench")


def run_wrk(url: str, body: str, seconds: float, connections: int, lua_dir: Path) -> dict:
    script = lua_dir / f"post-{zlib.crc32(body.encode())}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]

    def percentile(label: str) -> float:
        found = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        assert found is not None, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return float(found.group(1)) * scale

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": percentile("50"),
        "p99": percentile("99"),
        "errors": int(errors.group(1)) if errors else 0,
    }


def run_builtin(url: str, body: str, seconds: float, connections: int, _: Path) -> dict:
    """An aiohttp load generator, for machines without wrk (less precise, same shape)."""
    import aiohttp

    async def drive() -> dict:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds
        payload = body.encode()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:

            async def one() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    async with s.post(
                        url, data=payload, headers={"content-type": "application/json"}
                    ) as r:
                        await r.read()
                        errors += r.status >= 400
                    latencies.append(time.perf_counter() - started)

            began = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(connections)))
            elapsed = time.perf_counter() - began
        latencies.sort()

        def pick(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        return {
            "requests": len(latencies),
            "rps": len(latencies) / elapsed,
            "p50": pick(0.5),
            "p99": pick(0.99),
            "errors": errors,
        }

    return asyncio.run(drive())


def measure(
    scenario: str,
    target: str,
    url: str,
    body: str,
    pids: list[int],
    *,
    seconds: float,
    connections: int,
    loader,
    lua_dir: Path,
) -> Result:
    loader(url, body, min(1.0, seconds / 2), connections, lua_dir)  # warm-up
    before = cpu_seconds(pids)
    run = loader(url, body, seconds, connections, lua_dir)
    used = cpu_seconds(pids) - before
    cpu = used / run["requests"] * 1e6 if pids and run["requests"] else None
    return Result(
        scenario,
        target,
        round(run["rps"], 1),
        round(run["p50"], 3),
        round(run["p99"], 3),
        round(cpu, 1) if cpu is not None else None,
        run["errors"],
    )


def bench(
    *, seconds: float, connections: int, rounds: int, scenarios: list[str], progress=print
) -> list[Result]:
    """Run the scenarios; every target of a scenario is measured once per round, in turn."""
    if not (BENCHMARKS / "client_proxy.py").exists():
        raise ConfigError("shim bench needs the repository's benchmarks/ folder", key="bench")
    loader = run_wrk if shutil.which("wrk") else run_builtin
    progress(
        f"load generator: {'wrk' if loader is run_wrk else 'built-in (install wrk for precision)'}"
    )
    stack = Stack()
    python = [sys.executable, "-m", "shim"]
    try:
        stub_port, rust_port, go_port = free_port(), free_port(), free_port()
        stack.uvicorn("stub_backend", stub_port, {})
        stack.start(
            [*python, "reference", "rust", "--port", str(rust_port)], ready=f"127.0.0.1:{rust_port}"
        )
        stack.start(
            [*python, "reference", "go", "--port", str(go_port)], ready=f"127.0.0.1:{go_port}"
        )

        def shim(rust: str, go: str, **env: str) -> tuple[str, list[int]]:
            port, admin = free_port(), free_port()
            process = stack.start(
                [*python, "serve", "--port", str(port), "--admin-port", str(admin)],
                env={
                    "SHIM_RUST_URL": rust,
                    "SHIM_GO_URL": go,
                    "SHIM_ACCESS_LOG": "false",
                    "SHIM_STATE_DIR": str(stack.tmp / f"state-{port}"),
                    "SHIM_PARITY_GATE": "false",
                    **env,
                },
                ready=f"127.0.0.1:{port}",
            )
            time.sleep(0.5)
            return f"http://127.0.0.1:{port}", tree(process.pid)

        stub = f"http://127.0.0.1:{stub_port}"
        rust = f"http://127.0.0.1:{rust_port}"
        go = f"http://127.0.0.1:{go_port}"
        targets: dict[str, list[tuple[str, str, str, list[int]]]] = {}
        if "small" in scenarios:
            floor_port, recipe_port = free_port(), free_port()
            floor = stack.uvicorn("client_proxy", floor_port, {"UPSTREAM": stub, "KIND": "aiohttp"})
            recipe = stack.uvicorn("starlette_httpx_proxy", recipe_port, {"UPSTREAM": stub})
            shim_url, shim_pids = shim(stub, stub)
            targets["small"] = [
                ("direct", f"{stub}/query", SMALL, []),
                (
                    "floor (raw ASGI + aiohttp)",
                    f"http://127.0.0.1:{floor_port}/query",
                    SMALL,
                    [floor.pid],
                ),
                ("shim", f"{shim_url}/query", SMALL, shim_pids),
                ("starlette + httpx", f"http://127.0.0.1:{recipe_port}/query", SMALL, [recipe.pid]),
            ]
        if "embed" in scenarios or "shadow" in scenarios:
            shim_url, shim_pids = shim(rust, go)
            if "embed" in scenarios:
                targets["embed 8x768"] = [
                    ("direct", f"{rust}/ai/embed", EMBED_8, []),
                    ("shim same-dialect", f"{shim_url}/ai/embed", EMBED_8, shim_pids),
                    ("shim cross-dialect", f"{shim_url}/v1/embed", EMBED_8, shim_pids),
                ]
            if "shadow" in scenarios:
                shadow_url, shadow_pids = shim(rust, go)
                subprocess.run(
                    [*python, "flags", "set", "embed", "rust", "--shadow"],
                    env={
                        **os.environ,
                        "SHIM_STATE_DIR": str(stack.tmp / f"state-{shadow_url.rsplit(':', 1)[1]}"),
                    },
                    capture_output=True,
                    check=True,
                )
                time.sleep(0.5)
                targets["shadow"] = [
                    ("shadow off", f"{shim_url}/ai/embed", EMBED_8, shim_pids),
                    ("shadow on", f"{shadow_url}/ai/embed", EMBED_8, shadow_pids),
                ]
        results = []
        for round_number in range(rounds):
            for scenario, entries in targets.items():
                for target, url, body, pids in entries:
                    result = measure(
                        scenario,
                        target,
                        url,
                        body,
                        pids,
                        seconds=seconds,
                        connections=connections,
                        loader=loader,
                        lua_dir=stack.tmp,
                    )
                    results.append(result)
                    progress(
                        f"round {round_number + 1}/{rounds} {scenario:<12} {target:<28} "
                        f"{result.rps:>9.0f} rps  p99 {result.p99_ms:7.2f} ms"
                    )
        return results
    finally:
        stack.stop()


def summarise(results: list[Result]) -> tuple[list[dict[str, object]], list[str]]:
    """Per target: the median over rounds; then the ratios the targets are judged by."""
    rows: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        rows.setdefault((result.scenario, result.target), []).append(result)
    table = []
    for (scenario, target), runs in rows.items():
        cpus = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request is not None]
        table.append(
            {
                "scenario": scenario,
                "target": target,
                "rps": round(statistics.median(r.rps for r in runs), 1),
                "p50_ms": round(statistics.median(r.p50_ms for r in runs), 3),
                "p99_ms": round(statistics.median(r.p99_ms for r in runs), 3),
                "cpu_us_per_request": round(statistics.median(cpus), 1) if cpus else None,
                "errors": sum(r.errors for r in runs),
            }
        )
    by = {(row["scenario"], row["target"]): row for row in table}
    ratios = []

    def ratio(label: str, a: tuple[str, str], b: tuple[str, str], field: str = "rps") -> None:
        if a in by and b in by and by[b][field]:
            ratios.append(f"{label}: {by[a][field] / by[b][field]:.2f}")  # type: ignore[operator]

    ratio(
        "shim / floor RPS (target >= 0.8)",
        ("small", "shim"),
        ("small", "floor (raw ASGI + aiohttp)"),
    )
    ratio(
        "shim / starlette+httpx RPS (target >= 10)",
        ("small", "shim"),
        ("small", "starlette + httpx"),
    )
    ratio(
        "shim p99 / floor p99 (target <= 1.5)",
        ("small", "shim"),
        ("small", "floor (raw ASGI + aiohttp)"),
        "p99_ms",
    )
    ratio(
        "embed cross / same-dialect RPS (target >= 0.6)",
        ("embed 8x768", "shim cross-dialect"),
        ("embed 8x768", "shim same-dialect"),
    )
    ratio(
        "shadow on / off p50 (target <= 1.05)",
        ("shadow", "shadow on"),
        ("shadow", "shadow off"),
        "p50_ms",
    )
    return table, ratios


def render(table: list[dict[str, object]], ratios: list[str]) -> str:
    lines = [
        f"{'scenario':<12} {'target':<28} {'RPS':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU us/req':>10} {'errors':>6}"
    ]
    for row in table:
        cpu = row["cpu_us_per_request"]
        lines.append(
            f"{row['scenario']:<12} {row['target']:<28} {row['rps']:>9.0f} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
            f"{('-' if cpu is None else f'{cpu:.0f}'):>10} {row['errors']:>6}"
        )
    return "\n".join([*lines, "", *ratios])
