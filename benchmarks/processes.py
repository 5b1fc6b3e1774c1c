"""The processes of one bench run: started from this folder, watched in /proc, stopped together.

CPU and memory are read from `/proc/PID/stat` and `/proc/PID/status` of every process of a
target (a `shim serve` and its workers), so the figure is the proxy's own, not the load
generator's.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from shim.errors import ConfigError

BENCHMARKS = Path(__file__).resolve().parent  # the servers uvicorn imports live here
STUB_BODY = '{"ok":true,"items":[1,2,3]}'  # nginx's fixed answer, as benchmarks/stub_backend.py


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(found.group(1)) if found else 0
    return total / 1024


def tree(pid: int) -> list[int]:
    """A process and its children (uvicorn workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [pid, *(p for kid in kids for p in tree(kid))]


class RssWatch:
    """The highest resident memory of some processes while a measurement runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = rss_mib(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pids))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


class Stack:
    """The processes of one bench run; stopped together."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="shim-bench-"))

    def start(
        self, command: list[str], *, env: dict[str, str] | None = None, ready: str
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=BENCHMARKS,
        )
        self.processes.append(process)
        wait_ready(ready, process)
        return process

    def uvicorn(
        self, module: str, port: int, env: dict[str, str], *, extra: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--no-server-header",
            "--log-level",
            "warning",
            *(extra or []),
        ]
        return self.start(command, env=env, ready=f"127.0.0.1:{port}")

    def nginx(self, stub_port: int, proxy_port: int | None) -> subprocess.Popen[bytes]:
        """nginx as the stub backend (a fixed answer), and as a reverse proxy in front of it."""
        stub = (
            f" upstream stub {{ server 127.0.0.1:{stub_port}; keepalive 64; }}\n"
            f" server {{ listen 127.0.0.1:{stub_port} backlog=4096; location / {{ "
            f"default_type application/json; return 200 '{STUB_BODY}'; }} }}\n"
        )
        proxy = _nginx_proxy(proxy_port, "stub") if proxy_port else ""
        return self._nginx(f"nginx-{stub_port}", stub + proxy, ready=stub_port)

    def nginx_proxies(
        self, upstream_port: int, proxies: dict[int, int | None]
    ) -> subprocess.Popen[bytes]:
        """nginx as a reverse proxy to 127.0.0.1:`upstream_port` on each port of `proxies`,
        with at most that many connections to it (`max_conns`; None: unbounded)."""
        blocks = ""
        for port, bound in proxies.items():
            limit = f" max_conns={bound}" if bound else ""
            blocks += (
                f" upstream u{port} {{ server 127.0.0.1:{upstream_port}{limit}; keepalive 64; }}\n"
            )
            blocks += _nginx_proxy(port, f"u{port}")
        return self._nginx(f"nginx-{upstream_port}", blocks, ready=next(iter(proxies)))

    def _nginx(self, name: str, servers: str, *, ready: int) -> subprocess.Popen[bytes]:
        # `name`: each nginx its own directory, as scenarios may start theirs at the same time.
        # A backlog and connection budget for bursts of thousands: with nginx's defaults (511,
        # 4,096) a burst of 2,000 through it saw resets and SYNs retried a second later.
        temp = self.tmp / name
        temp.mkdir(exist_ok=True)
        config = temp / "nginx.conf"
        config.write_text(
            f"worker_processes 1; daemon off; pid {temp}/nginx.pid; error_log {temp}/error.log;\n"
            "worker_rlimit_nofile 20000; events { worker_connections 16384; }\n"
            "http {\n access_log off;\n"
            f" client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;\n"
            f" fastcgi_temp_path {temp}/fcgi; uwsgi_temp_path {temp}/uwsgi;\n"
            f" scgi_temp_path {temp}/scgi;\n{servers}}}\n"
        )
        binary = nginx_binary()
        assert binary is not None
        return self.start([binary, "-c", str(config), "-p", str(temp)], ready=f"127.0.0.1:{ready}")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _nginx_proxy(port: int, upstream: str) -> str:
    return (
        f" server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ proxy_pass "
        f'http://{upstream}; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}\n'
    )


def wait_ready(address: str, process: subprocess.Popen[bytes]) -> None:
    host, port = address.split(":")
    for _ in range(300):
        if process.poll() is not None:
            raise ConfigError(f"{process.args!r} exited during start-up", key="bench")
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ConfigError(f"{address} never opened", key="bench")
