"""The commands that run servers: `shim serve` (the process model is `shim.serving.process`), `shim
demo` (both reference backends and the shim) and `shim reference` (one stand-in backend)."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from shim.cli.common import Commands, config_option, load_config


def add_commands(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="run the proxy and its admin listener")
    config_option(serve)
    serve.add_argument("--host", help="proxy address (SHIM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="proxy port (SHIM_PORT, default 4120)")
    serve.add_argument("--admin-port", type=int, help="admin port (SHIM_ADMIN_PORT, default 4121)")
    serve.add_argument("--workers", type=int, help="worker processes (SHIM_WORKERS, default 1)")
    serve.set_defaults(run=run_serve)

    demo = commands.add_parser(
        "demo",
        help="reference Rust and Go backends plus the shim",
        description="Every port is checked before anything starts. The demo's state is "
        "state/demo/, wiped at start unless --keep-state; its admin token is in "
        "state/demo/admin-token (SHIM_ADMIN_TOKEN if set, else a new one).",
    )
    demo.add_argument("--port", type=int, help="proxy port (default 4120)")
    demo.add_argument("--admin-port", type=int, help="admin port (default 4121)")
    demo.add_argument("--rust-port", type=int, help="Rust backend (default 3100)")
    demo.add_argument("--go-port", type=int, help="Go backend (default 4110)")
    demo.add_argument(
        "--base-port",
        type=int,
        help="four ports from N: proxy N, admin N+1, rust N+2, go N+3 (each option above wins)",
    )
    demo.add_argument(
        "--keep-state",
        action="store_true",
        help="keep state/demo/ from the last demo (flags, audit, parity evidence)",
    )
    demo.add_argument("--workers", type=int, default=2, help="shim workers (default 2)")
    demo.set_defaults(run=_run_demo)

    reference = commands.add_parser("reference", help="serve one reference backend")
    reference.add_argument("backend", choices=["rust", "go"])
    reference.add_argument("--host", default="127.0.0.1")
    reference.add_argument("--port", type=int, help="default 3100 (rust) or 4110 (go)")
    reference.add_argument("--latency-ms", type=float, default=0.0, help="delay every answer")
    reference.add_argument(
        "--storage-dir", type=Path, help="where stored objects live (default: a new temp dir)"
    )
    reference.set_defaults(run=run_reference)


def run_serve(args: argparse.Namespace) -> int:
    from shim.serving.process import serve

    settings, _ = load_config(
        args, host=args.host, port=args.port, admin_port=args.admin_port, workers=args.workers
    )
    return serve(settings, config_file=args.config)


def run_reference(args: argparse.Namespace) -> int:
    from shim import logs
    from shim.reference.app import create_reference_app
    from shim.serving.process import serve_stand_in

    port = args.port if args.port is not None else (3100 if args.backend == "rust" else 4110)
    with tempfile.TemporaryDirectory(prefix="shim-reference-storage-") as scratch:
        storage_dir = args.storage_dir or Path(scratch)
        app = create_reference_app(
            args.backend, latency_ms=args.latency_ms, storage_dir=storage_dir
        )
        logs.configure("info")
        logging.getLogger("shim.reference").info(
            "reference %s backend on http://%s:%d", args.backend, args.host, port
        )
        serve_stand_in(app, host=args.host, port=port)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from shim.cli.demo import run_demo

    return run_demo(args)
