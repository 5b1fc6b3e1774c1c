"""`shim bench` runs end to end (a tiny smoke run; the real one is `shim bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.servers import ROOT, base_env


def test_bench_smoke_run_reports_every_target_and_the_ratios(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shim",
            "bench",
            "--duration",
            "0.5",
            "--rounds",
            "1",
            "--connections",
            "4",
            "--scenarios",
            "small",
            "--json",
            str(output),
        ],
        env=base_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(output.read_text())
    targets = {row["target"] for row in document["results"]}
    assert targets == {"direct", "floor (raw ASGI + aiohttp)", "shim", "starlette + httpx"}
    assert all(row["rps"] > 0 and row["errors"] == 0 for row in document["results"])
    assert any(r.startswith("shim / floor RPS") for r in document["ratios"])
    assert "shim / floor RPS" in result.stdout
