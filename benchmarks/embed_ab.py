"""A/B of the embed directions through two shims, an older checkout's and this one's, against
the same reference backends, alternating target by target in one run.

    git archive <old-commit> | tar -x -C /tmp/shim-old
    .venv/bin/python -m benchmarks.embed_ab --old /tmp/shim-old [--seconds 5] [--rounds 3]
        [--texts 8]

Prints RPS and the shims' CPU per request for same-dialect, normalising, same-dialect (rust)
and rename-only, and the ratios each side reaches.
"""

from __future__ import annotations

import argparse
import os
import statistics

from benchmarks.load import Target, run_wrk
from benchmarks.measure import Result, measure
from benchmarks.processes import Stack
from benchmarks.scenarios import Bench, embed_body


class AB(Bench):
    def shim_from(self, rust: str, go: str, code: str | None) -> tuple[str, str, list[int]]:
        """A shim running the code in `code` (None: this checkout)."""
        saved = os.environ.get("PYTHONPATH")
        if code:
            os.environ["PYTHONPATH"] = code
        try:
            return self.shim(rust, go)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True, help="directory of the older checkout")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", default="8")
    args = parser.parse_args()
    sizes = [int(n) for n in args.texts.split(",")]
    stack = Stack()
    try:
        ab = AB(stack, 32, 1000.0)
        rust, go = ab.reference("rust"), ab.reference("go")
        targets: list[tuple[str, Target]] = []
        for side, code in (("old", args.old), ("new", None)):
            to_go, state, pids = ab.shim_from(rust, go, code)
            ab.flag(state, "embed", "go")
            to_rust, _, rust_pids = ab.shim_from(rust, go, code)
            for n in sizes:
                body = embed_body(n)
                targets += [
                    (f"{side} {n} same-dialect", Target("", f"{to_go}/v1/embed", body, pids)),
                    (f"{side} {n} normalising", Target("", f"{to_go}/ai/embed", body, pids)),
                    (
                        f"{side} {n} same (rust)",
                        Target("", f"{to_rust}/ai/embed", body, rust_pids),
                    ),
                    (
                        f"{side} {n} rename-only",
                        Target("", f"{to_rust}/v1/embed", body, rust_pids),
                    ),
                ]
        rows: dict[str, list[Result]] = {}
        for _ in range(args.rounds):
            for name, target in targets:
                result = measure(
                    "embed",
                    target,
                    seconds=args.seconds,
                    connections=32,
                    loader=run_wrk,
                    scratch=stack.tmp,
                    baseline_rss={},
                )
                rows.setdefault(name, []).append(result)
                print(f"{name:<26} {result.rps:8.0f} rps {result.cpu_us_per_request} us/req")
        median = {
            name: (
                statistics.median(r.rps for r in runs),
                statistics.median(r.cpu_us_per_request or 0 for r in runs),
            )
            for name, runs in rows.items()
        }
        print()
        for side in ("old", "new"):
            for n in sizes:
                rps = {
                    d: median[f"{side} {n} {d}"][0]
                    for d in ("same-dialect", "normalising", "same (rust)", "rename-only")
                }
                cpu = {d: median[f"{side} {n} {d}"][1] for d in rps}
                print(
                    f"{side} {n}x768: normalising / same-dialect RPS "
                    f"{rps['normalising'] / rps['same-dialect']:.2f}, rename-only / same (rust) "
                    f"{rps['rename-only'] / rps['same (rust)']:.2f}; CPU us/request "
                    + ", ".join(f"{d} {c:.0f}" for d, c in cpu.items())
                )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
