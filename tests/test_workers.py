"""Worker processes: status files (what a flip waits on), sockets, replacement."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from shim.cutover.workers import WorkerRegistry, WorkerStatus
from tests.servers import SHIM, Shim, free_port


def status(generation: int) -> WorkerStatus:
    now = time.time()
    return WorkerStatus(
        pid=os.getpid(),
        host=WorkerRegistry(Path("/")).host,
        generation=generation,
        heartbeat=now,
        started=now,
    )


def test_heartbeat_and_flag_change_publishing_at_once_never_fail(tmp_path: Path) -> None:
    registry = WorkerRegistry(tmp_path)
    errors: list[BaseException] = []

    def publish_many(offset: int) -> None:
        try:
            for generation in range(500):
                registry.publish(status(generation + offset))
        except BaseException as exc:  # the race this guards against raised FileNotFoundError
            errors.append(exc)

    threads = [threading.Thread(target=publish_many, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    [live] = registry.live()
    assert live.pid == os.getpid()


def test_applied_counts_live_workers_and_names_the_laggards(tmp_path: Path) -> None:
    registry = WorkerRegistry(tmp_path)
    registry.publish(status(3))
    assert registry.applied(3).summary() == "applied by 1/1 workers"
    lagging = registry.applied(4)
    assert not lagging.complete and f"pid {os.getpid()} (generation 3)" in lagging.summary()
    registry.remove(os.getpid())
    assert "no running workers" in registry.applied(4).summary()


def worker_pids(shim: Shim) -> set[int]:
    return {int(path.stem) for path in (shim.state_dir / "workers").glob("*.json")}


def connections_per_worker(port: int, pids: set[int]) -> dict[int, int]:
    """Established connections on `port`, by the worker process holding them (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    counts = dict.fromkeys(pids, 0)
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                counts[pid] += 1
    return counts


def test_a_burst_of_connections_is_spread_over_the_workers(
    start_shim: Callable[..., Shim],
) -> None:
    """With one shared listening socket the first worker awake took a whole burst (32/0 was
    seen); each worker now has a socket of its own and the kernel spreads the connections."""
    shim = start_shim(workers=2)
    clients = [httpx.Client(base_url=shim.url) for _ in range(64)]
    try:
        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(lambda c: c.get("/_shim/healthz").status_code, clients))
        assert statuses == [200] * 64
        counts = connections_per_worker(shim.port, worker_pids(shim))
    finally:
        for client in clients:
            client.close()
    assert sum(counts.values()) == 64 and len(counts) == 2, counts
    assert min(counts.values()) >= 16, counts  # binomial(64, 1/2): below 16 is ~1 in 10^5


def test_a_worker_that_dies_is_replaced_on_its_own_socket(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim(workers=2)
    before = worker_pids(shim)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while len((now := worker_pids(shim) - {victim}) - before) < 1:
        assert time.monotonic() < deadline, "no new worker"
        time.sleep(0.1)
    assert len(now) == 2
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        statuses = [client.get(f"{shim.url}/_shim/healthz").status_code for _ in range(40)]
    assert statuses == [200] * 40  # new connections land on both sockets, both served
    # The dead worker's live gauges are gone: after a flip only Go serves embed.
    assert "applied by 2/2 workers" in shim.cli("flags", "set", "embed", "go").stdout
    text = httpx.get(f"{shim.admin_url}/metrics").text
    assert 'shim_flag_serving{backend="rust",endpoint="embed"} 0.0' in text, text
    assert 'shim_flag_serving{backend="go",endpoint="embed"} 1.0' in text


def test_a_second_shim_on_the_same_port_is_refused(start_shim: Callable[..., Shim]) -> None:
    """SO_REUSEPORT would let it join silently and take a share of the connections."""
    shim = start_shim(workers=2)
    second = subprocess.run(
        [*SHIM, "serve", "--workers", "2", "--admin-port", str(free_port())],
        env={**shim.env, "SHIM_STATE_DIR": str(shim.state_dir.parent / "other")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 2
    assert "another shim serves it" in second.stderr


def test_sighup_replaces_every_worker_while_requests_keep_being_answered(
    start_shim: Callable[..., Shim],
) -> None:
    """A rolling restart: requests in flight finish, no answer is an error. A connection
    that its old worker accepted in the instant it stopped can still be reset (uvicorn
    closes connections that have not sent a request yet), so resets are counted, bounded."""
    shim = start_shim(workers=2)
    before = worker_pids(shim)
    statuses: list[int] = []
    resets = 0
    done = threading.Event()

    def keep_asking() -> None:
        nonlocal resets
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not done.is_set():
                try:
                    statuses.append(client.get(f"{shim.url}/_shim/healthz").status_code)
                except httpx.TransportError:
                    resets += 1

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        assert shim.server.process is not None
        shim.server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 40
        while worker_pids(shim) & before or len(worker_pids(shim)) != 2:
            assert time.monotonic() < deadline, worker_pids(shim)
            time.sleep(0.1)
    finally:
        done.set()
        asker.join()
    assert len(statuses) > 50 and set(statuses) == {200}
    assert resets <= len(statuses) // 50, (resets, len(statuses))


def test_sighup_replaces_a_single_worker_too(start_shim: Callable[..., Shim]) -> None:
    """`systemctl reload` sends SIGHUP; with one worker it used to end the service (exit
    129, which systemd counts as a clean exit and does not restart)."""
    shim = start_shim(workers=1)
    [before] = worker_pids(shim)
    assert shim.server.process is not None
    shim.server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while worker_pids(shim) in ({before}, set()):
        assert time.monotonic() < deadline, worker_pids(shim)
        assert shim.server.process.poll() is None, "shim serve exited on SIGHUP"
        time.sleep(0.1)
    assert httpx.get(f"{shim.url}/_shim/healthz").status_code == 200
    assert shim.server.process.poll() is None
