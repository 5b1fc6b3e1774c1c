"""`shim demo`: both reference backends and the shim on loopback, as child processes."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from shim.errors import ShimError


def run_demo(args: argparse.Namespace) -> int:
    """Both reference backends and the shim as child processes; Ctrl-C stops all of them."""
    environment = {
        **os.environ,
        "SHIM_RUST_URL": f"http://127.0.0.1:{args.rust_port}",
        "SHIM_GO_URL": f"http://127.0.0.1:{args.go_port}",
    }
    python = [sys.executable, "-m", "shim"]
    commands = [
        [*python, "reference", "rust", "--port", str(args.rust_port)],
        [*python, "reference", "go", "--port", str(args.go_port)],
        [
            *python,
            "serve",
            "--port",
            str(args.port),
            "--admin-port",
            str(args.admin_port),
            "--workers",
            str(args.workers),
        ],
    ]
    children: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    # Explicitly: a process started from a background job inherits SIGINT as ignored, and
    # Ctrl-C would then do nothing at all.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for command in commands:
            children.append(subprocess.Popen(command, env=environment))
        for port in (args.rust_port, args.go_port, args.port, args.admin_port):
            _wait_for_port(port, children)
        _wait_for_http(f"http://127.0.0.1:{args.port}/_shim/healthz", children)
        print(demo_banner(args), flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("shim demo: a process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nshim demo: stopping", file=sys.stderr)
        return 0
    finally:
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


def demo_banner(args: argparse.Namespace) -> str:
    shim = f"http://127.0.0.1:{args.port}"
    return f"""
cutover-shim demo is up. Ctrl-C stops everything.

  rust backend  http://127.0.0.1:{args.rust_port}     go backend  http://127.0.0.1:{args.go_port}
  shim proxy    {shim}     admin       http://127.0.0.1:{args.admin_port}

Try, from another terminal in this directory (the README's demo tour has more):

  curl -si {shim}/ai/embed -d '{{"texts": ["forklift operator"]}}' | head -n 8
  curl -s {shim}/_go/v1/embed -d '{{"texts": ["forklift operator"]}}' | head -c 120; echo
  .venv/bin/shim flags set embed rust --shadow     # mirror to Go and compare first
  for i in $(seq 20); do curl -s -o /dev/null {shim}/ai/embed -d '{{"texts": ["t'$i'"]}}'; done
  .venv/bin/shim parity --endpoint embed            # PASS opens the parity gate
  .venv/bin/shim flags set embed go --shadow --reason "demo cutover"
  curl -si {shim}/ai/embed -d '{{"texts": ["forklift operator"]}}' | grep -i x-shim-backend
  .venv/bin/shim rollback embed --reason "demo rollback"
  .venv/bin/shim flags
"""
