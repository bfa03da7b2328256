"""``sae-ts reliability``: run the Tan et al. analysis over datasets for one kind of vector.

For each dataset: split (fractions, disjoint), build the vector on the train split, measure
propensity curves on the test split in the base prompt format (in distribution) and in each
persona-prompt variant (out of distribution), and report steerability, the anti-steerable
fraction, spurious factors and OOD figures. Across datasets: Spearman ρ of ID vs OOD
steerability per variant. Plots: propensity curves, slope distributions by (letter, word), and
ID-vs-OOD scatter.

Vectors: ``caa`` (trained at the answer letter, raw norm, as in Tan et al.); a saved
``SteeringVector`` path (e.g. an SAE-TS vector), rescaled to the norm of the dataset's CAA
vector so that the same multipliers mean the same push for both (documented normalisation).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from .artifacts import write_json_atomic
from .reliability import (
    MULTIPLIERS,
    caa_mc_vector,
    load_mwe,
    ood_variants,
    propensity_curves,
    split_items,
    spurious_factors,
    steerability,
    to_mc_items,
)

__all__ = ["add_cli_commands", "analyse_dataset", "run_reliability"]


def analyse_dataset(
    model: HookedTransformer,
    path: str | Path,
    hook_name: str,
    vector: str | torch.Tensor = "caa",
    multipliers: Sequence[float] = MULTIPLIERS,
    train: float = 0.5,
    max_items: int | None = 200,
    seed: int = 0,
    variants: bool = True,
) -> dict[str, Any]:
    """The analysis of one dataset; returns the JSON-ready record (curves kept for plots)."""
    path = Path(path)
    items = to_mc_items(load_mwe(path), source=path.stem)
    if max_items is not None and len(items) > max_items:
        rng = np.random.default_rng(seed)
        items = [items[i] for i in sorted(rng.choice(len(items), max_items, replace=False))]
    tr, te = split_items(items, train=train, seed=seed)
    caa = caa_mc_vector(model, tr, hook_name)
    if isinstance(vector, str) and vector == "caa":
        v, kind = caa, "caa"
    else:
        vt = torch.as_tensor(vector, dtype=torch.float32)
        v, kind = vt / vt.norm() * caa.norm(), "given (rescaled to the CAA norm)"
    out: dict[str, Any] = {
        "n_train": len(tr), "n_test": len(te), "multipliers": list(multipliers), "vector": kind,
        "vector_norm": float(v.norm()), "caa_norm": float(caa.norm()),
    }  # fmt: skip
    curves = {}
    for name, (system, prefix) in ood_variants(path.stem).items():
        if name != "base" and not variants:
            continue
        P = propensity_curves(model, te, v, hook_name, multipliers, system=system, prefix=prefix)
        curves[name] = P
    base = steerability(curves["base"], multipliers)
    out["steerability"] = {
        "mean": base.mean,
        "per_sample": base.slopes.tolist(),
        "residual_rmse": base.residual_rmse.tolist(),
    }
    out["anti_steerable_fraction"] = base.anti_steerable_fraction
    sp = spurious_factors(base.slopes, te)
    out["spurious"] = {k: sp[k] for k in ("ab", "yes_no", "unexplained")} | {
        "by_combination": sp["by_combination"]
    }
    zero = list(multipliers).index(0.0) if 0.0 in multipliers else None
    ood = {}
    for name, P in curves.items():
        if name == "base":
            continue
        s = steerability(P, multipliers)
        gap = (
            float(P[:, zero].mean() - curves["base"][:, zero].mean()) if zero is not None else None
        )
        ood[name] = {
            "steerability": s.mean, "anti_steerable_fraction": s.anti_steerable_fraction,
            "relative_steerability": s.mean / base.mean if base.mean != 0 else None,
            "unsteered_propensity_gap": gap,
        }  # fmt: skip
    out["ood"] = ood
    out["_curves"] = {k: v_.tolist() for k, v_ in curves.items()}
    out["_items"] = [{"pos": it.pos, "pos_is_yes": it.pos_is_yes} for it in te]
    return out


def _plots(results: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, r in results.items():
        P = np.array(r["_curves"]["base"])
        x = r["multipliers"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for row in P[: min(40, len(P))]:
            axes[0].plot(x, row, color="#999", alpha=0.3, lw=0.8)
        axes[0].plot(x, P.mean(0), color="#c33", lw=2.5, label="mean")
        axes[0].set(
            xlabel="multiplier λ",
            ylabel="propensity (logit diff)",
            title=f"{name}: propensity curves",
        )
        axes[0].legend()
        combos = r["spurious"]["by_combination"]
        labels = list(combos)
        axes[1].boxplot([combos[k]["slopes"] for k in labels], tick_labels=labels)
        axes[1].axhline(0, color="k", lw=0.8)
        axes[1].set(
            ylabel="per-sample steerability (slope)", title="slopes by positive letter / word"
        )
        fig.tight_layout()
        f = out_dir / f"{name}_reliability.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(str(f))
    names = list(results)
    variants = sorted({v for r in results.values() for v in r["ood"]})
    if len(names) >= 3 and variants:
        fig, axes = plt.subplots(
            1, len(variants), figsize=(3.4 * len(variants), 3.4), squeeze=False
        )
        for ax, var in zip(axes[0], variants):
            idd = [results[n]["steerability"]["mean"] for n in names]
            odd = [results[n]["ood"][var]["steerability"] for n in names]
            rho = spearmanr(idd, odd).statistic
            ax.scatter(idd, odd)
            ax.set(
                title=f"{var}: Spearman ρ={rho:.2f}",
                xlabel="ID steerability",
                ylabel="OOD steerability",
            )
        fig.tight_layout()
        f = out_dir / "id_vs_ood.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(str(f))
    return files


def run_reliability(
    model: HookedTransformer,
    datasets: Sequence[str | Path],
    hook_name: str,
    vector: str | torch.Tensor = "caa",
    out_json: str | Path | None = None,
    out_dir: str | Path | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Analyse every dataset; write ``out_json`` (and plots in ``out_dir``); return the results."""
    results: dict[str, dict[str, Any]] = {}
    for p in tqdm(list(datasets), desc="datasets"):
        results[Path(p).stem] = analyse_dataset(model, p, hook_name, vector, **kw)
    across: dict[str, Any] = {}
    names = list(results)
    for var in sorted({v for r in results.values() for v in r["ood"]}):
        if len(names) >= 3:
            idd = [results[n]["steerability"]["mean"] for n in names]
            odd = [results[n]["ood"][var]["steerability"] for n in names]
            across[var] = {"spearman_id_vs_ood": float(spearmanr(idd, odd).statistic)}
    files = _plots(results, Path(out_dir)) if out_dir is not None else []
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    config = {
        "datasets": [str(p) for p in datasets],
        "hook_name": hook_name,
        "model": model.cfg.model_name,
        "vector": vector if isinstance(vector, str) else "tensor",
        **{k: v for k, v in kw.items()},
    }
    public = {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in results.items()}
    doc = {"config": config, "across_datasets": across, "plots": files, **public}
    if out_json is not None:
        write_json_atomic(Path(out_json), doc)
    return doc


def _cmd(args: argparse.Namespace) -> int:
    from .commands import load_from_args
    from .steering import SteeringVector

    model, _, hook = load_from_args(args)
    hook = args.hook or hook
    vector: str | torch.Tensor = args.vector
    if args.vector != "caa":
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
    )
    for name in args.dataset:
        r = doc[Path(name).stem]
        print(
            f"{Path(name).stem:<40} steerability {r['steerability']['mean']:+.3f}  anti-steerable {r['anti_steerable_fraction']:.2f}  A/B {r['spurious']['ab']:.2f}  Yes/No {r['spurious']['yes_no']:.2f}"
        )
    print(json.dumps(doc["across_datasets"], indent=2))
    return 0


def add_cli_commands(sub: Any) -> None:
    """Register ``sae-ts reliability``."""
    from .commands import add_model_args

    p = sub.add_parser(
        "reliability",
        help="per-input steerability, anti-steerability, spurious factors, OOD (Tan et al.)",
    )
    add_model_args(p)
    p.add_argument("--dataset", action="append", required=True, help="MWE JSONL file (repeatable)")
    p.add_argument("--vector", default="caa", help="caa, or a saved SteeringVector path")
    p.add_argument("--hook", default=None, help="steering hook (default: the SAE's)")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--out-dir", default=None, help="write plots here")
    p.add_argument("--train", type=float, default=0.5, help="train fraction (test: the rest)")
    p.add_argument("--max-items", type=int, default=200, help="subsample each dataset (seeded)")
    p.add_argument("--no-ood", action="store_true", help="skip the persona-prompt variants")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd)
