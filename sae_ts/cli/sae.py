"""``sae-ts sae-eval``: quality figures of an SAE."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..artifacts import write_json_atomic
from ..sae import evaluate_sae
from ..training.corpus import eval_texts
from .common import add_model_args, load_from_args

__all__ = ["add_cli_commands"]


def _cmd_eval(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, sae, _ = load_from_args(args)
    rows = []
    for split in args.texts:
        res = evaluate_sae(
            model, sae, eval_texts(split, args.max_docs), context_size=args.context_size,
            max_tokens=args.max_tokens, batch_size=args.batch_size, sink_ratio=args.sink_ratio,
            compute_ce=not args.no_ce, ce_max_tokens=args.ce_max_tokens, progress=True,
        )  # fmt: skip
        rows.append({"texts": split, **res.as_dict()})
        ce = f"{res.ce_recovered:.3f}" if res.ce_recovered is not None else "-"
        if res.ce_recovered_ci is not None:
            ce += " [{:.3f}, {:.3f}]".format(*res.ce_recovered_ci)
        print(
            f"{split:>10}: tokens={res.n_tokens} EV={res.explained_variance:.3f} "
            f"CE_recovered={ce} L0={res.l0:.1f} dead={res.dead_fraction:.3f} "
            f"({res.n_dead}/{res.d_sae})"
        )
    if args.json:
        write_json_atomic(Path(args.json), {"hook": sae.cfg.metadata.hook_name, "results": rows})
    return 0


def add_cli_commands(subparsers: Any) -> None:
    """Add ``sae-eval`` to the ``sae-ts`` command line."""
    p = subparsers.add_parser(
        "sae-eval",
        help="explained variance, CE-loss recovered, L0 and dead fraction of an SAE",
        description="Evaluate an SAE on held-out text: the embedded SAE by default, an SAE "
        "directory (--sae, with the embedded model or --model), or a sae-lens release "
        "(--model/--sae-release/--sae-id).",
    )
    add_model_args(p, sae_dir=True)
    p.add_argument(
        "--texts", nargs="+", default=["heldout", "ood"],
        help="corpus splits (heldout, ood) or text files with blank-line separated documents",
    )  # fmt: skip
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=50_000)
    p.add_argument("--ce-max-tokens", type=int, default=20_000)
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sink-ratio", type=float, default=None)
    p.add_argument("--no-ce", action="store_true", help="skip the (slower) CE-loss figures")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=_cmd_eval)
