"""`shim demo` comes up, and every line of the README's demo tour works as written."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.servers import ROOT, base_env, free_port


def tour_lines(marker: str = "demo-tour") -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker}.*?-->\s*```bash\n(.*?)```", readme, re.S)
    assert block, f"README lost its {marker} block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


@contextlib.contextmanager
def live_demo(tmp_path: Path) -> Iterator[Callable[[str], subprocess.CompletedProcess[str]]]:
    """`shim demo` on free ports; yields a runner for README lines (ports and paths put
    right, each line checked for its exit code: 0, or 1 where it says `# exits 1`)."""
    ports = {"4120": free_port(), "4121": free_port(), "3100": free_port(), "4110": free_port()}
    shim_command = str(Path(sys.executable).parent / "shim")
    demo_log = (tmp_path / "demo.log").open("w")
    demo = subprocess.Popen(
        [
            shim_command,
            "demo",
            "--port",
            str(ports["4120"]),
            "--admin-port",
            str(ports["4121"]),
            "--rust-port",
            str(ports["3100"]),
            "--go-port",
            str(ports["4110"]),
        ],
        cwd=tmp_path,
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=demo_log,
        text=True,
        start_new_session=True,  # its own process group, so a failed stop can be cleaned up
    )

    # What `shim parity probe` reaches: this demo's backends, not whatever has the defaults.
    backends = base_env(
        SHIM_RUST_URL=f"http://127.0.0.1:{ports['3100']}",
        SHIM_GO_URL=f"http://127.0.0.1:{ports['4110']}",
    )

    def run(line: str) -> subprocess.CompletedProcess[str]:
        for default, port in ports.items():
            line = line.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
        line = line.replace(".venv/bin/shim", shim_command)
        line = line.replace("config/routes.toml", str(ROOT / "config" / "routes.toml"))
        line = line.replace("/tmp/", f"{tmp_path}/")
        result = subprocess.run(
            ["bash", "-c", line],
            cwd=tmp_path,
            env=backends,
            capture_output=True,
            text=True,
            timeout=30,
        )
        expected = 1 if line.rstrip().endswith("# exits 1") else 0
        assert result.returncode == expected, f"{line}\n{result.stdout}{result.stderr}"
        return result

    try:
        banner = ""
        assert demo.stdout is not None
        while not banner.rstrip().endswith("shim flags"):
            line = demo.stdout.readline()
            assert line, "demo exited before printing its banner"
            banner += line
        assert f"127.0.0.1:{ports['4120']}" in banner
        yield run
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            demo.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)  # never leave a demo behind
            raise
        finally:
            demo_log.close()
        if demo.stdout:
            demo.stdout.close()
    for port in ports.values():  # nothing is left listening: no orphan processes
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                time.sleep(0.1)
            except httpx.ConnectError:
                break


def test_readme_demo_tour_runs_against_a_live_demo(tmp_path: Path) -> None:
    with live_demo(tmp_path) as run:
        outputs = []
        for line in tour_lines():
            result = run(line)
            outputs += [result.stdout, result.stderr]
    text = "\n".join(outputs)
    assert "x-shim-backend: rust" in text.lower()
    assert "x-shim-backend: go" in text.lower()
    assert '"model":"nomic-embed-text"' in text
    assert '"vectors"' in text and "not_found" in text
    assert "embed: go+shadow -> rust+shadow" in text
    assert "needs a recent PASS parity verdict" in text  # the gate said no, first
    assert "PASS 20/20 cos≥0.99999" in text
    assert "x-shim-lossy: column-types" in text.lower() and '"hits"' in text
