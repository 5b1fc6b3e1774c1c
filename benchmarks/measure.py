"""One target measured: a warm-up, then a timed run (or one burst), with the CPU and memory of
the target's processes over it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bursts import burst
from benchmarks.load import PERCENTILES, Loader, Target, run_builtin
from benchmarks.processes import RssWatch, cpu_seconds, rss_mib


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
