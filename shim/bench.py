"""`shim bench`: the shim against direct, nginx, Python's floor and the common recipe, in one run.

Starts a stub backend (nginx when installed, else a tiny uvicorn app), the reference
backends, the shim, and the comparison proxies -- nginx as a reverse proxy when installed,
a raw-ASGI + aiohttp pass-through that forwards headers and body as "Python's floor"
(`benchmarks/floor_proxy.py`), and Starlette + plain httpx as "the common recipe" -- then
drives each with wrk when installed (else a built-in aiohttp load generator), every target
once per round, A B A B, and prints RPS, latency percentiles, the proxy's CPU per request
and the ratios the targets are judged by. Everything is measured in the same run on the
same machine; only ratios are compared. Needs the repository's `benchmarks/` folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from shim.errors import ConfigError
from shim.settings import PROJECT_ROOT, Settings

BENCHMARKS = PROJECT_ROOT / "benchmarks"
BURSTS = ("burst", "overload")  # N requests at once, not a timed run
SCENARIOS = ("small", "embed", "storage", "shadow", "jq", *BURSTS)
PERCENTILES = (50, 75, 90, 99)
EMBED_BATCHES = (1, 64, 256)  # besides 8, the batch sizes of the embed series (--embed-batches)


def embed_body(texts: int) -> str:
    """An embed request of `texts` texts (768 dimensions each in the answer)."""
    return json.dumps(
        {"texts": [f"forklift operator {i}" for i in range(texts)], "model": "nomic-embed-text"}
    )


EMBED_8 = embed_body(8)
SMALL = json.dumps({"sql": "select 1"})
STUB_BODY = '{"ok":true,"items":[1,2,3]}'
STORAGE_BYTES = 64 * 1024 * 1024
STORAGE_CONNECTIONS = 4
SLOW_MS = 500  # the overload scenario's backend: every answer takes this long
CEILING: int = Settings.model_fields["max_connections_per_backend"].default  # the shim's
FLOOR = "floor (raw ASGI + aiohttp)"
RECIPE = "starlette + httpx"


@dataclass
class Target:
    """One thing to load: a URL, what to send, and whose CPU and memory to watch."""

    name: str
    url: str
    body: str | None = None  # None: GET
    pids: list[int] = field(default_factory=list)
    connections: int | None = None  # None: the run's --connections
    rate: float | None = None  # requests per second (paced), None: as fast as it goes
    burst: int | None = None  # this many requests at once instead of a timed run
    peak_url: str | None = None  # a slow backend's count of requests it held at once


@dataclass
class Result:
    scenario: str
    target: str
    rps: float
    latency_ms: dict[str, float]  # percentile -> milliseconds
    cpu_us_per_request: float | None
    errors: int
    mib_per_s: float
    rss_growth_mib: float | None = None
    burst: dict[str, Any] | None = None  # a burst's answered / shed / other / wall

    @property
    def p50_ms(self) -> float:
        return self.latency_ms["50"]

    @property
    def p99_ms(self) -> float:
        return self.latency_ms["99"]


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


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(found.group(1)) if found else 0
    return total / 1024


def tree(pid: int) -> list[int]:
    """A process and its children (uvicorn workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [pid, *(p for kid in kids for p in tree(kid))]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


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

    def uvicorn(
        self, module: str, port: int, env: dict[str, str], *, extra: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
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
            "--no-server-header",
            "--log-level",
            "warning",
            *(extra or []),
        ]
        return self.start(command, env=env, ready=f"127.0.0.1:{port}")

    def nginx(self, stub_port: int, proxy_port: int | None) -> subprocess.Popen[bytes]:
        """nginx as the stub backend (a fixed answer), and as a reverse proxy in front of it."""
        stub = (
            f" upstream stub {{ server 127.0.0.1:{stub_port}; keepalive 64; }}\n"
            f" server {{ listen 127.0.0.1:{stub_port} backlog=4096; location / {{ "
            f"default_type application/json; return 200 '{STUB_BODY}'; }} }}\n"
        )
        proxy = _nginx_proxy(proxy_port, "stub") if proxy_port else ""
        return self._nginx("nginx", stub + proxy, ready=stub_port)

    def nginx_proxies(
        self, upstream_port: int, proxies: dict[int, int | None]
    ) -> subprocess.Popen[bytes]:
        """nginx as a reverse proxy to 127.0.0.1:`upstream_port` on each port of `proxies`,
        with at most that many connections to it (`max_conns`; None: unbounded)."""
        blocks = ""
        for port, bound in proxies.items():
            limit = f" max_conns={bound}" if bound else ""
            blocks += (
                f" upstream u{port} {{ server 127.0.0.1:{upstream_port}{limit}; keepalive 64; }}\n"
            )
            blocks += _nginx_proxy(port, f"u{port}")
        return self._nginx(f"nginx-{upstream_port}", blocks, ready=next(iter(proxies)))

    def _nginx(self, name: str, servers: str, *, ready: int) -> subprocess.Popen[bytes]:
        # A backlog and connection budget for bursts of thousands: with nginx's defaults (511,
        # 4,096) a burst of 2,000 through it saw resets and SYNs retried a second later.
        temp = self.tmp / name
        temp.mkdir(exist_ok=True)
        config = temp / "nginx.conf"
        config.write_text(
            f"worker_processes 1; daemon off; pid {temp}/nginx.pid; error_log {temp}/error.log;\n"
            "worker_rlimit_nofile 20000; events { worker_connections 16384; }\n"
            "http {\n access_log off;\n"
            f" client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;\n"
            f" fastcgi_temp_path {temp}/fcgi; uwsgi_temp_path {temp}/uwsgi;\n"
            f" scgi_temp_path {temp}/scgi;\n{servers}}}\n"
        )
        binary = nginx_binary()
        assert binary is not None
        return self.start([binary, "-c", str(config), "-p", str(temp)], ready=f"127.0.0.1:{ready}")

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


def _nginx_proxy(port: int, upstream: str) -> str:
    return (
        f" server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ proxy_pass "
        f'http://{upstream}; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}\n'
    )


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


# --- load generators: each returns requests, rps, latency percentiles (ms), errors, bytes


def run_wrk(target: Target, seconds: float, connections: int, scratch: Path) -> dict:
    # --timeout: a 256-text embed answer takes longer than wrk's default 2 s under load
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    command += ["--timeout", "10s"]
    if target.body is not None:
        script = scratch / f"post-{zlib.crc32(target.body.encode())}.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(target.body)}\n"
        )
        command += ["-s", str(script)]
    out = subprocess.run([*command, target.url], capture_output=True, text=True, check=True).stdout

    def number(pattern: str) -> re.Match[str]:
        found = re.search(pattern, out)
        if found is None:
            raise ConfigError(f"cannot read wrk's output:\n{out}", key="bench")
        return found

    def milliseconds(percentile: int) -> float:
        found = number(rf"\s{percentile}%\s+([\d.]+)(us|ms|s)")
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]

    transfer = number(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)")
    scale = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[transfer.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "requests": int(number(r"(\d+) requests in").group(1)),
        "rps": float(number(r"Requests/sec:\s+([\d.]+)").group(1)),
        "latency": {str(p): milliseconds(p) for p in PERCENTILES},
        "errors": (int(errors.group(1)) if errors else 0)
        + (sum(int(n) for n in socket_errors.groups()) if socket_errors else 0),
        "bytes_per_s": float(transfer.group(1)) * scale,
    }


def run_builtin(target: Target, seconds: float, connections: int, _: Path) -> dict:
    """An aiohttp load generator: closed loop (each connection sends when answered), or paced
    at `target.rate` with latency counted from each request's scheduled time."""
    import aiohttp

    async def drive() -> dict:
        latencies: list[float] = []
        errors = received = 0
        payload = target.body.encode() if target.body is not None else None
        method = "GET" if payload is None else "POST"
        headers = {"content-type": "application/json"} if payload is not None else {}
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

            async def one(scheduled: float) -> None:
                nonlocal errors, received
                try:
                    async with session.request(
                        method, target.url, data=payload, headers=headers
                    ) as response:
                        async for chunk in response.content.iter_any():
                            received += len(chunk)
                        errors += response.status >= 400
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - scheduled)

            began = time.perf_counter()
            deadline = began + seconds
            if target.rate is None:

                async def loop() -> None:
                    while time.perf_counter() < deadline:
                        await one(time.perf_counter())

                await asyncio.gather(*(loop() for _ in range(connections)))
            else:
                pending: set[asyncio.Task[None]] = set()
                sent = 0
                while (now := time.perf_counter()) < deadline:
                    scheduled = began + sent / target.rate
                    if scheduled > now:
                        await asyncio.sleep(scheduled - now)
                        continue
                    task = asyncio.create_task(one(scheduled))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                await asyncio.gather(*pending)
            elapsed = time.perf_counter() - began
        latencies.sort()

        def pick(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        return {
            "requests": len(latencies),
            "rps": len(latencies) / elapsed,
            "latency": {str(p): pick(p / 100) for p in PERCENTILES},
            "errors": errors,
            "bytes_per_s": received / elapsed,
        }

    return asyncio.run(drive())


Loader = Callable[[Target, float, int, Path], dict]


@dataclass
class Burst:
    """What a burst of requests sent at once got back."""

    sent: int
    answered: int  # 2xx
    shed: int  # 503 `overloaded`, in the shim's JSON shape
    other: dict[str, int]  # anything else, by status (or "connect", "reset", "timeout")
    latency_ms: dict[str, float]  # percentiles of every answer, from its send to its end
    wall_s: float  # first send to last answer
    retry_after: int  # shed answers that carried Retry-After
    shed_ms: dict[str, float]  # percentiles of the shed answers alone


def burst(
    url: str,
    count: int,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    spread_s: float = 0.0,
    timeout_s: float = 30.0,
) -> Burst:
    """`count` requests on `count` connections: every connection opened first, then every
    request written at once (or evenly over `spread_s` seconds), then every answer read.

    Raw asyncio streams, so the load generator costs less per request than the proxies it
    measures (an aiohttp client costs more than the shim).
    """
    return asyncio.run(
        burst_async(url, count, body=body, headers=headers, spread_s=spread_s, timeout_s=timeout_s)
    )


async def burst_async(
    url: str,
    count: int,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    spread_s: float = 0.0,
    timeout_s: float = 30.0,
) -> Burst:
    """`burst` in a running loop (a test runs two callers' bursts side by side)."""
    from yarl import URL

    target = URL(url)
    host, port = target.host or "127.0.0.1", target.port or 80
    payload = (body or "").encode()
    head = f"{'GET' if body is None else 'POST'} {target.raw_path_qs} HTTP/1.1\r\n"
    head += f"Host: {host}:{port}\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    request = head.encode() + b"\r\n" + payload
    outcomes: dict[str, int] = {}
    latencies: list[float] = []
    shed_latencies: list[float] = []
    retry_after = 0
    first_sent = last_done = 0.0
    start = asyncio.Event()
    unopened = count

    def opened() -> None:
        nonlocal unopened
        unopened -= 1
        if not unopened:
            start.set()

    def outcome(name: str) -> None:
        outcomes[name] = outcomes.get(name, 0) + 1

    async def one(index: int) -> None:
        nonlocal retry_after, first_sent, last_done
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            outcome("connect")
            return
        finally:
            opened()
        try:
            await start.wait()
            if spread_s:
                await asyncio.sleep(spread_s * index / count)
            sent = time.perf_counter()
            first_sent = min(first_sent or sent, sent)
            writer.write(request)
            async with asyncio.timeout(timeout_s):
                status_line = await reader.readline()
                answer_headers = (await reader.readuntil(b"\r\n\r\n")).lower()
                length = re.search(rb"content-length: *(\d+)", answer_headers)
                content = await reader.readexactly(int(length.group(1))) if length else b""
            done = time.perf_counter()
            latencies.append(done - sent)
            last_done = max(last_done, done)
            status = int(status_line.split()[1])
            if 200 <= status < 300:
                outcome("answered")
            elif status == 503 and b'"overloaded"' in content:
                outcome("shed")
                shed_latencies.append(done - sent)
                retry_after += b"retry-after:" in answer_headers
            else:
                outcome(str(status))
        except TimeoutError:
            outcome("timeout")
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            outcome("reset")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()  # closed before the loop is: no socket left behind

    await asyncio.gather(*(one(i) for i in range(count)))
    return Burst(
        sent=count,
        answered=outcomes.pop("answered", 0),
        shed=outcomes.pop("shed", 0),
        other=outcomes,
        latency_ms=_percentiles(latencies),
        wall_s=round(last_done - first_sent, 3) if last_done else 0.0,
        retry_after=retry_after,
        shed_ms=_percentiles(shed_latencies),
    )


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    if not ordered:
        return {}
    return {
        str(p): round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 1)
        for p in PERCENTILES
    }


class RssWatch:
    """The highest resident memory of some processes while a measurement runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = rss_mib(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pids))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    scenario: str,
    target: Target,
    *,
    seconds: float,
    connections: int,
    loader: Loader,
    scratch: Path,
    baseline_rss: dict[str, float],
) -> Result:
    if target.burst:
        return measure_burst(scenario, target)
    connections = target.connections or connections
    if target.rate is not None:
        loader = run_builtin  # wrk cannot pace; the built-in generator can
    if target.pids:  # the process's memory before anything of this target ran
        baseline_rss.setdefault(f"{scenario}/{target.name}", rss_mib(target.pids))
    loader(target, min(1.0, seconds / 2), connections, scratch)  # warm-up
    before = cpu_seconds(target.pids)
    with RssWatch(target.pids) as memory:
        run = loader(target, seconds, connections, scratch)
    used = cpu_seconds(target.pids) - before
    cpu = used / run["requests"] * 1e6 if target.pids and run["requests"] else None
    growth = None
    if target.pids:  # the peak against memory before the first warm-up, not just this run
        growth = round(max(memory.peak - baseline_rss[f"{scenario}/{target.name}"], 0.0), 1)
    return Result(
        scenario,
        target.name,
        round(run["rps"], 1),
        {k: round(v, 3) for k, v in run["latency"].items()},
        round(cpu, 1) if cpu is not None else None,
        run["errors"],
        round(run["bytes_per_s"] / 1024**2, 1),
        growth,
    )


def measure_burst(scenario: str, target: Target) -> Result:
    """One burst of `target.burst` requests at once: answered, shed, latency, CPU, memory."""
    assert target.burst
    import httpx

    if target.peak_url:
        httpx.delete(target.peak_url).raise_for_status()
    before = cpu_seconds(target.pids)
    memory_before = rss_mib(target.pids)
    with RssWatch(target.pids) as memory:
        run = burst(target.url, target.burst, body=target.body)
    used = cpu_seconds(target.pids) - before
    details: dict[str, Any] = {
        "sent": run.sent,
        "answered": run.answered,
        "shed": run.shed,
        "other": run.other,
        "wall_s": run.wall_s,
        "shed_ms": run.shed_ms,
        "retry_after": run.retry_after,
    }
    if target.peak_url:
        details["backend_peak"] = httpx.get(target.peak_url).json()["peak"]
    return Result(
        scenario,
        target.name,
        round(run.answered / run.wall_s, 1) if run.wall_s else 0.0,
        run.latency_ms or {str(p): 0.0 for p in PERCENTILES},
        round(used / run.sent * 1e6, 1) if target.pids else None,
        sum(run.other.values()),
        0.0,
        round(max(memory.peak - memory_before, 0.0), 1) if target.pids else None,
        details,
    )


class Bench:
    """Starts what the chosen scenarios need and knows their targets."""

    def __init__(
        self,
        stack: Stack,
        connections: int,
        shadow_rate: float,
        embed_batches: tuple[int, ...] = EMBED_BATCHES,
        *,
        burst_size: int = 2000,
        overload_size: int = 4000,
    ) -> None:
        self.stack = stack
        self.burst_size = burst_size
        self.overload_size = overload_size
        self.connections = connections
        self.shadow_rate = shadow_rate
        self.embed_batches = embed_batches
        self.python = [sys.executable, "-m", "shim"]
        self._reference: dict[str, str] = {}

    def reference(self, backend: str) -> str:
        if backend not in self._reference:
            port = free_port()
            self.stack.start(
                [
                    *self.python,
                    "reference",
                    backend,
                    "--port",
                    str(port),
                    "--storage-dir",
                    str(self.stack.tmp / f"storage-{backend}"),
                ],
                ready=f"127.0.0.1:{port}",
            )
            self._reference[backend] = f"http://127.0.0.1:{port}"
        return self._reference[backend]

    def shim(self, rust: str, go: str, workers: int = 1) -> tuple[str, str, list[int]]:
        """A `shim serve`: its proxy URL, state directory and process ids (workers too)."""
        port, admin = free_port(), free_port()
        state = self.stack.tmp / f"state-{port}"
        process = self.stack.start(
            [
                *self.python,
                "serve",
                "--port",
                str(port),
                "--admin-port",
                str(admin),
                "--workers",
                str(workers),
            ],
            env={
                "SHIM_RUST_URL": rust,
                "SHIM_GO_URL": go,
                "SHIM_ACCESS_LOG": "false",
                "SHIM_STATE_DIR": str(state),
                "SHIM_PARITY_GATE": "false",
            },
            ready=f"127.0.0.1:{port}",
        )
        for _ in range(200):  # every worker publishes its status once it serves
            if len(list((state / "workers").glob("*.json"))) >= workers:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        return f"http://127.0.0.1:{port}", str(state), tree(process.pid)

    def fast_stub(self) -> tuple[str, str | None, list[int]]:
        """The stub backend (nginx when installed) and nginx as a reverse proxy in front of
        it: the stub's URL, nginx's URL (None without nginx) and nginx's process ids."""
        stub_port = free_port()
        if nginx_binary() is None:
            self.stack.uvicorn("stub_backend", stub_port, {})
            return f"http://127.0.0.1:{stub_port}", None, []
        nginx_port = free_port()
        process = self.stack.nginx(stub_port, nginx_port)
        return f"http://127.0.0.1:{stub_port}", f"http://127.0.0.1:{nginx_port}", tree(process.pid)

    def small(self) -> list[Target]:
        stub, nginx, nginx_pids = self.fast_stub()
        floor_port, recipe_port = free_port(), free_port()
        floor = self.stack.uvicorn("floor_proxy", floor_port, {"UPSTREAM": stub})
        recipe = self.stack.uvicorn("starlette_httpx_proxy", recipe_port, {"UPSTREAM": stub})
        shim_url, _, shim_pids = self.shim(stub, stub)
        two_url, _, two_pids = self.shim(stub, stub, workers=2)
        targets = [Target("direct", f"{stub}/query", SMALL)]
        if nginx:
            targets.append(Target("nginx", f"{nginx}/query", SMALL, nginx_pids))
        targets += [
            Target(FLOOR, f"http://127.0.0.1:{floor_port}/query", SMALL, [floor.pid]),
            Target("shim", f"{shim_url}/query", SMALL, shim_pids),
            Target("shim, 2 workers", f"{two_url}/query", SMALL, two_pids),
            Target(RECIPE, f"http://127.0.0.1:{recipe_port}/query", SMALL, [recipe.pid]),
        ]
        return targets

    def embed(self) -> list[Target]:
        """Three directions, 8 texts x 768 and then the batch series: served by Go, the Go face
        passes through (same-dialect) and the Rust face is rewritten (renamed, every vector
        normalised); served by Rust, the Go face is only renamed (rename-only, its numbers
        spliced as they came), against the Rust face passing through."""
        rust, go = self.reference("rust"), self.reference("go")
        to_go, state, pids = self.shim(rust, go)
        self.flag(state, "embed", "go")
        to_rust, _, rust_pids = self.shim(rust, go)  # embed's default backend is rust
        targets = [
            Target("direct", f"{go}/v1/embed", EMBED_8),
            Target("shim same-dialect", f"{to_go}/v1/embed", EMBED_8, pids),
            Target("shim cross-dialect", f"{to_go}/ai/embed", EMBED_8, pids),
            Target("shim same-dialect (rust)", f"{to_rust}/ai/embed", EMBED_8, rust_pids),
            Target("shim rename-only", f"{to_rust}/v1/embed", EMBED_8, rust_pids),
        ]
        for texts in self.embed_batches:
            body = embed_body(texts)
            targets += [
                Target(f"{texts}x768 same-dialect", f"{to_go}/v1/embed", body, pids),
                Target(f"{texts}x768 normalising", f"{to_go}/ai/embed", body, pids),
                Target(f"{texts}x768 rename-only", f"{to_rust}/v1/embed", body, rust_pids),
            ]
        return targets

    def burst(self) -> list[Target]:
        """`burst_size` requests at once against the fast stub: nginx as a reverse proxy, the
        shim with 1 and with 2 workers (shim/admission.py queues what the limit cannot take)."""
        stub, nginx, nginx_pids = self.fast_stub()
        one_url, _, one_pids = self.shim(stub, stub)
        two_url, _, two_pids = self.shim(stub, stub, workers=2)
        n = self.burst_size
        targets = [Target("direct", f"{stub}/ai/embed", SMALL, burst=n)]
        if nginx:
            targets.append(Target("nginx", f"{nginx}/ai/embed", SMALL, nginx_pids, burst=n))
        targets += [
            Target("shim", f"{one_url}/ai/embed", SMALL, one_pids, burst=n),
            Target("shim, 2 workers", f"{two_url}/ai/embed", SMALL, two_pids, burst=n),
        ]
        return targets

    def overload(self) -> list[Target]:
        """`overload_size` connections at once to one shim worker in front of a backend that
        takes SLOW_MS per answer, beside nginx in front of it unbounded, and bounded like the
        shim (`max_conns`; open-source nginx has no queue, so the rest get a 502 at once)."""
        port = free_port()
        slow = f"http://127.0.0.1:{port}"
        self.stack.uvicorn(
            "slow_backend",
            port,
            {"DELAY_MS": str(SLOW_MS)},
            # no stale keep-alive connection between rounds; every connection nginx opens
            extra=["--timeout-keep-alive", "60", "--backlog", "8192"],
        )
        shim_url, _, shim_pids = self.shim(slow, slow)
        peak = f"{slow}/__peak"
        n = self.overload_size
        targets = [Target("shim", f"{shim_url}/ai/embed", SMALL, shim_pids, burst=n, peak_url=peak)]
        if nginx_binary():
            ceiling = CEILING
            ports = {
                "nginx": (free_port(), None),
                f"nginx max_conns={ceiling}": (free_port(), ceiling),
            }
            process = self.stack.nginx_proxies(port, {p: bound for p, bound in ports.values()})
            pids = tree(process.pid)
            for name, (proxy_port, _) in ports.items():
                url = f"http://127.0.0.1:{proxy_port}/ai/embed"
                targets.append(Target(name, url, SMALL, pids, burst=n, peak_url=peak))
        return targets

    def flag(self, state: str, *arguments: str) -> None:
        subprocess.run(
            [*self.python, "flags", "set", *arguments],
            env={**os.environ, "SHIM_STATE_DIR": state, "SHIM_PARITY_GATE": "false"},
            capture_output=True,
            check=True,
        )
        time.sleep(0.5)

    def storage(self) -> list[Target]:
        rust = self.reference("rust")
        shim_url, _, pids = self.shim(rust, self.reference("go"))
        import httpx

        blob = os.urandom(STORAGE_BYTES)
        httpx.put(f"{rust}/storage/bench/blob", content=blob, timeout=60).raise_for_status()
        c = min(STORAGE_CONNECTIONS, self.connections)
        return [
            Target("direct", f"{rust}/storage/bench/blob", connections=c),
            Target("shim", f"{shim_url}/storage/bench/blob", pids=pids, connections=c),
        ]

    def shadow(self) -> list[Target]:
        rust, go = self.reference("rust"), self.reference("go")
        off_url, _, off_pids = self.shim(rust, go)
        on_url, state, on_pids = self.shim(rust, go)
        self.flag(state, "embed", "rust", "--shadow")
        rate = self.shadow_rate
        return [
            Target("shadow off", f"{off_url}/ai/embed", EMBED_8, off_pids, rate=rate),
            Target("shadow on", f"{on_url}/ai/embed", EMBED_8, on_pids, rate=rate),
        ]

    def jq(self) -> list[Target]:
        """A small answer translated by jq programs (rerank, declared in the route table)
        against one of similar size translated by a built-in Python adapter (retrieve, three
        hits), both served by Go to a Rust-face client; rerank same-dialect as the floor."""
        go = self.reference("go")
        shim_url, state, pids = self.shim(self.reference("rust"), go)
        self.flag(state, "rerank", "go")
        self.flag(state, "retrieve", "go")
        documents = [f"forklift operator {i}" for i in range(5)]
        rerank = {"query": "forklift operator", "documents": documents, "top_n": 3}
        go_rerank = {"query": "forklift operator", "docs": documents, "k": 3}
        retrieve = {"query": "forklift operator", "k": 3}
        return [
            Target("direct (rerank)", f"{go}/v1/rerank", json.dumps(go_rerank)),
            Target(
                "shim rerank same-dialect", f"{shim_url}/v1/rerank", json.dumps(go_rerank), pids
            ),
            Target("shim rerank via jq", f"{shim_url}/ai/rerank", json.dumps(rerank), pids),
            Target(
                "shim retrieve via Python", f"{shim_url}/vectors/hybrid", json.dumps(retrieve), pids
            ),
        ]


def bench(
    *,
    seconds: float,
    connections: int,
    rounds: int,
    scenarios: list[str],
    shadow_rate: float = 1000.0,
    embed_batches: tuple[int, ...] = EMBED_BATCHES,
    burst_size: int = 2000,
    overload_size: int = 4000,
    progress: Callable[[str], None] = print,
) -> list[Result]:
    """Run the scenarios; every target of a scenario is measured once per round, in turn."""
    if not (BENCHMARKS / "floor_proxy.py").exists():
        raise ConfigError("shim bench needs the repository's benchmarks/ folder", key="bench")
    loader: Loader = run_wrk if shutil.which("wrk") else run_builtin
    progress(
        f"load generator: {'wrk' if loader is run_wrk else 'built-in (install wrk for precision)'}"
        f"; stub backend: {'nginx' if nginx_binary() else 'uvicorn (install nginx to compare)'}"
    )
    stack = Stack()
    try:
        builder = Bench(
            stack,
            connections,
            shadow_rate,
            embed_batches,
            burst_size=burst_size,
            overload_size=overload_size,
        )
        targets = {name: getattr(builder, name)() for name in SCENARIOS if name in scenarios}
        baseline_rss: dict[str, float] = {}
        results = []
        for round_number in range(rounds):
            for scenario, entries in targets.items():
                for target in entries:
                    result = measure(
                        scenario,
                        target,
                        seconds=seconds,
                        connections=connections,
                        loader=loader,
                        scratch=stack.tmp,
                        baseline_rss=baseline_rss,
                    )
                    results.append(result)
                    progress(
                        f"round {round_number + 1}/{rounds} {scenario:<8} {target.name:<28} "
                        + (
                            burst_line(result.burst)
                            if result.burst
                            else f"{result.rps:>9.0f} rps  p50 {result.p50_ms:7.2f} ms  "
                            f"p99 {result.p99_ms:7.2f} ms"
                        )
                    )
        return results
    finally:
        stack.stop()


@dataclass
class Ratio:
    label: str
    value: float
    goal: str  # e.g. ">= 0.8"; "" for information only

    @property
    def met(self) -> bool | None:
        if not self.goal:
            return None
        sign, bound = self.goal.split()
        return self.value >= float(bound) if sign == ">=" else self.value <= float(bound)

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "value": self.value, "goal": self.goal, "met": self.met}


def summarise(results: list[Result]) -> tuple[list[dict[str, object]], list[Ratio]]:
    """Per target: the median over rounds; then the ratios the targets are judged by."""
    rows: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        rows.setdefault((result.scenario, result.target), []).append(result)
    table = []
    for (scenario, target), runs in rows.items():
        cpus = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request is not None]
        growths = [r.rss_growth_mib for r in runs if r.rss_growth_mib is not None]
        table.append(
            {
                "scenario": scenario,
                "target": target,
                "rps": round(statistics.median(r.rps for r in runs), 1),
                "latency_ms": {
                    p: round(statistics.median(r.latency_ms[p] for r in runs), 3)
                    for p in runs[0].latency_ms
                },
                "cpu_us_per_request": round(statistics.median(cpus), 1) if cpus else None,
                "mib_per_s": round(statistics.median(r.mib_per_s for r in runs), 1),
                "rss_growth_mib": max(growths) if growths else None,
                "errors": sum(r.errors for r in runs),
            }
        )
        if runs[0].burst is not None:
            table[-1]["burst"] = median_burst([r.burst for r in runs if r.burst])
    by = {(row["scenario"], row["target"]): row for row in table}
    ratios: list[Ratio] = []

    def value(key: tuple[str, str], name: str) -> float | None:
        row = by.get(key)
        if row is None:
            return None
        if name in ("p50", "p99"):
            return row["latency_ms"][name[1:]]  # type: ignore[index]
        return row[name]  # type: ignore[return-value]

    def ratio(label: str, a: tuple[str, str], b: tuple[str, str], name: str, goal: str) -> None:
        top, bottom = value(a, name), value(b, name)
        if top is not None and bottom:
            ratios.append(Ratio(label, round(top / bottom, 2), goal))

    small, embed = "small", "embed"
    ratio("shim / floor RPS", (small, "shim"), (small, FLOOR), "rps", ">= 0.8")
    ratio("shim / starlette+httpx RPS", (small, "shim"), (small, RECIPE), "rps", ">= 10")
    ratio("shim p99 / floor p99", (small, "shim"), (small, FLOOR), "p99", "<= 1.5")
    ratio("shim 2 workers / 1 worker RPS", (small, "shim, 2 workers"), (small, "shim"), "rps", "")
    ratio("shim / nginx RPS", (small, "shim"), (small, "nginx"), "rps", "")
    ratio(
        "embed cross / same-dialect RPS",
        (embed, "shim cross-dialect"),
        (embed, "shim same-dialect"),
        "rps",
        ">= 0.6",
    )
    ratio(
        "embed rename-only / same-dialect RPS",
        (embed, "shim rename-only"),
        (embed, "shim same-dialect (rust)"),
        "rps",
        ">= 0.85",
    )
    ratios += embed_series(by)
    ratio(
        "storage shim / direct MiB/s",
        ("storage", "shim"),
        ("storage", "direct"),
        "mib_per_s",
        ">= 0.5",
    )
    for name in ("nginx", "shim", "shim, 2 workers"):
        row = by.get(("burst", name))
        if row is not None:
            done = cast(dict[str, Any], row["burst"])
            goal = ">= 0.995" if name == "shim, 2 workers" else ""
            ratios.append(Ratio(f"burst {name}: answered / sent", done["answered_share"], goal))
    overload = by.get(("overload", "shim"))
    if overload is not None:
        held = cast(dict[str, Any], overload["burst"])
        if "backend_peak" in held:
            ceiling = CEILING
            ratios.append(
                Ratio(
                    "overload shim: backend peak / ceiling",
                    held["backend_peak"] / ceiling,
                    "<= 1.0",
                )
            )
    storage = by.get(("storage", "shim"))
    if storage is not None and storage["rss_growth_mib"] is not None:
        ratios.append(Ratio("storage shim RSS growth MiB", storage["rss_growth_mib"], "<= 50"))  # type: ignore[arg-type]
    ratio(
        "shadow on / off p50 (paced)",
        ("shadow", "shadow on"),
        ("shadow", "shadow off"),
        "p50",
        "<= 1.05",
    )
    return table, ratios


EMBED_DIRECTIONS = {  # the series' direction -> its 8x768 target's name
    "same-dialect": "shim same-dialect",
    "normalising": "shim cross-dialect",
    "rename-only": "shim rename-only",
}


def embed_series(by: dict[tuple[str, str], dict[str, object]]) -> list[Ratio]:
    """CPU per vector along the batch series, per direction; and how flat it stays from 8 to
    the largest batch (the target: within 20%)."""
    found: list[Ratio] = []
    for direction, at_8 in EMBED_DIRECTIONS.items():
        per_vector: dict[int, float] = {}
        for (scenario, target), row in by.items():
            texts = 8 if target == at_8 else _batch_of(target, direction)
            cpu = row["cpu_us_per_request"]
            if scenario == "embed" and texts and isinstance(cpu, float | int):
                per_vector[texts] = cpu / texts
        for texts in sorted(per_vector):
            label = f"embed {direction} CPU us/vector, {texts}x768"
            found.append(Ratio(label, round(per_vector[texts], 1), ""))
        largest = max(per_vector, default=0)
        if direction != "same-dialect" and 8 in per_vector and largest > 8:
            found.append(
                Ratio(
                    f"embed {direction} CPU/vector {largest} / 8 texts",
                    round(per_vector[largest] / per_vector[8], 2),
                    "<= 1.2",
                )
            )
    return found


def _batch_of(target: str, direction: str) -> int | None:
    texts, _, rest = target.partition("x768 ")
    return int(texts) if rest == direction and texts.isdigit() else None


def median_burst(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of a burst target over its rounds: medians, and outcomes other than 2xx or
    shed summed."""

    def middle(key: str) -> float:
        return statistics.median(float(run[key]) for run in runs if key in run)

    other: dict[str, int] = {}
    for run in runs:
        for outcome, count in run["other"].items():
            other[outcome] = other.get(outcome, 0) + count
    row: dict[str, Any] = {
        "sent": middle("sent"),
        "answered": middle("answered"),
        "shed": middle("shed"),
        "other": other,  # summed over the rounds
        "other_per_round": statistics.median(sum(run["other"].values()) for run in runs),
        "wall_s": middle("wall_s"),
        "answered_share": round(middle("answered") / middle("sent"), 4),
        "shed_p50_ms": statistics.median(  # over the rounds that shed at all
            [float(run["shed_ms"]["50"]) for run in runs if run["shed_ms"]] or [0.0]
        ),
    }
    if all("backend_peak" in run for run in runs):
        row["backend_peak"] = max(float(run["backend_peak"]) for run in runs)
    return row


def burst_line(details: dict[str, Any]) -> str:
    """A burst's outcome in one line of progress."""
    other = ", ".join(f"{k} x{v}" for k, v in sorted(details["other"].items()))
    line = (
        f"{details['answered']}/{details['sent']} answered, {details['shed']} shed"
        f"{', ' + other if other else ''} in {details['wall_s']} s"
    )
    if "backend_peak" in details:
        line += f", backend held {details['backend_peak']} at once"
    return line


def render(table: list[dict[str, object]], ratios: list[Ratio]) -> str:
    bursts = [row for row in table if "burst" in row]
    lines = (
        []
        if len(bursts) == len(table)
        else [
            f"{'scenario':<8} {'target':<28} {'RPS':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'CPU us/req':>10} {'MiB/s':>8} {'errors':>6}"
        ]
    )
    for row in table:
        if "burst" in row:
            continue
        cpu = row["cpu_us_per_request"]
        latency: dict[str, float] = row["latency_ms"]  # type: ignore[assignment]
        lines.append(
            f"{row['scenario']:<8} {row['target']:<28} {row['rps']:>9.0f} "
            f"{latency['50']:>8.2f} {latency['90']:>8.2f} {latency['99']:>8.2f} "
            f"{('-' if cpu is None else f'{cpu:.0f}'):>10} {row['mib_per_s']:>8.0f} "
            f"{row['errors']:>6}"
        )
    if bursts:
        lines += [
            "",
            f"{'scenario':<8} {'target':<28} {'sent':>6} {'answered':>8} {'shed':>6} "
            f"{'other':>6} {'p50 ms':>8} {'p99 ms':>8} {'shed p50':>8} {'wall s':>7} "
            f"{'peak':>5}",
        ]
        for row in bursts:
            done = cast(dict[str, Any], row["burst"])
            latency = cast(dict[str, float], row["latency_ms"])
            peak = done.get("backend_peak")
            lines.append(
                f"{row['scenario']:<8} {row['target']:<28} {done['sent']:>6.0f} "
                f"{done['answered']:>8.0f} {done['shed']:>6.0f} {done['other_per_round']:>6.0f} "
                f"{latency['50']:>8.1f} {latency['99']:>8.1f} {done['shed_p50_ms']:>8.1f} "
                f"{done['wall_s']:>7.2f} {'-' if peak is None else f'{peak:.0f}':>5}"
            )
    lines.append("")
    for r in ratios:
        verdict = {True: "met", False: "NOT met", None: ""}[r.met]
        goal = f"(target {r.goal}) {verdict}" if r.goal else "(for information)"
        lines.append(f"{r.label}: {r.value:g} {goal}")
    return "\n".join(lines)


def plot(table: list[dict[str, object]], path: Path) -> bool:
    """Latency percentiles per target, one panel per scenario (False without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = list(dict.fromkeys(str(row["scenario"]) for row in table))
    figure, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4), squeeze=False)
    for axis, scenario in zip(axes[0], scenarios, strict=True):
        for row in table:
            if row["scenario"] != scenario:
                continue
            latency: dict[str, float] = row["latency_ms"]  # type: ignore[assignment]
            points = sorted((float(p), ms) for p, ms in latency.items())
            axis.plot(
                [p for p, _ in points], [ms for _, ms in points], marker="o", label=row["target"]
            )
        axis.set_title(scenario)
        axis.set_xlabel("percentile")
        axis.set_ylabel("latency (ms)")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
