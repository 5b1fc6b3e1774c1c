"""`shim bench`: the shim against Python's floor, the common recipe and direct, in one run."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from shim.cli_common import Commands
from shim.errors import ConfigError


def add_commands(commands: Commands) -> None:
    bench = commands.add_parser(
        "bench", help="the shim vs Python's floor, the common recipe and direct, same run"
    )
    bench.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    bench.add_argument("--connections", type=int, default=32)
    bench.add_argument("--rounds", type=int, default=2, help="A B A B alternations (default 2)")
    bench.add_argument(
        "--scenarios",
        default="small,embed,storage,shadow,jq,burst,overload",
        help="comma-separated: small, embed, storage, shadow, jq, burst, overload (default all)",
    )
    bench.add_argument(
        "--shadow-rate",
        type=float,
        default=1000.0,
        help="requests per second, paced, for shadow off vs on (default 1000)",
    )
    bench.add_argument(
        "--embed-batches",
        default="1,64,256",
        help="texts per request of the embed series, besides 8 (default 1,64,256; '' for none)",
    )
    bench.add_argument(
        "--burst", type=int, default=2000, help="requests at once in the burst scenario"
    )
    bench.add_argument(
        "--overload",
        type=int,
        default=4000,
        help="connections at once to one worker in front of a slow backend (overload)",
    )
    bench.add_argument("--json", type=Path, help="also write the results here")
    bench.add_argument(
        "--plot", type=Path, help="latency percentiles as a PNG here (needs matplotlib)"
    )
    bench.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from shim.bench import SCENARIOS, bench, plot, render, summarise

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
