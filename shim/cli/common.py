"""What every `shim` command shares: exit codes, the --config option, loading settings and
the route table, argument types, help that names the route table's endpoints."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shim.cutover.flag_state import check_pins
from shim.errors import ShimError
from shim.route_config import load_routes
from shim.routes import RouteTable
from shim.settings import Settings, load_settings

if TYPE_CHECKING:  # what `add_subparsers` returns, to which each family adds its commands
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    Commands = argparse._SubParsersAction

EXIT_REFUSED = 1
EXIT_CONFIG = 2
EXIT_LAGGING = 3


ENDPOINTS, PROBEABLE = "{endpoints}", "{probeable}"  # filled in by RouteNamesHelp


class RouteNamesHelp(argparse.HelpFormatter):
    """Help that lists the route table's endpoint names (all, or those a probe can compare),
    read only when help is printed: building the parser must not read the route table."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text is None or (ENDPOINTS not in text and PROBEABLE not in text):
            return text
        from shim.ops.probe import unprobeable

        try:
            routes = load_routes(load_settings().resolved_routes_file()).routes
        except ShimError:
            unknown = "see `shim flags` (the route table cannot be read now)"
            return text.replace(ENDPOINTS, unknown).replace(PROBEABLE, unknown)
        probeable = [name for name, route in routes.items() if unprobeable(route) is None]
        return text.replace(ENDPOINTS, ", ".join(routes)).replace(PROBEABLE, ", ".join(probeable))


def at_least_one(text: str) -> int:
    """argparse type: a whole number of 1 or more (0 or -1 would silently mean something)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="TOML settings file (SHIM_CONFIG, default config/shim.toml)"
    )


def load_config(args: argparse.Namespace, **overrides: object) -> tuple[Settings, RouteTable]:
    settings = load_settings(getattr(args, "config", None), **overrides)
    routes = load_routes(settings.resolved_routes_file())
    check_pins(settings.pin, routes)
    return settings, routes
