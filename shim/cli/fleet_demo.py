"""`make demo-fleet` (`python -m shim.cli.fleet_demo`): etcd, both reference backends and two
shim instances sharing their flags through it, so one flip can be watched reaching both.

Needs Debian's etcd-server (`apt-get install etcd-server`); everything lives in a temp dir
and stops with Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shim.cli.demo import _wait_for_http

ETCD_PORT, ETCD_PEER_PORT = 23790, 23800
RUST_PORT, GO_PORT = 3100, 4110
INSTANCES = ((4120, 4121), (4130, 4131))
TOKEN = "demo-token"


def main() -> int:
    etcd = shutil.which("etcd")
    if etcd is None:
        print("shim demo-fleet: etcd is missing: apt-get install etcd-server", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cutover-shim-fleet-"))
    etcd_url, peer = f"http://127.0.0.1:{ETCD_PORT}", f"http://127.0.0.1:{ETCD_PEER_PORT}"
    fleet = {
        "SHIM_FLAG_STORE": "etcd",
        "SHIM_ETCD__ENDPOINTS": etcd_url,
        "SHIM_RUST_URL": f"http://127.0.0.1:{RUST_PORT}",
        "SHIM_GO_URL": f"http://127.0.0.1:{GO_PORT}",
        "SHIM_ADMIN_TOKEN": TOKEN,
    }
    python = [sys.executable, "-m", "shim"]
    starts: list[tuple[list[str], dict[str, str], str]] = [
        (
            [etcd, "--data-dir", str(work / "etcd"), "--listen-client-urls", etcd_url,
             "--advertise-client-urls", etcd_url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}"],
            {},
            f"{etcd_url}/health",
        ),
        ([*python, "reference", "rust", "--port", str(RUST_PORT)], {}, f"http://127.0.0.1:{RUST_PORT}/health"),
        ([*python, "reference", "go", "--port", str(GO_PORT)], {}, f"http://127.0.0.1:{GO_PORT}/health"),
    ]  # fmt: skip
    for n, (port, admin) in enumerate(INSTANCES):
        environment = {**fleet, "SHIM_STATE_DIR": str(work / f"instance-{n}")}
        command = [*python, "serve", "--port", str(port), "--admin-port", str(admin)]
        ready = f"http://127.0.0.1:{port}/_shim/healthz"
        starts.append(([*command, "--workers", "2"], environment, ready))
    children: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for command, extra, ready in starts:
            log = (work / f"{len(children)}.log").open("ab")
            children.append(
                subprocess.Popen(command, env={**os.environ, **extra}, stdout=log, stderr=log)
            )
            _wait_for_http(ready, children)
        print(banner(work, fleet), flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print(f"shim demo-fleet: a process exited (logs in {work}); stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nshim demo-fleet: stopping", file=sys.stderr)
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def banner(work: Path, fleet: dict[str, str]) -> str:
    (a, a_admin), (b, b_admin) = INSTANCES
    env = " ".join(
        f"{k}={v}" for k, v in fleet.items() if k.startswith("SHIM_ETCD") or k == "SHIM_FLAG_STORE"
    )
    return f"""
cutover-shim fleet demo is up (logs and state in {work}). Ctrl-C stops everything.

  etcd          http://127.0.0.1:{ETCD_PORT}
  instance A    http://127.0.0.1:{a} (admin :{a_admin})   2 workers
  instance B    http://127.0.0.1:{b} (admin :{b_admin})   2 workers

Flip through A, watch B serve it:

  curl -s -X PUT http://127.0.0.1:{a_admin}/_shim/flags/embed -H 'authorization: Bearer {TOKEN}' \\
       -d '{{"serve": "go", "force": true, "reason": "fleet demo"}}' | grep -o '"summary":"[^"]*"'
  curl -si http://127.0.0.1:{b}/ai/embed -d '{{"texts": ["forklift"]}}' | grep -i x-shim-backend
  {env} .venv/bin/shim flags --history
  {env} .venv/bin/shim rollback embed --reason "fleet demo rollback"
"""


if __name__ == "__main__":
    raise SystemExit(main())
