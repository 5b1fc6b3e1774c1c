"""`shim demo`: both reference backends and the shim on loopback, as child processes.

The tour it prints is `TOUR`, and the README's demo tour is the same text (a test holds them
equal and runs every line against a live demo). The demo keeps its state in `state/demo/`,
wiped when it starts (unless `--keep-state`), so the tour behaves the same on every run; its
admin token (SHIM_ADMIN_TOKEN, or one made for it) is in `state/demo/admin-token`.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from shim.errors import ShimError

STATE_DIR = Path("state/demo")
TOKEN_FILE = "admin-token"
EXIT_PORT_TAKEN = 2
# The default ports, in the order --base-port hands them out (N, N+1, N+2, N+3).
DEFAULT_PORTS = {"port": 4120, "admin_port": 4121, "rust_port": 3100, "go_port": 4110}
ROLES = {
    "port": "the shim proxy",
    "admin_port": "the shim admin listener",
    "rust_port": "the reference Rust backend",
    "go_port": "the reference Go backend",
}

TOUR = r"""# Point this terminal's shim commands at the demo's state and admin token
export SHIM_STATE_DIR=state/demo SHIM_ADMIN_TOKEN=$(cat state/demo/admin-token)
# A Rust-face client, served by Rust: unit vectors, X-Shim-Backend: rust
curl -si http://127.0.0.1:4120/ai/embed -d '{"texts": ["forklift operator"]}' | head -n 8
# A Go-face client under the Bun prefix, served by Rust, answered in the Go shape
curl -s http://127.0.0.1:4120/_go/v1/embed -d '{"texts": ["forklift operator"]}' | head -c 120; echo
# Cut embed over to Go? The parity gate refuses: there is no evidence yet
.venv/bin/shim flags set embed go  # exits 1
# Mirror embed traffic to Go and compare (shadow), then read the verdict
.venv/bin/shim flags set embed rust --shadow
for i in $(seq 20); do curl -s -o /dev/null http://127.0.0.1:4120/ai/embed -d "{\"texts\": [\"worker $i\"]}"; done; sleep 1
.venv/bin/shim parity --endpoint embed
# PASS: now the flip goes through, and every worker applies it within a second
.venv/bin/shim flags set embed go --shadow --reason "demo cutover: parity PASS"
# Same Rust-face request: now served by Go, still the Rust shape and the Rust default model
curl -si http://127.0.0.1:4120/ai/embed -d '{"texts": ["forklift operator"]}' | grep -io -e 'x-shim-backend: [a-z]*' -e '"model":"[^"]*"'
# Roll back; then turn shadow off through the admin API (writes need the token)
.venv/bin/shim rollback embed --reason "demo rollback"
curl -s -X PUT http://127.0.0.1:4121/_shim/flags/embed -H "Authorization: Bearer $SHIM_ADMIN_TOKEN" -d '{"shadow": false, "reason": "demo: API write"}'; echo
# Every endpoint's flag; the admin listener's own index of its routes
.venv/bin/shim flags
curl -s http://127.0.0.1:4121/ | head -c 200; echo
# Other endpoints work the same way, in either dialect
curl -s http://127.0.0.1:4120/_go/v1/matrix/retrieve -d '{"query": "forklift operator", "top_k": 2}'; echo
curl -s http://127.0.0.1:4120/v1/sql -d '{"query": "select role, count(*) from workers group by role limit 2"}' -D - | grep -i -e x-shim-lossy -e columns
# Anything not in the route table is a JSON 404: the shim is never an open proxy
curl -s http://127.0.0.1:4120/etc/passwd; echo
"""  # noqa: E501 (shell lines as a person types them; the README shows the same text)


def resolve_ports(args: argparse.Namespace) -> dict[str, int]:
    """Each port: as given, else `--base-port` + its offset, else its default."""
    base = getattr(args, "base_port", None)
    ports = {}
    for offset, (name, default) in enumerate(DEFAULT_PORTS.items()):
        given = getattr(args, name, None)
        if given is not None:
            ports[name] = given
        else:
            ports[name] = base + offset if base is not None else default
    return ports


def port_problems(ports: dict[str, int]) -> list[str]:
    """Why the demo cannot have these ports: each one taken (by another demo, say), or
    given twice. Checked before anything starts, so nothing half-starts."""
    problems = []
    seen: dict[int, str] = {}
    for name, port in ports.items():
        option = "--" + name.replace("_", "-")
        if port in seen:
            problems.append(f"port {port} is given for both {seen[port]} and {option}")
            continue
        seen[port] = option
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                problems.append(f"port {port} ({ROLES[name]}, {option}) is taken: {reason}")
    return problems


def prepare_state(state_dir: Path, token: str, *, keep: bool) -> None:
    """The demo's own state: wiped (unless `keep`), so flags, audit and parity evidence of
    an earlier demo never change what the tour shows; the admin token beside it, for the
    tour's `export` line (readable by this user only)."""
    if not keep and state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    token_file = state_dir / TOKEN_FILE
    token_file.touch(mode=0o600)
    token_file.chmod(0o600)
    token_file.write_text(token + "\n")


def tour(ports: dict[str, int], shim_command: str = ".venv/bin/shim") -> str:
    """TOUR with these ports and this `shim` command in place of the defaults."""
    defaults = {str(port): str(ports[name]) for name, port in DEFAULT_PORTS.items()}
    text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{defaults.get(m[1], m[1])}", TOUR)
    return text.replace(".venv/bin/shim", shim_command)


def _shim_command() -> str:
    """How the tour's lines should call `shim` from this directory."""
    if Path(".venv/bin/shim").exists():
        return ".venv/bin/shim"
    return shutil.which("shim") or f"{sys.executable} -m shim"


def run_demo(args: argparse.Namespace) -> int:
    """Both reference backends and the shim as child processes; Ctrl-C stops all of them."""
    ports = resolve_ports(args)
    problems = port_problems(ports)
    if problems:
        base = 5120 if ports["port"] == DEFAULT_PORTS["port"] else ports["port"] + 1000
        for problem in problems:
            print(f"shim demo: {problem}", file=sys.stderr)
        print(
            f"shim demo: stop what holds {'it' if len(problems) == 1 else 'them'} "
            "(an earlier demo?), or choose other ports: "
            f"shim demo --base-port {base} (proxy {base}, admin {base + 1}, rust {base + 2}, "
            f"go {base + 3}), or one by one with --port, --admin-port, --rust-port, --go-port",
            file=sys.stderr,
        )
        return EXIT_PORT_TAKEN
    token = os.environ.get("SHIM_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    prepare_state(STATE_DIR, token, keep=args.keep_state)
    environment = {
        **os.environ,
        "SHIM_RUST_URL": f"http://127.0.0.1:{ports['rust_port']}",
        "SHIM_GO_URL": f"http://127.0.0.1:{ports['go_port']}",
        "SHIM_STATE_DIR": str(STATE_DIR.resolve()),
        "SHIM_ADMIN_TOKEN": token,
    }
    python = [sys.executable, "-m", "shim"]
    commands = [
        [*python, "reference", "rust", "--port", str(ports["rust_port"])],
        [*python, "reference", "go", "--port", str(ports["go_port"])],
        [
            *python,
            "serve",
            "--port",
            str(ports["port"]),
            "--admin-port",
            str(ports["admin_port"]),
            "--workers",
            str(args.workers),
        ],
    ]
    children: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    # Explicitly: a process started from a background job inherits SIGINT as ignored, and
    # Ctrl-C would then do nothing at all. SIGHUP: the terminal was closed.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        for command in commands:
            # Each child in a process group of its own: Ctrl-C reaches only the demo, which
            # sends each child one SIGINT. Two (the terminal's and ours) make uvicorn force
            # its exit mid-shutdown and print a CancelledError traceback.
            children.append(subprocess.Popen(command, env=environment, process_group=0))
        for port in ports.values():
            _wait_for_port(port, children)
        _wait_for_http(f"http://127.0.0.1:{ports['port']}/_shim/healthz", children)
        print(demo_banner(ports, keep_state=args.keep_state), flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("shim demo: a process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nshim demo: stopping", file=sys.stderr)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        _stop_all(children)


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    """One SIGINT each (a graceful stop), then SIGKILL for any still running after 10 s."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _wait_for_port(port: int, children: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            raise ShimError(f"a demo process exited during start-up (is port {port} free?)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise ShimError(f"nothing listens on 127.0.0.1:{port} after 30 s")


def _wait_for_http(url: str, children: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if any(child.poll() is not None for child in children):
                raise ShimError("a demo process exited during start-up") from None
            time.sleep(0.1)
    raise ShimError(f"{url} did not answer in 30 s")


def demo_banner(ports: dict[str, int], *, keep_state: bool = False) -> str:
    """What the demo prints once everything answers: where things are, then the tour."""
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    state = "kept from the last demo" if keep_state else "fresh"
    return f"""
cutover-shim demo is up. Ctrl-C stops everything.

  rust backend  {url["rust_port"]}     go backend  {url["go_port"]}
  shim proxy    {url["port"]}     admin       {url["admin_port"]}
  state         {STATE_DIR}/ ({state}; admin token in {STATE_DIR / TOKEN_FILE})

Try, from another terminal in this directory (the README's demo tour, line by line):

{tour(ports, _shim_command())}"""
