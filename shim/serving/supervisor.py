"""`shim serve --workers N`: worker processes, each accepting on a listening socket of its own.

uvicorn's supervisor hands every worker the same listening socket, and the worker that wakes
first accepts a whole burst of new connections: 32 keep-alive connections split 32/0, 26/6 or
24/8 between two workers here, so a second worker added anywhere from 1.0x to 1.6x. With one
`SO_REUSEPORT` socket per worker (Linux) the kernel spreads new connections across the workers
by their addresses. Worker slots keep their socket: a worker that dies is replaced on the same
one, and connections that arrive meanwhile wait in its queue, none refused.

Because any process of this user could join a `SO_REUSEPORT` group and silently take a share of
the connections, the supervisor also holds a lock named after the address (an abstract Unix
socket): a second `shim serve` on the same port fails the way a plain bind would.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from types import FrameType

import uvicorn

from shim.errors import ConfigError

log = logging.getLogger("shim.supervisor")
RESPAWN_PAUSE_SECONDS = 1.0  # a worker that died younger than this is replaced after a pause
CHECK_SECONDS = 0.2
READY_SECONDS = 30.0  # a replacement worker must serve within this, or the old one stays
# Connections the kernel holds for a worker that has not accepted them yet: a burst larger than
# this is not refused but retried by the clients' SYNs a second later (capped by somaxconn).
BACKLOG = 4096

multiprocessing.allow_connection_pickling()  # sockets travel to spawned workers
_spawn = multiprocessing.get_context("spawn")


def listening_socket(host: str, port: int, *, key: str, reuse_port: bool = False) -> socket.socket:
    """A bound, listening, inheritable TCP socket; ConfigError naming `key` when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", key=key) from None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def reuseport_sockets(host: str, port: int, count: int, *, key: str) -> list[socket.socket]:
    """`count` listening sockets on one address, in one SO_REUSEPORT group."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(listening_socket(host, port, key=key, reuse_port=True))
            port = sockets[0].getsockname()[1]  # port 0: the others join the one chosen
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def address_lock(host: str, port: int, *, key: str) -> socket.socket:
    """Hold the address for this process; a second holder gets EADDRINUSE, as with bind."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0cutover-shim:{host}:{port}")
    except OSError as exc:
        lock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror} (another shim serves it)", key=key
        ) from None
    return lock


def _serve(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """A worker: uvicorn serving this slot's proxy socket and the shared ones."""
    config.configure_logging()
    uvicorn.Server(config).run(sockets=sockets)


class Supervisor:
    """Starts one worker per proxy socket, replaces the ones that die, stops them all on
    SIGINT or SIGTERM (each worker shuts down gracefully on the SIGTERM it is sent), and on
    SIGHUP replaces them one at a time (a new route table, without a moment of downtime).

    `ready(pid)` says when a new worker serves; `lost(pid)` cleans up after one that died
    without shutting down (its status file, its live metrics).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        proxy_sockets: list[socket.socket],
        shared_sockets: list[socket.socket],
        ready: Callable[[int], bool],
        lost: Callable[[int], None],
    ) -> None:
        self.config = config
        self.ready = ready
        self.lost = lost
        self.slots = [[proxy, *shared_sockets] for proxy in proxy_sockets]
        self.workers: list[SpawnProcess | None] = [None] * len(self.slots)
        self.started: list[float] = [0.0] * len(self.slots)
        self.stopping = False
        self.restart = False

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGHUP, self._restart)
        for slot in range(len(self.slots)):
            self._start(slot)
        while not self.stopping:
            time.sleep(CHECK_SECONDS)
            if self.restart:
                self.restart = False
                self._replace_all()
            for slot, worker in enumerate(self.workers):
                if self.stopping or worker is None or worker.is_alive():
                    continue
                lived = time.monotonic() - self.started[slot]
                log.error(
                    "worker %s exited (code %s) after %.1f s; starting a new one",
                    worker.pid,
                    worker.exitcode,
                    lived,
                )
                assert worker.pid is not None
                self.lost(worker.pid)
                if lived < RESPAWN_PAUSE_SECONDS:
                    time.sleep(RESPAWN_PAUSE_SECONDS)  # no hot loop when it cannot start
                self._start(slot)
        self._stop_all()
        return 0

    def _start(self, slot: int) -> None:
        worker = _spawn.Process(target=_serve, args=(self.config, self.slots[slot]))
        worker.start()
        self.workers[slot] = worker
        self.started[slot] = time.monotonic()
        log.info("started worker %s on socket %d of %d", worker.pid, slot + 1, len(self.slots))

    def _replace_all(self) -> None:
        """Each slot: a new worker on the same socket, serving, before the old one stops."""
        log.info("SIGHUP: replacing the workers one at a time")
        for slot, old in enumerate(self.workers):
            if self.stopping:
                return
            self._start(slot)
            new = self.workers[slot]
            assert new is not None and new.pid is not None
            deadline = time.monotonic() + READY_SECONDS
            while not self.ready(new.pid) and new.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not (new.is_alive() and self.ready(new.pid)):
                log.error("the new worker %s did not start; keeping the old one", new.pid)
                new.kill()
                new.join()
                self.workers[slot] = old
                continue
            if old is not None and old.is_alive():
                self._stop_workers([old])

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _restart(self, signum: int, frame: FrameType | None) -> None:
        self.restart = True

    def _stop_all(self) -> None:
        self._stop_workers([w for w in self.workers if w is not None and w.is_alive()])

    def _stop_workers(self, alive: list[SpawnProcess]) -> None:
        for worker in alive:
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 10) + 5
        for worker in alive:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.error("worker %s did not stop in time; killing it", worker.pid)
                worker.kill()
                worker.join()
