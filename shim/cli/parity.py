"""`shim parity`: verdicts from the shadow samples, a probe that compares both backends now,
and reset (forget the samples, e.g. after fixing a drift)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from shim.cli.common import (
    EXIT_REFUSED,
    PROBEABLE,
    Commands,
    RouteNamesHelp,
    at_least_one,
    config_option,
    load_config,
)
from shim.errors import ShimError, UnknownEndpoint


def add_commands(commands: Commands) -> None:
    parity = commands.add_parser("parity", help="parity verdicts from shadow traffic")
    config_option(parity)
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
    config_option(parity_probe)
    parity_probe.add_argument("endpoint", help=f"an idempotent endpoint: {PROBEABLE}")
    parity_probe.add_argument(
        "--samples", type=at_least_one, default=5, help="requests, 1 or more (default 5)"
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
    config_option(parity_reset)
    parity_reset.add_argument("--endpoint", help="one endpoint only (default: all)")
    parity_reset.set_defaults(run=run_parity_reset)


def run_parity(args: argparse.Namespace) -> int:
    from shim.cutover.fleet import open_stores
    from shim.parity.verdicts import markdown, table, verdicts

    settings, routes = load_config(args)
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


def run_parity_reset(args: argparse.Namespace) -> int:
    from shim.parity.verdicts import ParityStore

    settings, routes = load_config(args)
    if args.endpoint is not None and args.endpoint not in routes:
        raise UnknownEndpoint(f"no endpoint {args.endpoint!r} in the route table")
    dropped = ParityStore(settings.state_dir).forget(args.endpoint)
    print(f"forgot {dropped} parity samples of {args.endpoint or 'every endpoint'}")
    return 0


def run_parity_probe(args: argparse.Namespace) -> int:
    import asyncio

    from shim.ops.probe import builtin_requests, probe, read_requests, unprobeable
    from shim.parity.verdicts import markdown, table

    settings, routes = load_config(args)
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
