"""``sae-ts demo``: the whole SAE-TS pipeline on the embedded model."""

from __future__ import annotations

import argparse
from typing import Any

from ..backends import BACKENDS
from ..experiments.demo import DemoSettings, format_table, run_demo
from ..models import DEFAULT_MODEL, EMBEDDED_MODELS
from .common import add_dataclass_args, config_from_args

__all__ = ["add_cli_commands"]


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = config_from_args(DemoSettings, args)
    result = run_demo(
        args.out, settings, args.seed, args.device, log=print, model_name=args.model,
        backend=args.backend,
    )  # fmt: skip
    if not result.get("steering_only"):
        print()
        print(format_table(result["rows"]))
        print()
        for line in result["verdict"]:
            print("verdict: " + line)
    for name, texts in result["generations"].items():
        print(f"\n== {name}")
        for t in texts:
            print("  " + t.replace("\n", " "))
    if "out" in result:
        print(
            f"\nplot -> {result['out']}/demo.png; artefacts -> {result['out']}/ "
            f"({result['seconds']:.0f}s in all)"
        )
    return 0


def add_cli_commands(sub: Any) -> None:
    """Register ``sae-ts demo``."""
    p = sub.add_parser(
        "demo", help="run the whole SAE-TS pipeline on the embedded model (~4 min on CPU)"
    )
    p.add_argument("--out", default="runs/demo")
    add_dataclass_args(p.add_argument_group("measurement (DemoSettings)"), DemoSettings)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps ...")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=sorted(EMBEDDED_MODELS),
        help="the embedded model (it needs a shipped effect model)",
    )
    p.add_argument(
        "--backend",
        default="hooked",
        choices=list(BACKENDS),
        help="hooked (HookedTransformer, default) or bridge (TransformerBridge)",
    )
    p.set_defaults(func=_cmd_demo)
