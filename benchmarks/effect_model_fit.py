"""Closed-form ridge vs the paper's Adam fit: time and held-out fit on the same effect dataset.

python benchmarks/effect_model_fit.py --effects runs/demo/effects/effects --holdout 16
"""

from __future__ import annotations

import argparse
import json
import sys

from sae_ts.effect_model import fit_adam, fit_ridge
from sae_ts.effects import EffectDataset


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--effects", required=True, help="an effect dataset (NAME.safetensors + NAME.json)"
    )
    ap.add_argument("--holdout", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    ds = EffectDataset.load(args.effects)
    _, ridge = fit_ridge(ds, holdout=args.holdout, seed=args.seed)
    _, adam = fit_adam(ds, holdout=args.holdout, seed=args.seed)
    res = {
        "command": " ".join(["python", *sys.argv]),
        "n": len(ds),
        "ridge": {
            "r2": ridge.r2,
            "cosine": ridge.cosine,
            "seconds": ridge.seconds,
            "alpha": ridge.alpha,
        },
        "adam": {"r2": adam.r2, "cosine": adam.cosine, "seconds": adam.seconds},
        "speedup": adam.seconds / ridge.seconds,
    }
    print(ridge)
    print(adam)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
