"""Which workers are alive and which flag generation each one serves.

Every worker publishes a small status file in `SHIM_STATE_DIR/workers/` when it applies a
new flag generation and once a second as a heartbeat. A writer (CLI or admin API) reads them
after a change to report "applied by 4/4 workers" or name the ones that lag. A worker is
live when its process exists and its heartbeat is recent; files of dead workers are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

WORKERS_DIR = "workers"
HEARTBEAT_SECONDS = 1.0
LIVE_WITHIN_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What one worker says about itself."""

    pid: int
    host: str
    generation: int
    heartbeat: float  # time.time() of the last publish
    started: float
    pins: Mapping[str, str] = field(default_factory=dict)
    state: Mapping[str, Any] | None = None  # the flag state served (`flags.state_document`)
    parity_gate: bool | None = None  # the deployment's gate setting, for operators' commands
    instance: str | None = None  # host:port of the `shim serve` it belongs to
    applied_at: float | None = None  # time.time() when it applied `generation`

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.heartbeat)


@dataclass(frozen=True, slots=True)
class Applied:
    """How far a generation has reached."""

    generation: int
    workers: tuple[WorkerStatus, ...]

    @property
    def applied(self) -> tuple[WorkerStatus, ...]:
        return tuple(w for w in self.workers if w.generation >= self.generation)

    @property
    def lagging(self) -> tuple[WorkerStatus, ...]:
        return tuple(w for w in self.workers if w.generation < self.generation)

    @property
    def complete(self) -> bool:
        return not self.lagging

    def summary(self) -> str:
        if not self.workers:
            return "no running workers found: the change applies when the shim starts"
        text = f"applied by {len(self.applied)}/{len(self.workers)} workers"
        if self.lagging:
            lag = ", ".join(
                f"{w.instance + ' ' if w.instance else ''}pid {w.pid} (generation {w.generation})"
                for w in self.lagging
            )
            text += f"; lagging: {lag}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "workers": len(self.workers),
            "applied": len(self.applied),
            "lagging": [w.pid for w in self.lagging],
            "complete": self.complete,
            "summary": self.summary(),
        }


class WaitsForWorkers:
    """`applied` and the waits for it, for any registry that can list its `live()` workers
    (the file registry below, etcd's in `shim.cutover.etcd_fleet`)."""

    def live(self) -> list[WorkerStatus]:
        raise NotImplementedError

    def applied(self, generation: int) -> Applied:
        return Applied(generation, tuple(self.live()))

    def wait_applied(self, generation: int, *, within: float) -> Applied:
        """Poll until every live worker serves `generation` or `within` seconds pass."""
        deadline = time.monotonic() + within
        while True:
            applied = self.applied(generation)
            if applied.complete or time.monotonic() >= deadline:
                return applied
            time.sleep(0.05)

    async def wait_applied_async(self, generation: int, *, within: float) -> Applied:
        deadline = time.monotonic() + within
        while True:
            applied = await asyncio.to_thread(self.applied, generation)
            if applied.complete or time.monotonic() >= deadline:
                return applied
            await asyncio.sleep(0.05)


class WorkerRegistry(WaitsForWorkers):
    """The status files of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / WORKERS_DIR
        self.host = socket.gethostname()
        self._lock = threading.Lock()

    def publish(self, status: WorkerStatus) -> None:
        """Replace this worker's file (rename, so a reader never sees half of it).

        The heartbeat and a flag change may publish at the same moment from two threads:
        the lock and a per-thread temp name keep them from renaming each other's file.
        """
        path = self.directory / f"{status.pid}.json"
        temporary = self.directory / f".{status.pid}.{threading.get_ident()}.tmp"
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(orjson.dumps(asdict(status)))
            os.replace(temporary, path)

    def remove(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{pid}.json").unlink()

    def live(self) -> list[WorkerStatus]:
        """Workers whose process exists here and whose heartbeat is recent."""
        workers = []
        for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []:
            try:
                status = WorkerStatus(**orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError, TypeError):
                continue  # being replaced, or not ours
            if status.host == self.host and not _process_exists(status.pid):
                self.remove(status.pid)
                continue
            if status.age <= LIVE_WITHIN_SECONDS:
                workers.append(status)
        return workers


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
