"""`shim check`: settings, route table and flag state validated as a worker would, and with
--explain what each endpoint does per client dialect and backend, and what it loses."""

from __future__ import annotations

import argparse

from adapters.declared import ANSWER_PROGRAM, PROGRAM_KEYS, REQUEST_PROGRAM, JqAdapter
from shim.cli.common import Commands, config_option, load_config
from shim.routes import GO_PREFIX, RouteTable


def add_commands(commands: Commands) -> None:
    check = commands.add_parser("check", help="validate settings, route table and flag state")
    config_option(check)
    check.add_argument(
        "--explain",
        action="store_true",
        help="also print, per endpoint, faces, idempotency and what each translation loses",
    )
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    from shim.cutover.fleet import open_stores

    settings, routes = load_config(args)
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
