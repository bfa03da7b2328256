"""Plots of the reliability analysis (records from :mod:`~sae_ts.experiments.reliability.report`).

:func:`plot_dataset`: one figure per dataset and vector with the mean propensity per answer
layout along the strength axis, the slopes per layout and the |slope| distribution at the chosen
strength, and the strength sweep (mean slope with its CI, answer-format perplexity ratio).
:func:`plot_id_vs_ood`: ID vs OOD steerability across datasets, one panel per OOD pair.
Matplotlib's object API only: the user's pyplot backend is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from .items import MCItem, answer_layout

__all__ = ["plot_dataset", "plot_id_vs_ood"]


def _layouts(record: dict[str, Any]) -> list[str]:
    return [answer_layout(MCItem("", it["pos"], "", it["pos_is_yes"])) for it in record["_items"]]


def plot_dataset(name: str, r: dict[str, Any], out_dir: Path) -> str:
    """Write ``{name}_reliability.png`` for one dataset's record; return its path."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    fig = Figure(figsize=(11, 7.5))
    ax = fig.subplots(2, 2)
    lay = np.array(_layouts(r))
    s = np.array(r["_curves_all"]["strengths"])
    P = np.array(r["_curves_all"]["propensity"])
    chosen = r["strength"]["chosen"]
    for k in sorted(set(lay)):
        ax[0, 0].plot(s, P[lay == k].mean(0), marker="o", ms=3, label=k)
    for x in (-chosen, chosen):
        ax[0, 0].axvline(x, color="k", ls=":", lw=0.8)
    ax[0, 0].set(xlabel="strength (× residual norm)", ylabel="mean propensity",
                 title=f"{name}: propensity by answer layout")  # fmt: skip
    ax[0, 0].legend(fontsize=8)
    slopes = np.array(r["steerability"]["per_sample"])
    keys = sorted(set(lay))
    ax[0, 1].boxplot([slopes[lay == k] for k in keys], tick_labels=keys)
    ax[0, 1].axhline(0, color="k", lw=0.8)
    ax[0, 1].set(ylabel="per-item slope", title=f"slopes by layout at s = {chosen:g}")
    ax[1, 0].hist(np.abs(slopes), bins=20, color="#777")
    ax[1, 0].set(xlabel="|slope| (logit diff per 1.0 × norm)", ylabel="items",
                 title="|slope| distribution")  # fmt: skip
    sw = r["strength"]["sweep"]
    xs = [row["strength"] for row in sw]
    m = np.array([row["mean"] for row in sw])
    ci = np.array([row["ci95"] for row in sw])
    ax[1, 1].errorbar(xs, m, yerr=[m - ci[:, 0], ci[:, 1] - m], marker="o", capsize=3)
    ax[1, 1].axhline(0, color="k", lw=0.8)
    ax[1, 1].set(xlabel="max strength s (slope over [-s, s])", ylabel="mean slope (95% CI)",
                 title="strength sweep")  # fmt: skip
    tw = ax[1, 1].twinx()
    tw.plot(xs, [row["ppl_ratio"] for row in sw], color="#c33", ls="--", marker="x")
    tw.set_ylabel("answer-format perplexity ratio", color="#c33")
    fig.tight_layout()
    f = out_dir / f"{name}_reliability.png"
    fig.savefig(f, dpi=100)
    return str(f)


def plot_id_vs_ood(results: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    """Write ``id_vs_ood.png`` (needs at least 3 datasets); return the paths written."""
    from matplotlib.figure import Figure

    names = list(results)
    pairs = sorted({k for r in results.values() for k in r["ood"]})
    if len(names) < 3 or not pairs:
        return []
    fig = Figure(figsize=(3.4 * len(pairs), 3.4))
    axes = fig.subplots(1, len(pairs), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        idd = [results[n]["steerability"]["mean"] for n in names]
        odd = [results[n]["ood"][pair]["steerability"] for n in names]
        ax.scatter(idd, odd)
        ax.set(title=f"{pair}: ρ={spearmanr(idd, odd).statistic:.2f}",
               xlabel="ID steerability", ylabel="OOD steerability")  # fmt: skip
    fig.tight_layout()
    f = out_dir / "id_vs_ood.png"
    fig.savefig(f, dpi=100)
    return [str(f)]
