"""Real servers on loopback ephemeral ports, started and stopped by the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHIM = [sys.executable, "-m", "shim"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A child process serving HTTP; `start()` returns once `ready_url` answers."""

    def __init__(
        self, command: list[str], *, ready_url: str, env: dict[str, str], log: Path, cwd: Path
    ) -> None:
        self.command, self.ready_url, self.env, self.log, self.cwd = (
            command,
            ready_url,
            env,
            log,
            cwd,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Server:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.ready_url, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.ready_url} not ready in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def rss_kib(pid: int) -> int:
    """A process's resident memory in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def base_env(**extra: str) -> dict[str, str]:
    """The environment a child sees: ours minus SHIM_* leftovers, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIM_")}
    env.update(extra)
    return env


def reference(backend: str, tmp: Path, *, latency_ms: float = 0) -> tuple[Server, str]:
    port = free_port()
    command = [*SHIM, "reference", backend, "--port", str(port)]
    if latency_ms:
        command += ["--latency-ms", str(latency_ms)]
    url = f"http://127.0.0.1:{port}"
    server = Server(
        command, ready_url=f"{url}/health", env=base_env(), log=tmp / f"{backend}.log", cwd=ROOT
    )
    return server.start(), url


def own_backend(
    tmp: Path,
    module: str = "testing_backend",
    *,
    app_dir: Path = ROOT / "tests" / "backends",
    **env: str,
) -> tuple[Server, str]:
    """One of the tests' own backends in tests/backends/ (or `app_dir`), under uvicorn."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port)]
    command += ["--app-dir", str(app_dir), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    ready = f"{url}/__received" if module == "testing_backend" else f"{url}/health"
    server = Server(
        command, ready_url=ready, env=base_env(**env), log=tmp / f"{module}.log", cwd=ROOT
    )
    return server.start(), url


class Shim:
    """`shim serve` as a child process, with its own state dir and ports."""

    def __init__(
        self, tmp: Path, *, rust_url: str, go_url: str, workers: int = 1, **env: str
    ) -> None:
        self.workers = workers
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.state_dir = tmp / "state"
        self.env = base_env(
            SHIM_RUST_URL=rust_url,
            SHIM_GO_URL=go_url,
            SHIM_STATE_DIR=str(self.state_dir),
            SHIM_PORT=str(self.port),
            SHIM_ADMIN_PORT=str(self.admin_port),
            SHIM_WORKERS=str(workers),
            **{"SHIM_PARITY_GATE": "false", **env},  # the gate's own tests turn it on
        )
        self.server = Server(
            [*SHIM, "serve"],
            ready_url=f"{self.url}/_shim/healthz",
            env=self.env,
            log=tmp / "shim.log",
            cwd=ROOT,
        )

    def start(self) -> Shim:
        """Started when every worker serves: the port opens with the first one."""
        self.server.start()
        deadline = time.monotonic() + 30
        while len(list((self.state_dir / "workers").glob("*.json"))) < self.workers:
            if time.monotonic() > deadline:
                raise AssertionError(f"only some of {self.workers} workers started")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.stop()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `shim ARGS` with this server's settings, as an operator would."""
        result = subprocess.run(
            [*SHIM, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"shim {args} failed: {result.stdout}{result.stderr}")
        return result


ETCD = "/usr/bin/etcd"


class EtcdServer:
    """A real etcd (Debian's etcd-server) on loopback ports with its own data dir."""

    def __init__(self, tmp: Path) -> None:
        self.data_dir = tmp / "etcd-data"
        self.port, self.peer_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "etcd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EtcdServer:
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            ETCD,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"etcd not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused etcd cannot die otherwise
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def env(self, prefix: str) -> dict[str, str]:
        """What a shim needs to keep its flags in this etcd under `prefix`."""
        return {
            "SHIM_FLAG_STORE": "etcd",
            "SHIM_ETCD__ENDPOINTS": self.url,
            "SHIM_ETCD__PREFIX": prefix,
        }
