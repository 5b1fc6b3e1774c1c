"""Worker status files: what a flip waits on."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from shim.workers import WorkerRegistry, WorkerStatus


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
