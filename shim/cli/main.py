"""The `shim` command: the parser and the dispatch. Each family of commands is its own
module of this package (`serve`, `flags`, `parity`, `bench`, `check`) that adds its
subcommands here; what they share is `common`.

Operator mistakes (bad config, refused flips) are one line on stderr and a non-zero exit:
2 for configuration errors, 1 for refused operations.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shim import __version__
from shim.cli import bench as cli_bench
from shim.cli import check as cli_check
from shim.cli import flags as cli_flags
from shim.cli import parity as cli_parity
from shim.cli import serve as cli_serve
from shim.cli.common import EXIT_CONFIG, EXIT_REFUSED
from shim.errors import ConfigError, FlagError, FlagStateError, ShimError


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

    for family in (cli_serve, cli_flags, cli_parity, cli_bench, cli_check):
        family.add_commands(commands)
    return parser
