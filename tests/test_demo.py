"""`shim demo` comes up, and every line of the README's demo tour works as written."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from shim.cli.demo import DEFAULT_PORTS, TOUR, prepare_state, tour
from shim.cutover.file_store import FileBackend
from shim.cutover.flags import FlagStore
from shim.route_config import load_routes
from tests.servers import ROOT, base_env, free_port

SHIM_COMMAND = str(Path(sys.executable).parent / "shim")


def tour_block(marker: str = "demo-tour") -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker}.*?-->\s*```bash\n(.*?)```", readme, re.S)
    assert block, f"README lost its {marker} block"
    return block.group(1)


def tour_lines(marker: str = "demo-tour") -> list[str]:
    return [ln for ln in tour_block(marker).splitlines() if ln.strip() and not ln.startswith("#")]


def test_the_readme_tour_is_the_banners_text() -> None:
    assert tour_block() == TOUR


def test_the_banner_names_the_ports_it_was_given() -> None:
    ports = {"port": 5120, "admin_port": 5121, "rust_port": 5122, "go_port": 5123}
    text = tour(ports, "shim")
    for default in DEFAULT_PORTS.values():
        assert f"127.0.0.1:{default}" not in text
    assert "127.0.0.1:5120/ai/embed" in text and "127.0.0.1:5121/_shim/flags" in text
    assert ".venv/bin/shim" not in text and "shim flags set embed go" in text


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the demo's backends and shim)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(4)]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[1]))
        holder.listen()
        started = time.monotonic()
        result = subprocess.run(
            [
                *(SHIM_COMMAND, "demo", "--port", str(ports[0]), "--admin-port", str(ports[1])),
                *("--rust-port", str(ports[2]), "--go-port", str(ports[3])),
            ],
            cwd=tmp_path,
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2 and result.stdout == ""  # no banner
    assert f"port {ports[1]} (the shim admin listener, --admin-port) is taken" in result.stderr
    assert "--base-port" in result.stderr and str(ports[0]) not in result.stderr.split("\n")[0]
    assert not (tmp_path / "state").exists()  # nothing was started or prepared
    assert time.monotonic() - started < 10


@contextlib.contextmanager
def live_demo(tmp_path: Path) -> Iterator[Callable[[str], subprocess.CompletedProcess[str]]]:
    """`shim demo` on free ports; yields a runner for README lines (ports and paths put
    right, an `export` line kept for the lines after it as in one terminal, each line
    checked for its exit code: 0, or 1 where it says `# exits 1`). On the way out: Ctrl-C
    to the whole process group, as a terminal does, and no traceback, no plain-text log
    line, nothing left listening."""
    ports = {"4120": free_port(), "4121": free_port(), "3100": free_port(), "4110": free_port()}
    shim_command = SHIM_COMMAND
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
    environment = ""

    def run(line: str) -> subprocess.CompletedProcess[str]:
        nonlocal environment
        # The README's own /tmp/ first: the checkout itself may live under /tmp.
        line = line.replace("/tmp/", f"{tmp_path}/")
        for default, port in ports.items():
            line = line.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
        line = line.replace(".venv/bin/shim", shim_command)
        line = line.replace("config/routes.toml", str(ROOT / "config" / "routes.toml"))
        if line.startswith("export "):
            environment += line + "\n"
        result = subprocess.run(
            ["bash", "-c", environment + line],
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
        last_line = TOUR.strip().splitlines()[-1].replace("4120", str(ports["4120"]))
        while not banner.rstrip().endswith(last_line):
            line = demo.stdout.readline()
            assert line, "demo exited before printing its banner"
            banner += line
        assert f"127.0.0.1:{ports['4120']}" in banner
        yield run
    finally:
        children = children_of(demo.pid)
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        try:
            exit_code = demo.wait(20)
        except subprocess.TimeoutExpired:
            for pid in [demo.pid, *children]:  # never leave a demo behind
                os.kill(pid, signal.SIGKILL)
            raise
        finally:
            demo_log.close()
        if demo.stdout:
            demo.stdout.close()
    assert exit_code == 0
    log = (tmp_path / "demo.log").read_text()
    for problem in ("Traceback", "KeyboardInterrupt", "CancelledError"):
        assert problem not in log, log[-3000:]
    plain = [ln for ln in log.splitlines() if ln.strip() and not ln.startswith("shim demo:")]
    for line in plain:  # one log format: every line from the processes is a JSON object
        assert isinstance(json.loads(line), dict), line
    for port in ports.values():  # nothing is left listening: no orphan processes
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                time.sleep(0.1)
            except httpx.ConnectError:
                break
        else:
            raise AssertionError(f"something still listens on {port} after the demo stopped")


def test_readme_demo_tour_runs_against_a_live_demo(tmp_path: Path) -> None:
    """Over the state of an earlier demo (embed already on go): the demo starts fresh, so
    the tour's "the parity gate refuses" line holds on every run."""
    routes = load_routes(ROOT / "config" / "routes.toml")
    stale = FlagStore(FileBackend(tmp_path / "state" / "demo", routes), routes, {})
    stale.set("embed", serve="go", shadow=True, actor="an earlier demo")
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
    assert '"changed":true' in text  # the API write with the demo's token
    assert '"service":"cutover-shim admin"' in text


def test_the_demo_state_is_wiped_unless_kept(tmp_path: Path) -> None:
    state = tmp_path / "state" / "demo"
    state.mkdir(parents=True)
    (state / "flags.json").write_text("{}")
    prepare_state(state, "kept-token", keep=True)
    assert (state / "flags.json").exists()
    prepare_state(state, "new-token", keep=False)
    assert sorted(p.name for p in state.iterdir()) == ["admin-token"]
    assert (state / "admin-token").read_text() == "new-token\n"
    assert (state / "admin-token").stat().st_mode & 0o077 == 0  # this user's only
