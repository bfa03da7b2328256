"""The Tan et al. reliability analysis over a set of the shared MWE datasets (CAA, or a saved vector).

python benchmarks/reliability.py --max-items 80 --seed 0       # CAA and SAE-TS side by side
python benchmarks/reliability.py --vectors runs/demo/vector_targeted --out-dir runs/rel_saved
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sae_ts.effect_model import load_default_effect_model
from sae_ts.experiments.reliability_report import run_reliability_multi
from sae_ts.loading import load_default
from sae_ts.steering import SteeringVector

MWE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mwe"
DEFAULT = [
    "persona/narcissism", "persona/agreeableness", "persona/psychopathy",
    "persona/interest-in-science", "persona/subscribes-to-Christianity",
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
    ap.add_argument(
        "--vectors",
        default="caa,sae_ts",
        help="comma-separated: caa, sae_ts (per-dataset SAE target + shipped effect model), or "
        "saved SteeringVector paths",
    )
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--max-items", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="runs/reliability")
    args = ap.parse_args(argv)
    print("command:", " ".join(["python", *sys.argv]))
    t0 = time.time()
    model, sae, hook = load_default()
    if args.hook != hook:
        sae = None
    paths = [MWE / f"{d}.jsonl" for d in args.datasets]
    vectors: dict[str, str | torch.Tensor] = {}
    for kind in [k.strip() for k in args.vectors.split(",") if k.strip()]:
        if kind in ("caa", "sae_ts"):
            vectors[kind] = kind
        else:
            vectors[Path(kind).name] = SteeringVector.load(
                kind, model=model, hook_name=args.hook
            ).vector
    extra = {"sae": sae, "effect_model": load_default_effect_model()} if "sae_ts" in vectors else {}
    out = Path(args.out_dir)
    docs = run_reliability_multi(
        model, paths, args.hook, vectors,
        {n: out / n / "results.json" for n in vectors}, {n: out / n for n in vectors},
        max_items=args.max_items, seed=args.seed, **extra,
    )  # fmt: skip
    print(f"{time.time() - t0:.0f}s", flush=True)
    names = list(docs)
    head = "".join(f"{n + ' steer':>14}{'anti':>6}{'A/B':>6}{'Y/N':>6}" for n in names)
    print(f"{'dataset':<42}{head}")
    for p in paths:
        row = ""
        for n in names:
            r = docs[n][p.stem]
            row += (
                f"{r['steerability']['mean']:>14.3f}{r['anti_steerable_fraction']:>6.2f}"
                f"{r['spurious']['ab']:>6.2f}{r['spurious']['yes_no']:>6.2f}"
            )
        print(f"{p.stem:<42}{row}")
    for n in names:
        print(n, "across datasets:", json.dumps(docs[n]["across_datasets"]))
    keep = ("anti_steerable_fraction", "spurious", "ood", "cosine_with_caa", "n_test")

    def brief(r: dict) -> dict:  # per-sample slopes stay in each vector's results.json
        return {"steerability": {"mean": r["steerability"]["mean"]}, **{k: r[k] for k in keep}}

    summary = {
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed,
        "seconds": time.time() - t0,
        "vectors": {n: {p.stem: brief(docs[n][p.stem]) for p in paths} for n in names},
        "across_datasets": {n: docs[n]["across_datasets"] for n in names},
    }
    (Path(args.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
