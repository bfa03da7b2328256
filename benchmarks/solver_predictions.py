"""What the effect model predicts for the comparison's vectors, and how they relate (issue #27).

For each of the nine SAE-TS concept tasks (read by path from ``--tasks``) this rebuilds exactly
the vectors that ``benchmarks/compare_methods.py`` steers with (same seed, same build half, same
target selection, same shipped effect model, :func:`sae_ts.experiments.compare.run.build_vectors`)
and reports, without generating any text:

* each vector's cosine to ``targeted``'s and to CAA's;
* its predicted target effect, off-target norm and target share at the effect model's scale, with
  the linear part (what the solvers plan with) and, for a first-token effect model (SmolLM2's),
  with the whole model (the first-token prior measured on the language model at that vector).

It is the table behind the comparison page's per-task predictions for ``targeted_ft`` and
``targeted_caa``. The measured side (generated text, judged) is ``compare_methods.py``'s.

Example (SmolLM2; ``targeted_ft`` ascends for ~1-2 min per task on one thread)::

    OMP_NUM_THREADS=1 python benchmarks/solver_predictions.py \
        --methods caa,targeted,targeted_ft,targeted_caa \
        --json benchmarks/results/solver_predictions.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sae_ts.effect_model import FirstTokenEffectModel
from sae_ts.experiments.compare.config import STEERED, CompareConfig
from sae_ts.experiments.compare.run import build_vectors, load_effect_model
from sae_ts.experiments.compare.tasks import load_task, split_roles
from sae_ts.loading import load_default
from sae_ts.selection import choose_targets
from sae_ts.solver import target_stats
from sae_ts.targets import latent_density

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO.parent / "shared" / "datasets" / "concepts" / "saets"


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", type=Path, default=TASKS)
    ap.add_argument("--targets", default="fgaa", help="the target-selection rule (as compare's)")
    ap.add_argument("--methods", default="caa,sae,sae_ts,targeted,targeted_span,targeted_caa")
    ap.add_argument("--only", default=None, help="comma-separated task names (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(STEERED):
        ap.error(f"unknown methods {sorted(set(methods) - set(STEERED))}; choose from {STEERED}")
    for needed in ("targeted", "caa"):  # the two references of the cosines
        if needed not in methods:
            methods.append(needed)
    print(f"command: python benchmarks/solver_predictions.py {' '.join(argv)}".rstrip())
    print(f"seed {args.seed}, model {args.model}, targets {args.targets}")
    t0 = time.time()
    torch.manual_seed(args.seed)
    model, sae, hook = load_default(model=args.model)
    em, em_src = load_effect_model(None, args.model)
    whole = isinstance(em, FirstTokenEffectModel)
    cfg = CompareConfig.budget("full", seed=args.seed, targets=args.targets)
    density = latent_density(model, sae, hook)
    dirs = sorted(p for p in args.tasks.iterdir() if (p / "act_steer.json").exists())
    if args.only:
        dirs = [p for p in dirs if p.name in args.only.split(",")]
    out: dict[str, dict] = {}
    for d in dirs:
        task = load_task(d)
        build = split_roles(task, cfg.seed).build

        kw = {"top": cfg.n_features, "density": density, "max_density": cfg.max_density,
              "effect_model": em}  # fmt: skip
        selection = choose_targets(cfg.targets, model, sae, build.pos, build.neg, hook, **kw)
        target = selection.target()
        fgaa = (
            selection
            if selection.method == "fgaa"
            else choose_targets("fgaa", model, sae, build.pos, build.neg, hook, **kw)
        )
        vecs = build_vectors(model, sae, build, hook, em, target, methods, fgaa.target())
        rows = {}
        for m, v in vecs.items():
            row = {
                "cos_targeted": _cos(v, vecs["targeted"]),
                "cos_caa": _cos(v, vecs["caa"]),
                "linear": target_stats(em.predict(v / v.norm()), target),
            }
            if whole:
                assert isinstance(em, FirstTokenEffectModel)
                row["whole"] = target_stats(em.predict_measured(model, sae, v / v.norm()), target)
            rows[m] = row
        out[d.name] = rows
        key = "whole" if whole else "linear"
        print(f"\n{d.name} ({key} model):")
        print("| method | cos to targeted | cos to CAA | target effect | off-target norm | share |")
        print("|---|---|---|---|---|---|")
        for m, r in rows.items():
            s = r[key]
            print(f"| {m} | {r['cos_targeted']:.3f} | {r['cos_caa']:.3f} | "
                  f"{s['target_effect']:.3f} | {s['off_target_norm']:.2f} | "
                  f"{s['target_share']:.3f} |", flush=True)  # fmt: skip
    seconds = time.time() - t0
    print(f"\n{len(out)} tasks in {seconds:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": f"python benchmarks/solver_predictions.py {' '.join(argv)}",
               "seed": args.seed, "model": args.model, "effect_model": em_src,
               "targets": args.targets, "whole_model": whole, "seconds": seconds, "tasks": out}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"-> {args.json}")


if __name__ == "__main__":
    main()
