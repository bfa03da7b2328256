"""``sae-ts reliability``: per-input steerability (with a CI, per answer layout, over a strength
sweep), anti-steerability, spurious factors, OOD."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

import torch

from ..effect_model import load_default_effect_model, load_effect_model
from ..experiments.reliability.report import run_reliability
from ..experiments.reliability.steering import SteerPositions
from ..steering import SteeringVector
from .common import add_model_args, load_from_args

__all__ = ["add_cli_commands"]


def _cmd(args: argparse.Namespace) -> int:
    model, sae, hook = load_from_args(args)
    hook = args.hook or hook
    vector: str | torch.Tensor = args.vector
    extra: dict[str, Any] = {}
    if args.vector == "sae_ts":
        em = (
            load_effect_model(args.effect_model)
            if args.effect_model
            else load_default_effect_model()
        )
        extra = {"sae": sae, "effect_model": em}
    elif args.vector not in ("caa", "random"):
        sv = SteeringVector.load(args.vector, model=model, hook_name=hook)
        vector = sv.vector
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    doc = run_reliability(
        model,
        args.dataset,
        hook,
        vector,
        args.json,
        args.out_dir,
        train=args.train,
        max_items=args.max_items,
        seed=args.seed,
        variants=not args.no_ood,
        positions=args.positions,
        propensity=args.propensity,
        max_ppl_ratio=args.max_ppl_ratio,
        **extra,
    )
    for name in args.dataset:
        r = doc[Path(name).stem]
        st, sp, la = r["steerability"], r["spurious"], r["steerability"]["letter_adjusted"]
        lo, hi = st["ci95"]
        adj = (
            f"{la['mean']:+.3f} [{la['ci95'][0]:+.3f}, {la['ci95'][1]:+.3f}]"
            if la["identified"]
            else "not identified"
        )
        print(
            f"{Path(name).stem:<40} strength {r['strength']['chosen']:.2f}  "
            f"steerability {st['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]  letter-adjusted {adj}  "
            f"line fit R² {st['linearity']['median_r2']:.2f}  "
            f"anti-steerable {st['anti_steerable_fraction']:.2f}  "
            f"A/B {sp['ab']:.2f}  Yes/No {sp['yes_no']:.2f}"
        )
    print(json.dumps(doc["across_datasets"], indent=2))
    return 0


def add_cli_commands(sub: Any) -> None:
    """Register ``sae-ts reliability``."""
    p = sub.add_parser(
        "reliability",
        help="per-input steerability, anti-steerability, spurious factors, OOD (Tan et al.)",
    )
    add_model_args(p)
    p.add_argument("--dataset", action="append", required=True, help="MWE JSONL file (repeatable)")
    p.add_argument(
        "--vector",
        default="caa",
        help="caa; sae_ts (SAE target found from each dataset's training statements, solved "
        "with the effect model); random (a seeded Gaussian direction, a control); or a saved "
        "SteeringVector path",
    )
    p.add_argument(
        "--effect-model", default=None, help="for --vector sae_ts (default: the shipped one)"
    )
    p.add_argument("--hook", default=None, help="steering hook (default: the SAE's)")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--out-dir", default=None, help="write plots here")
    p.add_argument("--train", type=float, default=0.5, help="train fraction (test: the rest)")
    p.add_argument("--max-items", type=int, default=200, help="subsample each dataset (seeded)")
    p.add_argument("--no-ood", action="store_true", help="skip the persona-prompt variants")
    p.add_argument(
        "--positions",
        default="tan",
        choices=get_args(SteerPositions),
        help="where the vector is added: tan (last prompt token + answer tokens, Tan et al.), "
        "assistant (the whole assistant turn) or answer (answer tokens only)",
    )
    p.add_argument(
        "--propensity",
        default="answer",
        choices=("answer", "letter"),
        help="answer: summed logits of the answer tokens (Tan et al.); letter: the letter only",
    )
    p.add_argument(
        "--max-ppl-ratio",
        type=float,
        default=2.0,
        help="the chosen strength keeps the answer format's perplexity within this factor",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd)
