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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..artifacts import write_json_atomic
from ..errors import ConfigError
from ..types import SAELike
from .reliability import (
    MULTIPLIERS,
    caa_mc_vector,
    load_mwe,
    ood_variants,
    propensity_curves,
    sae_ts_mc_vector,
    split_items,
    spurious_factors,
    steerability,
    to_mc_items,
)

__all__ = [
    "analyse_dataset",
    "analyse_dataset_multi",
    "run_reliability",
    "run_reliability_multi",
]


VectorSpec = str | torch.Tensor


def analyse_dataset(
    model: HookedTransformer,
    path: str | Path,
    hook_name: str,
    vector: VectorSpec = "caa",
    multipliers: Sequence[float] = MULTIPLIERS,
    train: float = 0.5,
    max_items: int | None = 200,
    seed: int = 0,
    variants: bool = True,
    sae: SAELike | None = None,
    effect_model: Any = None,
) -> dict[str, Any]:
    """The analysis of one dataset; returns the JSON-ready record (curves kept for plots).

    ``vector``: ``"caa"``, ``"sae_ts"`` (built from the training items with ``sae`` and
    ``effect_model``, see :func:`~sae_ts.reliability.sae_ts_mc_vector`) or a tensor. Non-CAA
    vectors are rescaled to the norm of the dataset's CAA vector.
    """
    return analyse_dataset_multi(
        model, path, hook_name, {"v": vector}, multipliers, train, max_items, seed, variants,
        sae, effect_model,
    )["v"]  # fmt: skip


def analyse_dataset_multi(
    model: HookedTransformer,
    path: str | Path,
    hook_name: str,
    vectors: dict[str, VectorSpec],
    multipliers: Sequence[float] = MULTIPLIERS,
    train: float = 0.5,
    max_items: int | None = 200,
    seed: int = 0,
    variants: bool = True,
    sae: SAELike | None = None,
    effect_model: Any = None,
) -> dict[str, dict[str, Any]]:
    """:func:`analyse_dataset` for several vectors on the same split, sharing prompt prefixes."""
    path = Path(path)
    items = to_mc_items(load_mwe(path), source=path.stem)
    if max_items is not None and len(items) > max_items:
        rng = np.random.default_rng(seed)
        items = [items[i] for i in sorted(rng.choice(len(items), max_items, replace=False))]
    tr, te = split_items(items, train=train, seed=seed)
    caa = caa_mc_vector(model, tr, hook_name)
    built: dict[str, tuple[torch.Tensor, str, list[tuple[int, float]] | None]] = {}
    for name, vector in vectors.items():
        feats = None
        if isinstance(vector, str) and vector == "caa":
            v, kind = caa, "caa"
        elif isinstance(vector, str) and vector == "sae_ts":
            if sae is None or effect_model is None:
                raise ConfigError("vector='sae_ts' needs the SAE and an effect model")
            if sae.cfg.metadata.hook_name != hook_name:
                raise ConfigError(f"the SAE reads {sae.cfg.metadata.hook_name}, not {hook_name}")
            vt, feats = sae_ts_mc_vector(model, sae, effect_model, tr, hook_name)
            v, kind = vt / vt.norm() * caa.norm(), "sae_ts (rescaled to the CAA norm)"
        elif isinstance(vector, str):
            raise ConfigError(f"unknown vector {vector!r}: use 'caa', 'sae_ts' or a tensor")
        else:
            vt = torch.as_tensor(vector, dtype=torch.float32)
            v, kind = vt / vt.norm() * caa.norm(), "given (rescaled to the CAA norm)"
        built[name] = (v, kind, feats)
    names = list(built)
    V = torch.stack([built[n][0] for n in names])
    curves_all: dict[str, np.ndarray] = {}
    for var, (system, prefix) in ood_variants(path.stem).items():
        if var != "base" and not variants:
            continue
        curves_all[var] = propensity_curves(
            model, te, V, hook_name, multipliers, system=system, prefix=prefix
        )
    zero = list(multipliers).index(0.0) if 0.0 in multipliers else None
    results: dict[str, dict[str, Any]] = {}
    for vi, name in enumerate(names):
        v, kind, feats = built[name]
        out: dict[str, Any] = {
            "n_train": len(tr), "n_test": len(te), "multipliers": list(multipliers),
            "vector": kind, "vector_norm": float(v.norm()), "caa_norm": float(caa.norm()),
            "cosine_with_caa": float(torch.nn.functional.cosine_similarity(v, caa, dim=0)),
        }  # fmt: skip
        if feats is not None:
            out["features"] = [[f, w] for f, w in feats]
        curves = {var: P[:, vi] for var, P in curves_all.items()}
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
        ood = {}
        for var, P in curves.items():
            if var == "base":
                continue
            st = steerability(P, multipliers)
            gap = (
                float(P[:, zero].mean() - curves["base"][:, zero].mean())
                if zero is not None
                else None
            )
            ood[var] = {
                "steerability": st.mean, "anti_steerable_fraction": st.anti_steerable_fraction,
                "relative_steerability": st.mean / base.mean if base.mean != 0 else None,
                "unsteered_propensity_gap": gap,
            }  # fmt: skip
        out["ood"] = ood
        out["_curves"] = {k: c.tolist() for k, c in curves.items()}
        out["_items"] = [{"pos": it.pos, "pos_is_yes": it.pos_is_yes} for it in te]
        results[name] = out
    return results


def _plots(results: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    files = []
    for name, r in results.items():
        P = np.array(r["_curves"]["base"])
        x = r["multipliers"]
        fig = Figure(figsize=(10, 3.6))
        axes = fig.subplots(1, 2)
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
        files.append(str(f))
    names = list(results)
    variants = sorted({v for r in results.values() for v in r["ood"]})
    if len(names) >= 3 and variants:
        fig = Figure(figsize=(3.4 * len(variants), 3.4))
        axes = fig.subplots(1, len(variants), squeeze=False)
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
        files.append(str(f))
    return files


def run_reliability(
    model: HookedTransformer,
    datasets: Sequence[str | Path],
    hook_name: str,
    vector: VectorSpec = "caa",
    out_json: str | Path | None = None,
    out_dir: str | Path | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Analyse every dataset; write ``out_json`` (and plots in ``out_dir``); return the results."""
    return run_reliability_multi(
        model, datasets, hook_name, {"v": vector},
        {"v": out_json} if out_json is not None else None,
        {"v": out_dir} if out_dir is not None else None, **kw,
    )["v"]  # fmt: skip


def run_reliability_multi(
    model: HookedTransformer,
    datasets: Sequence[str | Path],
    hook_name: str,
    vectors: dict[str, VectorSpec],
    out_json: dict[str, str | Path] | None = None,
    out_dir: dict[str, str | Path] | None = None,
    **kw: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`run_reliability` for several vectors at once (one results document per vector)."""
    per: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in vectors}
    for p in tqdm(list(datasets), desc="datasets"):
        recs = analyse_dataset_multi(model, p, hook_name, vectors, **kw)
        for n in vectors:
            per[n][Path(p).stem] = recs[n]
    docs: dict[str, dict[str, Any]] = {}
    for n, vector in vectors.items():
        results = per[n]
        across: dict[str, Any] = {}
        names = list(results)
        for var in sorted({v for r in results.values() for v in r["ood"]}):
            if len(names) >= 3:
                idd = [results[m]["steerability"]["mean"] for m in names]
                odd = [results[m]["ood"][var]["steerability"] for m in names]
                across[var] = {"spearman_id_vs_ood": float(spearmanr(idd, odd).statistic)}
        od = Path(out_dir[n]) if out_dir and n in out_dir else None
        if od is not None:
            od.mkdir(parents=True, exist_ok=True)
        files = _plots(results, od) if od is not None else []
        config = {
            "datasets": [str(p) for p in datasets],
            "hook_name": hook_name,
            "model": model.cfg.model_name,
            "vector": vector if isinstance(vector, str) else "tensor",
            **{k: v for k, v in kw.items() if k not in ("sae", "effect_model")},
        }
        if kw.get("effect_model") is not None:
            config["effect_model"] = {
                k: v
                for k, v in kw["effect_model"].record.items()
                if isinstance(v, str | int | float)
            }
        public = {
            m: {k: v for k, v in r.items() if not k.startswith("_")} for m, r in results.items()
        }
        doc = {"config": config, "across_datasets": across, "plots": files, **public}
        if out_json and n in out_json:
            write_json_atomic(Path(out_json[n]), doc)
        docs[n] = doc
    return docs
