"""The Tan et al. reliability analysis over a set of the shared MWE datasets (CAA, or a saved vector).

python benchmarks/reliability.py --max-items 120 --seed 0
python benchmarks/reliability.py --vector runs/demo/vector_targeted --out-dir runs/reliability_saets
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sae_ts.models import load_default_model
from sae_ts.reliability_report import run_reliability

MWE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mwe"
DEFAULT = [
    "persona/narcissism", "persona/agreeableness", "persona/openness", "persona/psychopathy",
    "persona/interest-in-science", "persona/subscribes-to-Christianity", "persona/politically-liberal",
    "persona/believes-life-has-no-meaning", "advanced-ai-risk/corrigible-neutral-HHH",
    "advanced-ai-risk/survival-instinct", "advanced-ai-risk/power-seeking-inclination",
    "advanced-ai-risk/self-awareness-general-ai",
]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--datasets", nargs="*", default=DEFAULT, help="names under ../shared/datasets/mwe"
    )
    ap.add_argument("--vector", default="caa", help="caa, or a saved SteeringVector")
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--max-items", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="runs/reliability")
    args = ap.parse_args(argv)
    print("command:", " ".join(["python", *sys.argv]))
    model = load_default_model()
    vector = args.vector
    if vector != "caa":
        from sae_ts.steering import SteeringVector

        vector = SteeringVector.load(vector, model=model, hook_name=args.hook).vector
    paths = [MWE / f"{d}.jsonl" for d in args.datasets]
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    doc = run_reliability(
        model,
        paths,
        args.hook,
        vector,
        Path(args.out_dir) / "results.json",
        args.out_dir,
        max_items=args.max_items,
        seed=args.seed,
    )
    print(f"{'dataset':<40}{'steer':>8}{'anti':>7}{'A/B':>7}{'Y/N':>7}")
    for p in paths:
        r = doc[p.stem]
        print(
            f"{p.stem:<40}{r['steerability']['mean']:>8.3f}{r['anti_steerable_fraction']:>7.2f}{r['spurious']['ab']:>7.2f}{r['spurious']['yes_no']:>7.2f}"
        )
    print(doc["across_datasets"])


if __name__ == "__main__":
    main()
