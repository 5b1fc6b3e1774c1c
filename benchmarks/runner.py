"""`shim bench` itself: start every chosen scenario, measure each target once per round, in
turn (A B A B), then print and write what was measured.

`run(args)` is the command's body: `shim.cli.main.run_bench` finds this package in the checkout
and calls it with the parsed options (`--duration`, `--scenarios`, ... as `shim bench --help`
lists them).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from benchmarks.load import Loader, Target, run_builtin, run_wrk
from benchmarks.measure import Result, measure
from benchmarks.processes import Stack, nginx_binary
from benchmarks.report import burst_line, plot, render, summarise
from benchmarks.scenarios import EMBED_BATCHES, SCENARIOS, Bench
from shim.errors import ConfigError


def run(args: argparse.Namespace) -> int:
    """`shim bench`: the run, its table and ratios on stdout, `--json` and `--plot` files."""
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise ConfigError(
            f"unknown scenario {sorted(unknown)[0]!r} (known: {', '.join(SCENARIOS)})",
            key="--scenarios",
        )
    results = bench(
        seconds=args.duration,
        connections=args.connections,
        rounds=args.rounds,
        scenarios=scenarios,
        shadow_rate=args.shadow_rate,
        embed_batches=tuple(int(n) for n in args.embed_batches.split(",") if n.strip()),
        burst_size=args.burst,
        overload_size=args.overload,
        progress=lambda line: print(line, flush=True),
    )
    table, ratios = summarise(results)
    print()
    print(render(table, ratios))
    if args.json:
        document = {
            "results": table,
            "ratios": [r.to_dict() for r in ratios],
            "runs": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(document, indent=2))
        print(f"\nresults written to {args.json}")
    if args.plot:
        if plot(table, args.plot):
            print(f"latency plot written to {args.plot}")
        else:
            print("no plot: matplotlib is not installed (pip install matplotlib)")
    return 0


def choose_loader(seconds: float) -> Loader:
    """wrk when installed; it measures whole seconds only, so a shorter `seconds` (a smoke
    run) is measured by the built-in generator rather than silently stretched to one second."""
    return run_wrk if shutil.which("wrk") and seconds >= 1 else run_builtin


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
    """Run the scenarios; every target of a scenario is measured once per round, in turn.

    The scenarios' processes are started side by side (most of a start is waiting for a
    port or a worker), all of them before the first measurement, as before."""
    loader = choose_loader(seconds)
    if loader is run_wrk:
        generator = "wrk"
    elif shutil.which("wrk"):
        generator = "built-in (wrk measures whole seconds: --duration 1 or more for wrk)"
    else:
        generator = "built-in (install wrk for precision)"
    progress(
        f"load generator: {generator}"
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
        chosen = [name for name in SCENARIOS if name in scenarios]
        with ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
            started = {name: pool.submit(getattr(builder, name)) for name in chosen}
        targets: dict[str, list[Target]] = {name: done.result() for name, done in started.items()}
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
