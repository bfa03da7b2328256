"""The ``sae-ts`` command line: argparse only, one module per command group.

Each module exposes ``add_cli_commands(subparsers)``; its subparsers set ``func`` to a handler
``(argparse.Namespace) -> int`` that calls the library and prints. This file only collects them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import SaeTsError
from . import compare, core, demo, deploy, features, reliability, sae, train

__all__ = ["build_parser", "main"]

# Command groups, in the order they appear in --help.
_COMMAND_MODULES = (demo, core, train, sae, features, compare, reliability, deploy)


def build_parser() -> argparse.ArgumentParser:
    """The full ``sae-ts`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="sae-ts",
        description="SAE-Targeted Steering: steering vectors that move chosen SAE features.",
    )
    parser.add_argument("--version", action="version", version=f"sae-ts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.add_cli_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sae-ts`` console script.

    Errors sae-ts raises on purpose (:class:`~sae_ts.errors.SaeTsError`) and bad input the
    handlers reject (``ValueError``, a missing ``FileNotFoundError``) reach the user as one line;
    anything else (out of memory, a bug) keeps its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (SaeTsError, ValueError, FileNotFoundError) as e:
        print(f"sae-ts {args.command}: error: {e}", file=sys.stderr)
        return 1
