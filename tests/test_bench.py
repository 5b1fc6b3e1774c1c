"""`shim bench` runs end to end (a tiny smoke run; the real one is `shim bench`).

The smoke run measures each target for 0.2 s, so the built-in load generator drives it (wrk
measures whole seconds); wrk's own path is run once on its own below.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.load import PERCENTILES, Target, run_wrk
from benchmarks.processes import nginx_binary
from benchmarks.scenarios import CEILING, FLOOR, RECIPE, SMALL
from tests.servers import ROOT, base_env, own_backend


def run_module(module: str, *arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m module arguments` from the checkout, as a user runs it; it must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        env=base_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_bench_smoke_run_reports_every_target_and_the_ratios(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = run_module(
        "shim",
        "bench",
        "--duration",
        "0.2",
        "--rounds",
        "1",
        "--connections",
        "2",
        "--shadow-rate",
        "50",
        "--embed-batches",
        "1",  # the batch series, tiny: one size besides 8
        "--burst",
        "40",
        "--overload",
        "60",
        "--json",
        str(output),
        timeout=240,
    )
    document = json.loads(output.read_text())
    targets = {(row["scenario"], row["target"]) for row in document["results"]}
    small = {"direct", FLOOR, "shim", "shim, 2 workers", RECIPE}
    burst = {"direct", "shim", "shim, 2 workers"}
    overload = {"shim"}
    if nginx_binary():
        small.add("nginx")
        burst.add("nginx")
        overload |= {"nginx", f"nginx max_conns={CEILING}"}
    assert targets == {
        *(("small", t) for t in small),
        ("embed", "direct"),
        ("embed", "shim same-dialect"),
        ("embed", "shim cross-dialect"),
        ("embed", "shim same-dialect (rust)"),
        ("embed", "shim rename-only"),
        *(("embed", f"1x768 {d}") for d in ("same-dialect", "normalising", "rename-only")),
        ("storage", "direct"),
        ("storage", "shim"),
        ("shadow", "shadow off"),
        ("shadow", "shadow on"),
        *(("jq", t) for t in ("direct (rerank)", "shim rerank via jq", "shim rerank same-dialect")),
        ("jq", "shim retrieve via Python"),
        *(("burst", t) for t in burst),
        *(("overload", t) for t in overload),
    }
    assert all(row["rps"] > 0 and row["errors"] == 0 for row in document["results"])
    storage = {row["target"]: row for row in document["results"] if row["scenario"] == "storage"}
    assert storage["shim"]["mib_per_s"] > 0 and storage["shim"]["rss_growth_mib"] is not None
    labels = {ratio["label"]: ratio for ratio in document["ratios"]}
    assert labels["shim / floor RPS"]["goal"] == ">= 0.8"
    assert {"embed cross / same-dialect RPS", "storage shim / direct MiB/s"} <= set(labels)
    assert labels["embed rename-only / same-dialect RPS"]["goal"] == ">= 0.85"
    assert labels["embed normalising CPU us/vector, 1x768"]["value"] > 0
    assert "embed rename-only CPU us/vector, 8x768" in labels
    assert "shadow on / off p50 (paced)" in labels
    bursts = {(r["scenario"], r["target"]): r["burst"] for r in document["results"] if "burst" in r}
    assert bursts[("burst", "shim, 2 workers")]["answered"] == 40
    assert bursts[("overload", "shim")]["backend_peak"] <= CEILING
    assert labels["burst shim, 2 workers: answered / sent"]["met"] is True
    assert "shim / floor RPS" in result.stdout


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_wrk_drives_a_target_and_its_report_is_read(tmp_path: Path) -> None:
    stub, url = own_backend(tmp_path, "stub_backend", app_dir=ROOT / "benchmarks")
    try:
        run = run_wrk(Target("stub", f"{url}/query", SMALL), 1, 4, tmp_path)
    finally:
        stub.stop()
    assert run["requests"] > 0 and run["rps"] > 0 and run["bytes_per_s"] > 0
    assert run["errors"] == 0
    assert list(run["latency"]) == [str(p) for p in PERCENTILES]
    assert 0 < run["latency"]["50"] <= run["latency"]["99"]


TINY_STAGES = ("--texts", "2", "--dim", "16", "--calls", "3")


def test_embed_stages_prints_every_stage_of_both_directions() -> None:
    """`benchmarks.embed_stages` (where an embed rewrite's CPU goes) runs, on answers the fast
    path takes as gateways write them, and prints each stage warm and cold."""
    result = run_module("benchmarks.embed_stages", *TINY_STAGES, timeout=60)
    header, *rows = result.stdout.splitlines()[1:]
    assert header.split()[1:] == ["parse", "load", "translate", "write", "whole", "floor"]
    assert [row.split()[-7] for row in rows] == ["warm", "cold", "warm", "cold"]
    assert all(float(value) > 0 for row in rows for value in row.split()[-6:])
