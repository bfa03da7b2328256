"""The ``sae-ts`` command line.

Each stage module that has commands exposes ``add_cli_commands(subparsers)``; its subparsers set
``func`` to a handler ``(argparse.Namespace) -> int``. This file only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# Modules that contribute subcommands, in the order they appear in --help.
_COMMAND_MODULES: tuple[str, ...] = (
    "sae_ts.demo",
    "sae_ts.commands",
    "sae_ts.sae_training",
    "sae_ts.sae",
    "sae_ts.features",
    "sae_ts.comparison",
    "sae_ts.reliability_report",
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``sae-ts`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="sae-ts",
        description="SAE-Targeted Steering: steering vectors that move chosen SAE features.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"sae-ts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_cli_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sae-ts`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        # Clear errors from sae-ts reach the user as one line, not a traceback.
        print(f"sae-ts {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
