"""``sae-ts compare``: steering methods on concept tasks."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from ..backends import BACKENDS
from ..experiments.compare.run import (
    DEFAULT_METHODS,
    METHODS,
    judges_from_args,
    parse_feature_overrides,
    run_comparison,
)
from ..loading import load_default
from ..models import DEFAULT_MODEL, EMBEDDED_MODELS
from ..selection import SELECTORS
from .common import add_ray_args, executor_from_args

__all__ = ["add_cli_commands"]


def _cmd(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    executor = executor_from_args(
        args,
        functools.partial(load_default, device=args.device, model=args.model, backend=args.backend),
    )
    judges = judges_from_args(
        args.judge, args.judge_model, args.judge_base_url,
        Path(args.out_dir) / "judge_cache", args.device,
    )  # fmt: skip
    try:
        doc = run_comparison(
            args.task,
            methods,
            args.budget,
            args.seed,
            args.effect_model,
            args.out_dir,
            args.json,
            args.device,
            judges,
            log=lambda msg: print(msg, flush=True),
            features=parse_feature_overrides(args.features or []),
            validate=not args.no_validation,
            executor=executor,
            targets=args.targets,
            model_name=args.model,
            backend=args.backend,
        )
    finally:
        if executor is not None:
            executor.close()
    print(doc["table"])
    print()
    print(doc["differences"])
    return 0


def add_cli_commands(sub: Any) -> None:
    """Register ``sae-ts compare``."""
    p = sub.add_parser(
        "compare",
        help="compare steering methods on concept tasks (paired samples, held-out norm choice, "
        "paired bootstrap CIs, offline judges checked against independent ones)",
    )
    p.add_argument(
        "--task",
        action="append",
        required=True,
        help="task directory (act_steer.json + criteria.json); repeatable",
    )
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from {','.join(METHODS)} (prompt: the concept as an instruction)",
    )
    p.add_argument(
        "--targets",
        choices=list(SELECTORS),
        default="fgaa",
        help="how the SAE methods' target latents are chosen: fgaa (default, the 9-task winner: "
        "FGAA's weighted contrastive target), input (latents that fire on the concept's texts), "
        "output (Arad et al.'s output score), dtc (ΔToken confidence), effect (predicted effect "
        "of each decoder row on the concept's features)",
    )
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--out-dir", default="runs/compare", help="plots, table.md, cached effect model")
    p.add_argument(
        "--budget",
        choices=["smoke", "quick", "full"],
        default="quick",
        help="full: 11 norms x 64 samples x 24 tokens (the README's run); quick: 6 x 16 x 16; "
        "smoke: a seconds-long check",
    )
    p.add_argument(
        "--effect-model",
        default="default",
        help="a saved effect model, or 'default' (the one shipped for the embedded SAE)",
    )
    p.add_argument(
        "--features",
        action="append",
        default=None,
        help="manual target latents, TASK=ID[:WEIGHT],ID... (TASK: the task directory's name; "
        "without TASK= for every task); repeatable",
    )
    p.add_argument(
        "--no-validation",
        action="store_true",
        help="skip checking the behaviour judge against independent judges",
    )
    p.add_argument(
        "--judge",
        choices=["offline", "api", "hf"],
        default="offline",
        help="offline: embedding + likelihood judges; api: the paper's LLM judge over an "
        "OpenAI-compatible endpoint (key from $OPENAI_API_KEY); hf: a local HF instruct model",
    )
    p.add_argument("--judge-model", default=None, help="API model name or HF model path/id")
    p.add_argument("--judge-base-url", default=None, help="API root, e.g. http://localhost:8000/v1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps ...")
    p.add_argument(
        "--backend",
        default="hooked",
        choices=list(BACKENDS),
        help="hooked (HookedTransformer, default) or bridge (TransformerBridge)",
    )
    p.add_argument(
        "--model",
        choices=sorted(EMBEDDED_MODELS),
        default=DEFAULT_MODEL,
        help="the embedded model, with its shipped SAE and effect model",
    )
    add_ray_args(p)
    p.set_defaults(func=_cmd)
