"""The `shim` command. The only module that imports uvicorn.

Operator mistakes (bad config, refused flips) are one line on stderr and a non-zero exit:
2 for configuration errors, 1 for refused operations.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from adapters.declared import ANSWER_PROGRAM, PROGRAM_KEYS, REQUEST_PROGRAM, JqAdapter
from shim import __version__
from shim.errors import ConfigError, FlagError, FlagStateError, ShimError, UnknownEndpoint
from shim.flag_state import Flag, check_pins
from shim.flags import FlagStore, cli_actor
from shim.routes import GO_PREFIX, RouteTable, load_routes
from shim.settings import Settings, load_settings
from shim.store import Acknowledgements
from shim.types import Backend
from shim.views import describe, flags_view
from shim.workers import WorkerRegistry, WorkerStatus

if TYPE_CHECKING:
    import uvicorn

EXIT_REFUSED = 1
EXIT_CONFIG = 2
EXIT_LAGGING = 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"shim: config error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except (FlagError, FlagStateError) as exc:
        print(f"shim: refused: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except ShimError as exc:
        print(f"shim: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shim", description="Cut API traffic over from the Rust to the Go backend."
    )
    parser.add_argument("--version", action="version", version=f"cutover-shim {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy and its admin listener")
    _config_option(serve)
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

    flags = commands.add_parser("flags", help="show every endpoint's flag, or change one")
    _config_option(flags)
    flags.add_argument(
        "--history",
        nargs="?",
        const="",
        metavar="ENDPOINT",
        help="show the audit trail (of one endpoint) instead of the table",
    )
    flags.add_argument(
        "--limit",
        type=_at_least_one,
        default=50,
        help="history: the newest N changes, N 1 or more (default 50)",
    )
    flags.set_defaults(run=run_flags_table)
    flag_commands = flags.add_subparsers(metavar="ACTION")
    flag_set = flag_commands.add_parser(
        "set", help="route an endpoint to rust or go", formatter_class=RouteNamesHelp
    )
    _config_option(flag_set)
    flag_set.add_argument("endpoint", help=f"the endpoint to change: {ENDPOINTS}")
    flag_set.add_argument(
        "backend",
        choices=["rust", "go"],
        metavar="BACKEND",
        help="rust or go: who serves the endpoint",
    )
    flag_set.add_argument(
        "--shadow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mirror requests to the other backend and compare (parity); default: unchanged",
    )
    flag_set.add_argument(
        "--percent",
        type=int,
        help="canary: this share of callers (0-100) served by Go, whatever BACKEND says; "
        "without it any canary is cleared",
    )
    flag_set.add_argument("--reason", help="recorded in the audit trail")
    flag_set.add_argument(
        "--force",
        action="store_true",
        help="move traffic towards Go without a PASS parity verdict (audited as forced)",
    )
    flag_set.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would change and the parity evidence; change nothing",
    )
    flag_set.set_defaults(run=run_flags_set)
    export = flag_commands.add_parser("export", help="print the flag state and audit as JSON")
    _config_option(export)
    export.set_defaults(run=run_flags_export)
    load = flag_commands.add_parser(
        "import", help="load an export into this store (e.g. a host's state into etcd)"
    )
    _config_option(load)
    load.add_argument("file", type=Path, help="the output of `shim flags export`")
    load.add_argument("--reason", help="recorded in the audit trail")
    load.set_defaults(run=run_flags_import)

    rollback = commands.add_parser("rollback", help="send endpoints (default: all) back to rust")
    _config_option(rollback)
    rollback.add_argument("endpoints", nargs="*", metavar="ENDPOINT")
    rollback.add_argument("--reason", help="recorded in the audit trail")
    rollback.set_defaults(run=run_rollback)

    parity = commands.add_parser("parity", help="parity verdicts from shadow traffic")
    _config_option(parity)
    parity.add_argument("--endpoint", help="one endpoint only")
    parity.add_argument("--markdown", action="store_true", help="rows in the seed's log format")
    parity.add_argument("--json", action="store_true", help="everything, as JSON")
    parity.set_defaults(run=run_parity)
    parity_commands = parity.add_subparsers(metavar="ACTION")
    parity_probe = parity_commands.add_parser(
        "probe",
        help="send the same requests to both backends now and compare",
        formatter_class=RouteNamesHelp,
    )
    _config_option(parity_probe)
    parity_probe.add_argument("endpoint", help=f"an idempotent endpoint: {PROBEABLE}")
    parity_probe.add_argument(
        "--samples", type=_at_least_one, default=5, help="requests, 1 or more (default 5)"
    )
    parity_probe.add_argument(
        "--input", type=Path, help="JSON lines of request bodies (default: built-in rehearsal)"
    )
    parity_probe.add_argument(
        "--face",
        choices=["rust", "go"],
        default="rust",
        help="the dialect the inputs are written in (default rust)",
    )
    parity_probe.add_argument(
        "--record", action="store_true", help="also keep the comparisons in the parity store"
    )
    parity_probe.add_argument(
        "--markdown", action="store_true", help="the verdict as a row in the seed's log format"
    )
    parity_probe.set_defaults(run=run_parity_probe)
    parity_reset = parity_commands.add_parser(
        "reset", help="forget the parity samples (of one endpoint), e.g. after fixing a drift"
    )
    _config_option(parity_reset)
    parity_reset.add_argument("--endpoint", help="one endpoint only (default: all)")
    parity_reset.set_defaults(run=run_parity_reset)

    bench = commands.add_parser(
        "bench", help="the shim vs Python's floor, the common recipe and direct, same run"
    )
    bench.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    bench.add_argument("--connections", type=int, default=32)
    bench.add_argument("--rounds", type=int, default=2, help="A B A B alternations (default 2)")
    bench.add_argument(
        "--scenarios",
        default="small,embed,storage,shadow,jq,burst,overload",
        help="comma-separated: small, embed, storage, shadow, jq, burst, overload (default all)",
    )
    bench.add_argument(
        "--shadow-rate",
        type=float,
        default=1000.0,
        help="requests per second, paced, for shadow off vs on (default 1000)",
    )
    bench.add_argument(
        "--embed-batches",
        default="1,64,256",
        help="texts per request of the embed series, besides 8 (default 1,64,256; '' for none)",
    )
    bench.add_argument(
        "--burst", type=int, default=2000, help="requests at once in the burst scenario"
    )
    bench.add_argument(
        "--overload",
        type=int,
        default=4000,
        help="connections at once to one worker in front of a slow backend (overload)",
    )
    bench.add_argument("--json", type=Path, help="also write the results here")
    bench.add_argument(
        "--plot", type=Path, help="latency percentiles as a PNG here (needs matplotlib)"
    )
    bench.set_defaults(run=run_bench)

    check = commands.add_parser("check", help="validate settings, route table and flag state")
    _config_option(check)
    check.add_argument(
        "--explain",
        action="store_true",
        help="also print, per endpoint, faces, idempotency and what each translation loses",
    )
    check.set_defaults(run=run_check)
    return parser


ENDPOINTS, PROBEABLE = "{endpoints}", "{probeable}"  # filled in by RouteNamesHelp


class RouteNamesHelp(argparse.HelpFormatter):
    """Help that lists the route table's endpoint names (all, or those a probe can compare),
    read only when help is printed: building the parser must not read the route table."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text is None or (ENDPOINTS not in text and PROBEABLE not in text):
            return text
        from shim.probe import unprobeable

        try:
            routes = load_routes(load_settings().resolved_routes_file()).routes
        except ShimError:
            unknown = "see `shim flags` (the route table cannot be read now)"
            return text.replace(ENDPOINTS, unknown).replace(PROBEABLE, unknown)
        probeable = [name for name, route in routes.items() if unprobeable(route) is None]
        return text.replace(ENDPOINTS, ", ".join(routes)).replace(PROBEABLE, ", ".join(probeable))


def _at_least_one(text: str) -> int:
    """argparse type: a whole number of 1 or more (0 or -1 would silently mean something)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="TOML settings file (SHIM_CONFIG, default config/shim.toml)"
    )


def _load(args: argparse.Namespace, **overrides: object) -> tuple[Settings, RouteTable]:
    settings = load_settings(getattr(args, "config", None), **overrides)
    routes = load_routes(settings.resolved_routes_file())
    check_pins(settings.pin, routes)
    return settings, routes


# -- serve ------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings, _ = _load(
        args, host=args.host, port=args.port, admin_port=args.admin_port, workers=args.workers
    )
    if (settings.host, settings.port) == (settings.admin_host, settings.admin_port):
        raise ConfigError("the admin listener needs its own port", key="admin_port")
    _prepare_metrics_dir(settings.resolved_metrics_dir())
    from shim.supervisor import BACKLOG, address_lock, listening_socket, reuseport_sockets

    # One socket per worker, so the kernel spreads connections (shim/supervisor.py); the
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
    if args.config:
        os.environ["SHIM_CONFIG"] = str(Path(args.config).resolve())
    from shim import logs
    from shim.protocol import ShimHttpProtocol

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
    """Several workers, one proxy socket each (shim/supervisor.py)."""
    from shim.metrics import worker_exited
    from shim.supervisor import Supervisor

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


# -- reference backends ----------------------------------------------------------------------


def run_reference(args: argparse.Namespace) -> int:
    import uvicorn

    from shim import logs
    from shim.reference.app import create_reference_app

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
        uvicorn.run(
            app,
            host=args.host,
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            log_config=logs.uvicorn_log_config("warning"),
            access_log=False,
        )
    return 0


# -- flags -------------------------------------------------------------------------------


def _operator_view(
    args: argparse.Namespace,
) -> tuple[Settings, RouteTable, FlagStore, Acknowledgements]:
    """The store as an operator's command sees it: pins from this environment and from every
    running worker (a systemd drop-in's pin is in the service's environment, not ours), and
    the parity gate as the running shim serves with it."""
    from shim.fleet import open_stores

    settings, routes = _load(args)
    stores = open_stores(settings, routes)
    registry = stores.workers
    workers = registry.live()
    pins: dict[str, Backend] = dict(settings.pin)
    for worker in workers:
        pins.update({k: v for k, v in worker.pins.items() if v in ("rust", "go")})  # type: ignore[misc]
    store = stores.flags
    store.pins = pins
    return _deployment_gate(settings, workers), routes, store, registry


def _deployment_gate(settings: Settings, workers: list[WorkerStatus]) -> Settings:
    """The parity gate of the running shim wins over this shell's: a safety policy is the
    deployment's, not whoever types the command (on if any worker has it on)."""
    published = [w.parity_gate for w in workers if w.parity_gate is not None]
    if not published:
        return settings  # nothing running: this environment is the deployment
    deployed = any(published)
    if deployed != settings.parity_gate:
        print(
            f"note: this shell has parity_gate={str(settings.parity_gate).lower()} but the "
            f"running shim serves with it {'on' if deployed else 'off'}; following the "
            "deployment",
            file=sys.stderr,
        )
    return settings.model_copy(update={"parity_gate": deployed})


def _gate_setting(registry: Acknowledgements) -> str:
    """Where the gate setting in force comes from, for the audit record."""
    if any(w.parity_gate is not None for w in registry.live()):
        return "the running shim's parity_gate=false (SHIM_PARITY_GATE)"
    return "SHIM_PARITY_GATE=false in the operator's environment, no shim running"


def run_flags_table(args: argparse.Namespace) -> int:
    if args.history is not None:
        return run_flags_history(args)
    _, routes, store, registry = _operator_view(args)
    state, problem = store.read_or_last_good()
    if problem is not None:
        print(f"warning: {problem.message}", file=sys.stderr)
        print("showing the last good state the shim knows:", file=sys.stderr)
    view = flags_view(state, routes, store.pins, registry.live())
    rows = [("ENDPOINT", "SERVE", "SHADOW", "CANARY%", "PINNED BY", "SOURCE", "LAST CHANGE")]
    for name, flag in view["endpoints"].items():
        changed = f"{flag['changed_at']} {flag['actor']}" if flag["changed_at"] else "-"
        rows.append(
            (
                name + (" (go-only)" if flag["go_only"] else ""),
                flag["serve"],
                "on" if flag["shadow"] else "off",
                "-" if flag["percent"] is None else str(flag["percent"]),
                flag["pinned_by"] or "-",
                flag["source"],
                changed,
            )
        )
    print(_table(rows))
    applied = registry.applied(state.generation)
    print(f"\ngeneration {state.generation} · {applied.summary()} · {store.backend.describe()}")
    for warning in view["warnings"]:
        print(f"warning: {warning}")
    return 0


def run_flags_history(args: argparse.Namespace) -> int:
    from shim.fleet import open_stores

    settings, routes = _load(args)
    endpoint = args.history or None
    if endpoint is not None and endpoint not in routes:
        raise UnknownEndpoint(f"no endpoint {endpoint!r} in the route table")
    backend = open_stores(settings, routes).flags.backend
    trail = backend.audit(endpoint)
    if trail.unreadable:
        where = backend.describe_audit()
        print(f"warning: {trail.unreadable} unreadable line(s) in {where} skipped", file=sys.stderr)
    records = trail.records[-args.limit :]
    if not records:
        print("no flag changes recorded yet")
        return 0
    rows = [("TIME", "GEN", "ENDPOINT", "CHANGE", "ACTOR", "REASON")]
    for record in records:
        change = f"{_describe_settings(record['before'])} -> {_describe_settings(record['after'])}"
        gate = record.get("gate")
        if record.get("forced"):
            change += " (forced)"
        elif isinstance(gate, dict) and gate.get("decision") == "off":
            change += " (gate off)"
        rows.append(
            (
                record["time"],
                str(record["generation"]),
                record["endpoint"],
                change,
                _actor(record),
                record.get("reason") or "-",
            )
        )
    print(_table(rows))
    return 0


def _actor(record: dict[str, Any]) -> str:
    """Who made a change, and on which instance when the audit is a fleet's."""
    actor = str(record.get("actor") or "-")
    origin = record.get("instance")
    return f"{actor}@{origin}" if isinstance(origin, str) else actor


def run_flags_export(args: argparse.Namespace) -> int:
    from shim.fleet import export_document, open_stores

    settings, routes = _load(args)
    document = export_document(open_stores(settings, routes).flags)
    print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    return 0


def run_flags_import(args: argparse.Namespace) -> int:
    from shim.fleet import import_document

    settings, _, store, registry = _operator_view(args)
    change = import_document(
        store, orjson.loads(args.file.read_bytes()), actor=cli_actor(), reason=args.reason
    )
    print(f"imported {args.file} into {store.backend.describe()} (generation {change})")
    return _report(registry, change, settings)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _report(registry: Acknowledgements, generation: int, settings: Settings) -> int:
    """Wait for the workers to apply `generation`; exit 3 if some lag behind."""
    applied = registry.wait_applied(generation, within=settings.flip_wait_seconds)
    print(applied.summary(), file=sys.stdout if applied.complete else sys.stderr)
    return 0 if applied.complete else EXIT_LAGGING


def run_flags_set(args: argparse.Namespace) -> int:
    from shim.fleet import open_stores
    from shim.gate import gated_set

    settings, routes, store, registry = _operator_view(args)
    decision, change = gated_set(
        settings,
        store,
        open_stores(settings, routes).parity,
        args.endpoint,
        serve=args.backend,
        shadow=args.shadow,
        percent=args.percent,
        actor=cli_actor(),
        reason=args.reason,
        force=args.force,
        dry_run=args.dry_run,
        gate_setting=_gate_setting(registry),
    )
    if args.dry_run:
        print(
            f"dry run: {args.endpoint}: {_describe(decision.current)} -> "
            f"{_describe(decision.proposed)}"
        )
        if decision.verdict is not None:
            print(f"  parity: {decision.verdict.headline()}")
        for warning in decision.warnings:
            print(f"  warning: {warning}")
        print(f"  gate: {'allows' if decision.allowed else 'refuses'}: {decision.reason}")
        if not decision.allowed and args.force:
            print("  --force: the change would go through, recorded as forced in the audit trail")
        print("nothing changed")
        return 0 if decision.allowed or args.force else EXIT_REFUSED
    if change is None:
        print(f"{args.endpoint}: already {_describe(decision.current)}; nothing changed")
        return 0
    if change.forced:
        print(
            f"forced past the parity gate (recorded in the audit trail): {decision.reason}",
            file=sys.stderr,
        )
    print(
        f"{change.endpoint}: {_describe(change.before)} -> {_describe(change.after)} "
        f"(generation {change.generation})"
    )
    return _report(registry, change.generation, settings)


def run_rollback(args: argparse.Namespace) -> int:
    settings, _, store, registry = _operator_view(args)
    changes = store.rollback(args.endpoints or None, actor=cli_actor(), reason=args.reason)
    if not changes:
        print("nothing to roll back: every named endpoint is already on rust")
        return 0
    for change in changes:
        print(
            f"{change.endpoint}: {_describe(change.before)} -> {_describe(change.after)} "
            f"(generation {change.generation})"
        )
    return _report(registry, changes[0].generation, settings)


def _describe(flag: Flag) -> str:
    return _describe_settings(flag.settings())


def _describe_settings(settings: dict[str, Any]) -> str:
    return describe(settings)


# -- check -------------------------------------------------------------------------------


def run_check(args: argparse.Namespace) -> int:
    from shim.fleet import open_stores

    settings, routes = _load(args)
    stores = open_stores(settings, routes)
    try:
        state = stores.flags.read()  # a corrupt state is an error here, before a worker sees it
    finally:
        stores.close()
    go_only = [name for name, route in routes.routes.items() if route.go_only]
    print(
        f"ok: {len(routes.routes)} endpoints ({len(go_only)} Go-only), "
        f"route table {settings.resolved_routes_file()}, flag generation {state.generation}, "
        f"pins {', '.join(f'{e}={b}' for e, b in sorted(settings.pin.items())) or 'none'}"
    )
    if args.explain:
        print()
        print(explain_routes(routes))
    return 0


def explain_routes(routes: RouteTable) -> str:
    """Per endpoint: faces, idempotency, and for each client face x serving backend whether
    bytes stream untouched or which adapter translates, and what that loses."""
    lines = []
    for name, route in routes.routes.items():
        adapter = route.adapter.name if route.adapter else "none (bytes)"
        if not route.idempotent_methods:
            idempotent = "no"
        elif route.repeat_rule is not None:
            idempotent = route.repeat_rule
        else:
            idempotent = ", ".join(sorted(route.idempotent_methods))
        kind = "Go-only" if route.go_only else f"default {route.default}"
        lines.append(f"{name}  ({kind}; adapter {adapter}; idempotent: {idempotent})")
        for dialect, face in route.faces.items():
            paths = face.template + (f", {GO_PREFIX}{face.template}" if dialect == "go" else "")
            lines.append(f"  {dialect:<4} face    {' '.join(sorted(face.methods))} {paths}")
        for client in route.faces:
            for backend in route.faces:
                if route.needs_rewrite(client, backend):
                    how = f"translated by {adapter}"
                    if isinstance(route.adapter, JqAdapter):
                        pair = (REQUEST_PROGRAM[client, backend], ANSWER_PROGRAM[client, backend])
                        how += f" ({', '.join(pair)})"
                    loss = route.losses(client, backend)
                    if loss:
                        how += f"; loses {route.describe_loss(loss)} (X-Shim-Lossy: {loss})"
                else:
                    how = "streamed untouched" + ("" if client == backend else " (path rewritten)")
                lines.append(f"  {client:<4} client <- {backend:<4} backend: {how}")
        if route.go_only:
            lines.append("  never sent to rust: flipping it to rust is refused")
        if isinstance(route.adapter, JqAdapter):
            lines += _explain_programs(route.adapter)
    return "\n".join(lines)


def _explain_programs(adapter: JqAdapter) -> list[str]:
    """A declared endpoint's jq programs as written, what each loses, its examples."""
    width = max(len(key) for key in PROGRAM_KEYS)
    lines = []
    for key in PROGRAM_KEYS:
        program = adapter.programs.get(key)
        text = " ".join(program.source.split()) if program else "(none: same shape)"
        loss = f"   [loses {adapter.lossy[key]}]" if key in adapter.lossy else ""
        lines.append(f"  jq {key:<{width}}  {text}{loss}")
    lines.append(f"  examples: {adapter.examples} checked at start-up and by shim check")
    return lines


# -- demo, parity -------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from shim.demo import run_demo

    return run_demo(args)


def run_parity(args: argparse.Namespace) -> int:
    from shim.fleet import open_stores
    from shim.parity import markdown, table, verdicts

    settings, routes = _load(args)
    parity = open_stores(settings, routes).parity
    records = parity.samples(window_seconds=settings.parity_window_hours * 3600)
    if parity.unreadable:
        print(
            f"warning: {parity.unreadable} unreadable line(s) of parity samples skipped",
            file=sys.stderr,
        )
    results = verdicts(routes, records)
    if args.endpoint:
        if args.endpoint not in results:
            raise UnknownEndpoint(f"{args.endpoint} is not an endpoint that can be shadowed")
        results = {args.endpoint: results[args.endpoint]}
    if args.json:
        print(
            orjson.dumps(
                {n: v.to_dict() for n, v in results.items()}, option=orjson.OPT_INDENT_2
            ).decode()
        )
    elif args.markdown:
        print(markdown(routes, results))
    else:
        print(table(results))
        print(
            f"\nwindow: last {settings.parity_window_hours:g} h of {len(records)} samples "
            f"in {settings.state_dir / 'parity'}"
        )
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """The benchmark is not in the wheel: it needs the checkout's benchmarks/ (its servers,
    nginx config, scripts), and it measures that checkout's shim. So it is loaded from the
    checkout this `shim` runs from (the editable install of `make bench`); an installed wheel
    has none, and says so in one line."""
    import importlib
    import importlib.util

    from shim.settings import PROJECT_ROOT

    if "benchmarks" not in sys.modules:
        folder = PROJECT_ROOT / "benchmarks"
        if not (folder / "runner.py").is_file():
            raise ConfigError(
                "the benchmark is not part of the installed package: run it in a cutover-shim "
                f"checkout (`make bench`, or .venv/bin/shim bench there); no {folder}",
                key="bench",
            )
        spec = importlib.util.spec_from_file_location(
            "benchmarks", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None  # a .py file always has a loader
        sys.modules["benchmarks"] = package = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(package)
    code: int = importlib.import_module("benchmarks.runner").run(args)
    return code


def run_parity_reset(args: argparse.Namespace) -> int:
    from shim.parity import ParityStore

    settings, routes = _load(args)
    if args.endpoint is not None and args.endpoint not in routes:
        raise UnknownEndpoint(f"no endpoint {args.endpoint!r} in the route table")
    dropped = ParityStore(settings.state_dir).forget(args.endpoint)
    print(f"forgot {dropped} parity samples of {args.endpoint or 'every endpoint'}")
    return 0


def run_parity_probe(args: argparse.Namespace) -> int:
    import asyncio

    from shim.parity import markdown, table
    from shim.probe import builtin_requests, probe, read_requests, unprobeable

    settings, routes = _load(args)
    if args.endpoint not in routes:
        raise UnknownEndpoint(f"no endpoint {args.endpoint!r} in the route table")
    route = routes[args.endpoint]
    why = unprobeable(route)
    if why is not None:  # said before asking for inputs it could never use
        raise ShimError(f"cannot probe: {why}")
    requests = (
        read_requests(args.input)[: args.samples]
        if args.input
        else list(builtin_requests(route, args.face, args.samples))
    )
    verdict, _ = asyncio.run(probe(settings, route, requests, face=args.face, record=args.record))
    if args.markdown:
        print(markdown(routes, {route.name: verdict}))
    else:
        print(table({route.name: verdict}))
    return 0 if verdict.verdict == "PASS" else EXIT_REFUSED
