"""Statistics of the method comparison: paired held-out scale choice and paired bootstrap CIs.

Sample ``i`` of every method at every norm shares its prompt and its sampling noise, and the
unsteered row (norm 0) is one set of generations shared by all methods, so per-sample scores are
paired across methods. The samples are split once, by a seeded permutation, into a selection half
A and an evaluation half B (the same split for every method). Each method's norm is the one with
the best score on A (norm 0, unsteered, is a candidate); the score reported is measured on B. CIs
come from a paired bootstrap over B: each replicate resamples the same sample indices for every
method, so a difference's CI reflects the pairing. The chosen norms are held fixed.

The score is the SAE-TS metric, mean behaviour x mean coherence; AxBench's harmonic mean of the
two means is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError

__all__ = [
    "UNSTEERED",
    "aggregate",
    "difference_table",
    "harmonic_mean",
    "paired_comparison",
    "plot_differences",
    "plot_task",
    "score_table",
    "split_halves",
]

UNSTEERED = "unsteered"


def harmonic_mean(a: float, b: float) -> float:
    """AxBench's aggregate of two scores (0 if either is 0)."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices of the selection half A and the evaluation half B (seeded)."""
    if n < 2:
        raise ConfigError(f"need >= 2 samples per norm to split them, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def _score(beh: np.ndarray, coh: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean behaviour x mean coherence over ``idx`` (``[n]``: a 0-d array; ``[replicates, n]``)."""
    return np.asarray(beh[idx].mean(-1) * coh[idx].mean(-1))


def _harmonic(beh: np.ndarray, coh: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AxBench's harmonic mean of mean behaviour and mean coherence over ``idx`` (vectorised)."""
    b, c = np.asarray(beh[idx].mean(-1)), np.asarray(coh[idx].mean(-1))
    ok = (b > 0) & (c > 0)
    return np.where(ok, 2 * b * c / np.where(ok, b + c, 1.0), 0.0)


def _ci(x: np.ndarray) -> list[float]:
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]


def paired_comparison(
    behavior: Mapping[str, Mapping[float, np.ndarray]],
    coherence: Mapping[str, Mapping[float, np.ndarray]],
    unsteered: tuple[np.ndarray, np.ndarray],
    reference: str = "caa",
    seed: int = 0,
    bootstrap: int = 2000,
    fixed: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Held-out scores of each method and of the unsteered row, with paired CIs.

    ``behavior[m][f]`` / ``coherence[m][f]``: per-sample scores of method ``m`` at norm fraction
    ``f > 0``; ``unsteered``: the shared norm-0 (behaviour, coherence) arrays; ``fixed``: rows
    with nothing to choose (the prompting baseline), (behaviour, coherence) each, paired with the
    rest by sample index (``norm_fraction`` None). Every array has the same length. Returns, per method and for ``"unsteered"``, the chosen norm fraction, the score on
    half B with its CI, behaviour, coherence, harmonic mean, the in-sample maximum, the evaluation
    half's per-sample scores, and the paired differences (with CIs) from ``reference`` and from
    unsteered.
    """
    b0, c0 = (np.asarray(x, float) for x in unsteered)
    n = len(b0)
    if len(c0) != n:
        raise ConfigError("unsteered behaviour and coherence differ in length")
    for m in behavior:
        for f, v in behavior[m].items():
            if f <= 0 or len(v) != n or len(coherence[m][f]) != n:
                raise ConfigError(f"{m} at {f}: need f > 0 and {n} samples (as unsteered)")
    a_idx, b_idx = split_halves(n, seed)
    rng = np.random.default_rng(seed + 1)
    reps = rng.choice(b_idx, size=(bootstrap, len(b_idx)), replace=True)
    chosen: dict[str, tuple[float, np.ndarray, np.ndarray]] = {UNSTEERED: (0.0, b0, c0)}
    out: dict[str, Any] = {}
    everyone = np.arange(n)
    for m in behavior:
        beh = {0.0: b0, **{float(f): np.asarray(v, float) for f, v in behavior[m].items()}}
        coh = {0.0: c0, **{float(f): np.asarray(v, float) for f, v in coherence[m].items()}}
        fracs = sorted(beh)
        on_a = {f: float(_score(beh[f], coh[f], a_idx)) for f in fracs}
        full = {f: float(_score(beh[f], coh[f], everyone)) for f in fracs}
        best = max(fracs, key=lambda f: on_a[f])  # ties: the smaller norm
        steered = [f for f in fracs if f > 0]
        chosen[m] = (best, beh[best], coh[best])
        ins = max(fracs, key=lambda f: full[f])
        out[m] = {
            "norm_fraction": best,
            "best_steered_fraction": max(steered, key=lambda f: on_a[f]) if steered else None,
            "in_sample_max": full[ins],
            "in_sample_fraction": ins,
            "curve": {
                "norm_fraction": fracs,
                "behavior": [float(beh[f].mean()) for f in fracs],
                "coherence": [float(coh[f].mean()) for f in fracs],
                "score": [full[f] for f in fracs],
            },
        }
    out[UNSTEERED] = {"norm_fraction": 0.0}
    for k, (fb, fc) in (fixed or {}).items():
        fb, fc = np.asarray(fb, float), np.asarray(fc, float)
        if len(fb) != n or len(fc) != n:
            raise ConfigError(f"{k}: need {n} samples (as unsteered)")
        chosen[k] = (float("nan"), fb, fc)
        out[k] = {"norm_fraction": None, "fixed": True}
    boot = {k: _score(b, c, reps) for k, (_, b, c) in chosen.items()}
    for k, (_, b, c) in chosen.items():
        beh_b, coh_b = float(b[b_idx].mean()), float(c[b_idx].mean())
        out[k].update(
            score=float(_score(b, c, b_idx)),
            ci=_ci(boot[k]),
            behavior=beh_b,
            coherence=coh_b,
            harmonic=harmonic_mean(beh_b, coh_b),
            heldout={"behavior": b[b_idx].tolist(), "coherence": c[b_idx].tolist()},
        )
        for other, key in ((reference, "vs_" + reference), (UNSTEERED, "vs_unsteered")):
            if other in chosen and other != k:
                diff = out[k]["score"] - float(_score(chosen[other][1], chosen[other][2], b_idx))
                out[k][key] = {"diff": diff, "ci": _ci(boot[k] - boot[other])}
    out["split"] = {"selection": a_idx.tolist(), "evaluation": b_idx.tolist()}
    return out


def aggregate(
    records: Mapping[str, Mapping[str, Any]],
    rows: Sequence[str],
    reference: str = "caa",
    seed: int = 0,
    bootstrap: int = 2000,
) -> dict[str, Any]:
    """Mean held-out score over tasks of each row, with paired CIs of the mean differences.

    Each bootstrap replicate resamples every task's evaluation half independently (stratified by
    task), with the same indices for every row of that task.
    """
    if not records:
        raise ConfigError("no task records to aggregate")
    rng = np.random.default_rng(seed + 2)
    boot = {r: np.zeros(bootstrap) for r in rows}
    hboot = {r: np.zeros(bootstrap) for r in rows}
    point = {r: 0.0 for r in rows}
    hpoint = {r: 0.0 for r in rows}
    for rec in records.values():
        n_b = len(rec[rows[0]]["heldout"]["behavior"])
        reps = rng.integers(0, n_b, size=(bootstrap, n_b))
        for r in rows:
            b = np.asarray(rec[r]["heldout"]["behavior"])
            c = np.asarray(rec[r]["heldout"]["coherence"])
            boot[r] += _score(b, c, reps) / len(records)
            hboot[r] += _harmonic(b, c, reps) / len(records)
            point[r] += rec[r]["score"] / len(records)
            hpoint[r] += float(_harmonic(b, c, np.arange(n_b))) / len(records)
    out: dict[str, Any] = {}
    for r in rows:
        out[r] = {"score": point[r], "ci": _ci(boot[r]), "harmonic": hpoint[r],
                  "harmonic_ci": _ci(hboot[r])}  # fmt: skip
        for other, key in ((reference, "vs_" + reference), (UNSTEERED, "vs_unsteered")):
            if other in rows and other != r:
                out[r][key] = {"diff": point[r] - point[other], "ci": _ci(boot[r] - boot[other])}
    return out


def score_table(results: Mapping[str, Mapping[str, Any]], rows: Sequence[str]) -> str:
    """Tasks x rows: held-out score [95% CI] (chosen norm fraction; — for the prompt row); the
    mean row last, with AxBench's harmonic mean under it."""
    head = "| task | " + " | ".join(rows) + " |\n|---|" + "---|" * len(rows)
    lines = [head]
    for task, r in results.items():
        if task == "mean":
            continue
        cells = [
            f"{r[m]['score']:.3f} [{r[m]['ci'][0]:.3f}, {r[m]['ci'][1]:.3f}] "
            + ("(—)" if r[m]["norm_fraction"] is None else f"({r[m]['norm_fraction']:.2f})")
            for m in rows
        ]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if "mean" in results:
        agg = results["mean"]
        cells = [
            f"**{agg[m]['score']:.3f}** [{agg[m]['ci'][0]:.3f}, {agg[m]['ci'][1]:.3f}]"
            for m in rows
        ]
        lines.append("| **mean** | " + " | ".join(cells) + " |")
        if all("harmonic" in agg[m] for m in rows):
            cells = [f"{agg[m]['harmonic']:.3f}" for m in rows]
            lines.append("| mean harmonic (AxBench) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def difference_table(
    results: Mapping[str, Mapping[str, Any]], methods: Sequence[str], reference: str = "caa"
) -> str:
    """Tasks x methods: paired difference from ``reference`` and from unsteered, with CIs."""
    key_ref, key_un = "vs_" + reference, "vs_unsteered"
    cols = [f"{m} − {reference}" for m in methods if m != reference]
    cols += [f"{m} − unsteered" for m in methods]
    lines = ["| task | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols)]

    def cell(d: Mapping[str, Any]) -> str:
        return f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"

    for task, r in results.items():
        cells = [cell(r[m][key_ref]) for m in methods if m != reference]
        cells += [cell(r[m][key_un]) for m in methods]
        name = "**mean**" if task == "mean" else task
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_task(name: str, record: Mapping[str, Any], methods: Sequence[str], path: Path) -> None:
    """Behaviour, coherence and score against the norm for each method (means over all samples)."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3, sharex=True)
    for k, m in enumerate(methods):
        c = record[m]["curve"]
        for ax, key in zip(axes, ("behavior", "coherence", "score")):
            ax.plot(c["norm_fraction"], c[key], marker="o", ms=3, label=m, color=f"C{k}")
        axes[2].axvline(record[m]["norm_fraction"], ls=":", lw=0.8, color=f"C{k}")
    for ax, title in zip(axes, ("behaviour", "coherence", "behaviour x coherence")):
        ax.set(title=title, xlabel="norm / per-token residual norm", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{name} (dotted: norm chosen on the selection half)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_differences(
    mean: Mapping[str, Any], methods: Sequence[str], path: Path, reference: str = "caa"
) -> None:
    """Mean paired differences over tasks with 95% CIs: each method vs ``reference`` and unsteered."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2))
    axes = fig.subplots(1, 2)
    for ax, key, title in ((axes[0], "vs_" + reference, f"method − {reference}"),
                           (axes[1], "vs_unsteered", "method − unsteered")):  # fmt: skip
        ms = [m for m in methods if key in mean[m]]
        for y, m in enumerate(ms):
            d = mean[m][key]
            ax.errorbar(d["diff"], y, xerr=[[d["diff"] - d["ci"][0]], [d["ci"][1] - d["diff"]]],
                        fmt="o", capsize=4, color=f"C{list(methods).index(m)}")  # fmt: skip
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(ms)), ms)
        ax.set_ylim(-0.5, len(ms) - 0.5)
        ax.set(title=title, xlabel="mean held-out score difference (paired 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
