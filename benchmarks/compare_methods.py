"""All nine SAE-TS concept tasks x all methods on the embedded model (the README's comparison).

python benchmarks/compare_methods.py --budget full --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sae_ts.comparison import METHODS, run_comparison

TASKS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "concepts" / "saets"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks-dir", default=str(TASKS))
    ap.add_argument("--budget", choices=["quick", "full"], default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--effect-model", default=None)
    ap.add_argument("--out-dir", default="runs/compare_full")
    args = ap.parse_args(argv)
    tasks = sorted(p for p in Path(args.tasks_dir).iterdir() if (p / "act_steer.json").exists())
    if not tasks:
        sys.exit(f"no tasks under {args.tasks_dir}")
    print("command:", " ".join(["python", *sys.argv]))
    run_comparison(
        tasks,
        METHODS,
        args.budget,
        args.seed,
        args.effect_model,
        args.out_dir,
        Path(args.out_dir) / "results.json",
    )


if __name__ == "__main__":
    main()
