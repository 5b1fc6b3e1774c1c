"""The process model of `shim serve`: listening sockets, the environment the workers see,
uvicorn's configuration and the supervisor that runs the workers.

With the supervisor and the HTTP protocol, the only modules that import uvicorn (the CLI
calls in here). Spawned workers re-import the app and see only the environment, so
everything a worker needs is exported before the first one starts, and prometheus_client's
directory is prepared before anything imports it (the imports below stay in the functions).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from shim.cutover.workers import WorkerRegistry
from shim.errors import ConfigError
from shim.settings import Settings


def serve(settings: Settings, *, config_file: str | None) -> int:
    """Run the proxy and admin listeners under the supervisor until it stops; its exit code.

    `config_file` (the operator's --config) is exported resolved, for the workers.
    """
    if (settings.host, settings.port) == (settings.admin_host, settings.admin_port):
        raise ConfigError("the admin listener needs its own port", key="admin_port")
    _prepare_metrics_dir(settings.resolved_metrics_dir())
    from shim.serving.supervisor import BACKLOG, address_lock, listening_socket, reuseport_sockets

    # One socket per worker, so the kernel spreads connections (shim/serving/supervisor.py); the
    # supervisor runs for one worker too: SIGHUP (systemctl reload) replaces it in place,
    # and a worker that dies is started again.
    lock = None
    if settings.port:
        lock = address_lock(settings.host, settings.port, key="port")
    proxy_sockets = reuseport_sockets(settings.host, settings.port, settings.workers, key="port")
    proxy_socket = proxy_sockets[0]
    admin_socket = listening_socket(settings.admin_host, settings.admin_port, key="admin_port")
    # Spawned workers re-import the app and see only the environment.
    os.environ.update(
        {
            "SHIM_HOST": settings.host,
            "SHIM_PORT": str(proxy_socket.getsockname()[1]),
            "SHIM_ADMIN_HOST": settings.admin_host,
            "SHIM_ADMIN_PORT": str(admin_socket.getsockname()[1]),
            "SHIM_WORKERS": str(settings.workers),
        }
    )
    if config_file:
        os.environ["SHIM_CONFIG"] = str(Path(config_file).resolve())
    from shim import logs
    from shim.serving.protocol import ShimHttpProtocol

    ShimHttpProtocol.configure(settings)
    config = uvicorn.Config(
        "shim.app:create_app",
        factory=True,
        loop="uvloop",
        http=ShimHttpProtocol,  # httptools, plus read deadlines and JSON refusals
        limit_concurrency=None,  # counted per request by ShimHttpProtocol, answered in JSON
        backlog=BACKLOG,
        lifespan="on",
        workers=settings.workers,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-* are the proxy's own business (shim/headers.py)
        log_level=settings.log_level,
        log_config=logs.uvicorn_log_config(settings.log_level),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )
    logs.configure(settings.log_level)
    logging.getLogger("shim.serve").info(
        "proxy http://%s:%d admin http://%s:%d workers %d state %s",
        settings.host,
        proxy_socket.getsockname()[1],
        settings.admin_host,
        admin_socket.getsockname()[1],
        settings.workers,
        settings.state_dir,
    )
    try:
        return _supervise(config, settings, proxy_sockets, admin_socket)
    finally:
        if lock is not None:
            lock.close()  # held until every worker has stopped


def _supervise(
    config: uvicorn.Config,
    settings: Settings,
    proxy_sockets: list[socket.socket],
    admin_socket: socket.socket,
) -> int:
    """Several workers, one proxy socket each (shim/serving/supervisor.py)."""
    from shim.metrics import worker_exited
    from shim.serving.supervisor import Supervisor

    registry = WorkerRegistry(settings.state_dir)

    def lost(pid: int) -> None:
        registry.remove(pid)
        worker_exited(pid)  # else a dead worker's flag gauges would keep counting

    return Supervisor(
        config,
        proxy_sockets,
        [admin_socket],
        ready=lambda pid: (registry.directory / f"{pid}.json").exists(),
        lost=lost,
    ).run()


def _prepare_metrics_dir(path: Path) -> None:
    """prometheus_client's multiprocess directory: wiped, and exported before any worker
    (or this process) imports prometheus_client."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot prepare {path}: {exc.strerror}", key="metrics_dir") from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path.resolve())


def serve_stand_in(app: ASGIApp, *, host: str, port: int) -> None:
    """One app in this process, no supervisor: a reference backend (a stand-in for the real
    Rust or Go service, never the shim itself)."""
    from shim import logs

    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        log_config=logs.uvicorn_log_config("warning"),
        access_log=False,
    )
