"""`shim bench`: the shim against Python's floor, the common recipe and direct, in one run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shim.cli.common import Commands
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
    """The benchmark is not in the wheel: it needs the checkout's benchmarks/ (its servers,
    nginx config, scripts), and it measures that checkout's shim. So it is loaded from the
    checkout this `shim` runs from (the editable install of `make bench`); an installed wheel
    has none, and says so in one line."""
    import importlib
    import importlib.util

    from shim.settings import PROJECT_ROOT

    if "benchmarks" not in sys.modules:
        folder = PROJECT_ROOT / "benchmarks"
        if not (folder / "runner.py").is_file():
            raise ConfigError(
                "the benchmark is not part of the installed package: run it in a cutover-shim "
                f"checkout (`make bench`, or .venv/bin/shim bench there); no {folder}",
                key="bench",
            )
        spec = importlib.util.spec_from_file_location(
            "benchmarks", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None  # a .py file always has a loader
        sys.modules["benchmarks"] = package = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(package)
    code: int = importlib.import_module("benchmarks.runner").run(args)
    return code
