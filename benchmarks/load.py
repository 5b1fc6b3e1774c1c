"""The timed load generators: wrk when installed, else a built-in aiohttp one.

Each drives one `Target` for some seconds on some connections and returns a `Run`: requests,
requests per second, latency percentiles (ms), errors and bytes per second. `percentiles` is
the bench's one percentile helper (the burst generator uses it too).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from shim.errors import ConfigError

PERCENTILES = (50, 75, 90, 99)


def percentiles(seconds: list[float]) -> dict[str, float]:
    """Latency percentiles in ms, by nearest rank rounded down (the p-th of n sorted values is
    the one at index p/100 * n): `{"50": ..., "75": ..., "90": ..., "99": ...}`, `{}` for none.

    >>> percentiles([0.001, 0.002, 0.003, 0.004])
    {'50': 3.0, '75': 4.0, '90': 4.0, '99': 4.0}
    """
    ordered = sorted(seconds)
    if not ordered:
        return {}
    last = len(ordered) - 1
    return {str(p): ordered[min(last, int(p / 100 * len(ordered)))] * 1000 for p in PERCENTILES}


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


class Run(TypedDict):
    """What a load generator saw in one timed run."""

    requests: int
    rps: float
    latency: dict[str, float]  # percentile -> milliseconds
    errors: int
    bytes_per_s: float


Loader = Callable[[Target, float, int, Path], Run]


def run_wrk(target: Target, seconds: float, connections: int, scratch: Path) -> Run:
    """wrk, one thread; it measures whole seconds (at least one)."""
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
    return read_wrk(out)


def read_wrk(out: str) -> Run:
    """wrk's `--latency` report as a `Run`."""

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


def run_builtin(target: Target, seconds: float, connections: int, _: Path) -> Run:
    """An aiohttp load generator: closed loop (each connection sends when answered), or paced
    at `target.rate` with latency counted from each request's scheduled time."""
    import aiohttp

    async def drive() -> Run:
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
        return {
            "requests": len(latencies),
            "rps": len(latencies) / elapsed,
            "latency": percentiles(latencies),
            "errors": errors,
            "bytes_per_s": received / elapsed,
        }

    return asyncio.run(drive())
