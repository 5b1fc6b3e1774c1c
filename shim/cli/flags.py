"""`shim flags` (the table, its history, set, export, import) and `shim rollback`: the
operator's view of the flag store, and changes that wait until the workers applied them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from shim.cli.common import (
    ENDPOINTS,
    EXIT_LAGGING,
    EXIT_REFUSED,
    Commands,
    RouteNamesHelp,
    at_least_one,
    config_option,
    load_config,
)
from shim.cutover.flag_state import Flag
from shim.cutover.flags import FlagStore, cli_actor
from shim.cutover.store import Acknowledgements
from shim.cutover.workers import WorkerStatus
from shim.errors import UnknownEndpoint
from shim.ops.views import describe, flags_view
from shim.routes import RouteTable
from shim.settings import Settings
from shim.types import BACKENDS, Backend


def add_commands(commands: Commands) -> None:
    flags = commands.add_parser("flags", help="show every endpoint's flag, or change one")
    config_option(flags)
    flags.add_argument(
        "--history",
        nargs="?",
        const="",
        metavar="ENDPOINT",
        help="show the audit trail (of one endpoint) instead of the table",
    )
    flags.add_argument(
        "--limit",
        type=at_least_one,
        default=50,
        help="history: the newest N changes, N 1 or more (default 50)",
    )
    flags.set_defaults(run=run_flags_table)
    flag_commands = flags.add_subparsers(metavar="ACTION")
    flag_set = flag_commands.add_parser(
        "set", help="route an endpoint to rust or go", formatter_class=RouteNamesHelp
    )
    config_option(flag_set)
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
    config_option(export)
    export.set_defaults(run=run_flags_export)
    load = flag_commands.add_parser(
        "import", help="load an export into this store (e.g. a host's state into etcd)"
    )
    config_option(load)
    load.add_argument("file", type=Path, help="the output of `shim flags export`")
    load.add_argument("--reason", help="recorded in the audit trail")
    load.set_defaults(run=run_flags_import)

    rollback = commands.add_parser(
        "rollback", help="send endpoints (default: all but Go-only) back to rust"
    )
    config_option(rollback)
    rollback.add_argument("endpoints", nargs="*", metavar="ENDPOINT")
    rollback.add_argument("--reason", help="recorded in the audit trail")
    rollback.set_defaults(run=run_rollback)


def _operator_view(
    args: argparse.Namespace,
) -> tuple[Settings, RouteTable, FlagStore, Acknowledgements]:
    """The store as an operator's command sees it: pins from this environment and from every
    running worker (a systemd drop-in's pin is in the service's environment, not ours), and
    the parity gate as the running shim serves with it."""
    from shim.cutover.fleet import open_stores

    settings, routes = load_config(args)
    stores = open_stores(settings, routes)
    registry = stores.workers
    workers = registry.live()
    pins: dict[str, Backend] = dict(settings.pin)
    for worker in workers:
        pins.update({k: b for k, v in worker.pins.items() for b in BACKENDS if v == b})
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
    from shim.cutover.fleet import open_stores

    settings, routes = load_config(args)
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
    from shim.cutover.fleet import export_document, open_stores

    settings, routes = load_config(args)
    document = export_document(open_stores(settings, routes).flags)
    print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    return 0


def run_flags_import(args: argparse.Namespace) -> int:
    from shim.cutover.fleet import import_document

    settings, _, store, registry = _operator_view(args)
    change = import_document(
        store, orjson.loads(args.file.read_bytes()), actor=cli_actor(), reason=args.reason
    )
    print(f"imported {args.file} into {store.backend.describe()} (generation {change})")
    return _report(registry, change, settings)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
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
    from shim.cutover.fleet import open_stores
    from shim.cutover.gate import gated_set

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
