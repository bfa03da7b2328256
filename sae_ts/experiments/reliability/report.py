"""``sae-ts reliability``: run the Tan et al. analysis over datasets for one or more vectors.

For each dataset: a stratified subsample, a stratified disjoint split (counts per answer layout
recorded), vectors built on the train split, answer curves on the test split with the vector
added at ``positions`` (Tan et al.'s rule by default, see
:mod:`~sae_ts.experiments.reliability.steering`), on two strength axes:

* **strength** in units of the per-token residual norm (:data:`STRENGTHS`, -1.0 … 1.0 × the
  norm): every vector is a unit direction times ``s × norm``, so CAA and SAE-TS are compared at
  equal norm. The report picks the largest ``s`` at which the answer format stays sane: the
  per-token perplexity of the answer format (``(A)`` or ``(B)``) under steering, at every
  strength ``|s'| <= s``, is at most ``max_ppl_ratio`` × the unsteered one (geometric mean over
  test items), judged on the dataset's CAA vector. Steerability at ``s`` is the OLS slope over
  the grid points in ``[-s, s]`` (logit difference per 1.0 × norm).
* **Tan et al.'s multipliers** λ ∈ {-1.5 … 1.5} of the raw CAA vector (other vectors rescaled to
  its norm), slopes per unit λ.

Reported per vector: the mean slope with a bootstrap CI, slopes per answer layout, the |slope|
distribution, the anti-steerable fraction, the spurious decomposition, the strength sweep, and
out of distribution: the base vector on each persona-prompt variant, and vectors trained on one
variant tested on another (``ood_pairs``, default system_pos → user_neg as in the paper).
Per dataset also: ``caa_split_half_cosine``, the cosine between CAA vectors trained on the two
halves of the train split (near 0: the CAA direction is noise). Across datasets: Spearman ρ of
ID vs OOD steerability per pair.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ..._util import sha256_file
from ...artifacts import read_checkpoint, write_checkpoint, write_json_atomic
from ...effects import sae_fingerprint, typical_residual_norm
from ...errors import ConfigError
from ...types import LanguageModel, SAELike
from .items import (
    MULTIPLIERS,
    MCItem,
    layout_counts,
    letter_adjusted,
    linearity,
    load_mwe,
    ood_variants,
    slope_summary,
    split_items,
    spurious_factors,
    steerability,
    stratified_sample,
    to_mc_items,
)
from .plots import plot_dataset, plot_id_vs_ood
from .steering import (
    STRENGTHS,
    SteerPositions,
    answer_curves,
    answer_tokens,
    caa_mc_vector,
    sae_ts_mc_vector,
)

__all__ = [
    "OOD_PAIRS",
    "analyse_dataset",
    "analyse_dataset_multi",
    "run_reliability",
    "run_reliability_multi",
    "strength_sweep",
]

VectorSpec = str | torch.Tensor
OOD_PAIRS: tuple[tuple[str, str], ...] = (("system_pos", "user_neg"),)
"""(train variant, test variant) pairs beyond the base vector on each variant."""


def strength_sweep(
    P: np.ndarray,
    F: np.ndarray,
    strengths: Sequence[float],
    n_answer_tokens: int,
    items: Sequence[MCItem],
    max_ppl_ratio: float = 2.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """For each positive strength ``s`` of the grid: steerability over ``[-s, s]`` and sanity.

    ``P`` and ``F`` are ``[n_items, len(strengths)]`` propensities and answer-format
    log-probabilities; ``strengths`` must include 0. ``ppl_ratio`` is the largest, over the grid
    points in ``[-s, s]``, of the answer format's per-token perplexity under steering over the
    unsteered one (geometric mean over items); ``sane`` is ``ppl_ratio <= max_ppl_ratio``.
    """
    s = np.asarray(strengths, dtype=np.float64)
    if 0.0 not in s:
        raise ConfigError("the strength grid must include 0 (the unsteered answer)")
    z = int(np.flatnonzero(s == 0)[0])
    ratio = np.exp(-(F - F[:, [z]]).mean(0) / n_answer_tokens)  # per strength
    out = []
    for smax in sorted({abs(x) for x in s if x != 0}):
        sel = np.abs(s) <= smax + 1e-9
        st = steerability(P[:, sel], s[sel])
        summ = slope_summary(st.slopes, items, seed)
        worst = float(ratio[sel].max())
        out.append({
            "strength": float(smax), "ppl_ratio": worst, "sane": worst <= max_ppl_ratio,
            "mean": summ["mean"], "ci95": summ["ci95"],
            "anti_steerable_fraction": summ["anti_steerable_fraction"],
        })  # fmt: skip
    return out


def _choose(sweep: list[dict[str, Any]]) -> tuple[float, bool]:
    """The largest strength with every smaller one sane too; (smallest, False) if none is."""
    chosen = None
    for row in sweep:
        if not row["sane"]:
            break
        chosen = row["strength"]
    return (chosen, True) if chosen is not None else (sweep[0]["strength"], False)


def _slopes_record(
    P: np.ndarray, x: np.ndarray, items: Sequence[MCItem], seed: int
) -> dict[str, Any]:
    """Steerability (:func:`slope_summary` plus per-sample slopes) and spurious factors."""
    st = steerability(P, x)
    rec = slope_summary(st.slopes, items, seed) | {
        "letter_adjusted": letter_adjusted(st.slopes, items, seed),
        "per_sample": st.slopes.tolist(),
        "residual_rmse": st.residual_rmse.tolist(),
    }
    return {"steerability": rec, "spurious": spurious_factors(st.slopes, items)}


def analyse_dataset(
    model: LanguageModel,
    path: str | Path,
    hook_name: str,
    vector: VectorSpec = "caa",
    multipliers: Sequence[float] = MULTIPLIERS,
    **kw: Any,
) -> dict[str, Any]:
    """The analysis of one dataset for one vector (see :func:`analyse_dataset_multi`)."""
    return analyse_dataset_multi(model, path, hook_name, {"v": vector}, multipliers, **kw)["v"]


def _build_vectors(
    model: LanguageModel,
    tr: Sequence[MCItem],
    hook_name: str,
    vectors: dict[str, VectorSpec],
    caa: torch.Tensor,
    sae: SAELike | None,
    effect_model: Any,
    seed: int,
) -> dict[str, dict[str, Any]]:
    built: dict[str, dict[str, Any]] = {}
    for name, vector in vectors.items():
        rec: dict[str, Any] = {}
        if isinstance(vector, str) and vector == "caa":
            v, kind = caa, "caa (raw norm on Tan's axis)"
        elif isinstance(vector, str) and vector == "sae_ts":
            if sae is None or effect_model is None:
                raise ConfigError("vector='sae_ts' needs the SAE and an effect model")
            if sae.cfg.metadata.hook_name != hook_name:
                raise ConfigError(f"the SAE reads {sae.cfg.metadata.hook_name}, not {hook_name}")
            v, feats = sae_ts_mc_vector(model, sae, effect_model, tr, hook_name)
            kind, rec["features"] = "sae_ts", [[f, w] for f, w in feats]
        elif isinstance(vector, str) and vector == "random":
            g = torch.Generator().manual_seed(seed)
            v, kind = torch.randn(caa.shape[0], generator=g), f"random (Gaussian, seed {seed})"
        elif isinstance(vector, str):
            raise ConfigError(
                f"unknown vector {vector!r}: use 'caa', 'sae_ts', 'random' or a tensor"
            )
        else:
            v, kind = torch.as_tensor(vector, dtype=torch.float32), "given"
        if not float(v.norm()) > 0:
            raise ConfigError(f"vector {name!r} is zero")
        rec |= {"unit": v / v.norm(), "kind": kind, "is_caa": kind.startswith("caa")}
        built[name] = rec
    return built


Curves = dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]


def _all_curves(
    model: LanguageModel,
    te: Sequence[MCItem],
    hook_name: str,
    units: dict[tuple[str, str], torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    defs: dict[str, tuple[str | None, str]],
    coefs: np.ndarray,
    positions: SteerPositions,
    batch_size: int,
    propensity: Literal["answer", "letter"],
) -> tuple[Curves, int]:
    """(train variant, vector, test variant) -> (propensity, format log-prob), ``[n, coefs]``.

    A vector is run on its own train variant (ID) and on each test variant paired with it; all
    vectors needed on one test variant share its unsteered prompt prefixes.
    """
    tests: dict[str, list[tuple[str, str]]] = {}
    for tv, tt in [*pairs, *[(tv, tv) for tv, _ in pairs]]:
        tests.setdefault(tt, [])
        tests[tt] += [key for key in units if key[0] == tv and key not in tests[tt]]
    curves: Curves = {}
    n_ans = 0
    for tt, keys in tests.items():
        sys_, pre = defs[tt]
        V = torch.stack([units[key] for key in keys])
        c = answer_curves(model, te, V, hook_name, coefs.tolist(), positions, sys_, pre, batch_size)
        n_ans = c.n_answer_tokens
        for i, (tv, n) in enumerate(keys):
            curves[(tv, n, tt)] = (c.scores(propensity)[:, i], c.format_logprob[:, i])
    return curves, n_ans


def _split(
    path: Path, train: float = 0.5, max_items: int | None = 200, seed: int = 0
) -> tuple[list[MCItem], list[MCItem]]:
    """The dataset's (train, test) items: a stratified subsample, then a stratified split."""
    items = to_mc_items(load_mwe(path), source=path.stem)
    if max_items is not None and len(items) > max_items:
        items = stratified_sample(items, max_items, seed)
    return split_items(items, train=train, seed=seed)


def _upgrade(recs: dict[str, Any], path: Path, kw: dict[str, Any]) -> bool:
    """Give records checkpointed before ``letter_adjusted`` and ``linearity`` existed those
    fields, from their per-sample slopes, their curves and the same split (what a fresh run
    computes); returns whether anything was added."""
    lin = [r for r in recs.values() if "linearity" not in r["steerability"]]
    for r in lin:
        r["steerability"]["linearity"] = linearity(r["_curves"]["base"], r["strengths"])
    todo = [
        st
        for r in recs.values()
        for st in (r["steerability"], r["tan_multipliers"]["steerability"])
        if "letter_adjusted" not in st
    ]
    if todo:
        args = {k: kw[k] for k in ("train", "max_items", "seed") if k in kw}
        _, te = _split(path, **args)
        for st in todo:
            st["letter_adjusted"] = letter_adjusted(
                np.asarray(st["per_sample"]), te, args.get("seed", 0)
            )
    return bool(todo or lin)


def analyse_dataset_multi(
    model: LanguageModel,
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
    positions: SteerPositions = "tan",
    strengths: Sequence[float] = STRENGTHS,
    propensity: Literal["answer", "letter"] = "answer",
    max_ppl_ratio: float = 2.0,
    ood_pairs: Sequence[tuple[str, str]] = OOD_PAIRS,
    residual_norm: float | None = None,
    batch_size: int = 8,
) -> dict[str, dict[str, Any]]:
    """The analysis of one dataset for several vectors on the same split (see the module).

    ``vectors``: name -> ``"caa"``, ``"sae_ts"`` (built from the training items with ``sae``
    and ``effect_model``), ``"random"`` (a seeded Gaussian direction, a control) or a tensor.
    The strength is chosen on the dataset's CAA vector, which is always built. ``propensity``:
    ``"answer"`` (Tan et al.'s summed answer logits) or ``"letter"``. Returns one JSON-ready
    record per vector (keys starting with ``_`` hold curves for plots).
    """
    if propensity not in ("answer", "letter"):
        raise ConfigError(f"propensity must be 'answer' or 'letter', got {propensity!r}")
    path = Path(path)
    tr, te = _split(path, train, max_items, seed)
    norm = float(residual_norm or typical_residual_norm(model, hook_name))
    defs = ood_variants(path.stem)
    for tv, tt in ood_pairs:
        if tv not in defs or tt not in defs:
            raise ConfigError(f"unknown variant in OOD pair {(tv, tt)}; have {sorted(defs)}")
    caa = caa_mc_vector(model, tr, hook_name, batch_size=batch_size)
    half_a, half_b = split_items(tr, train=0.5, seed=seed)  # is CAA's direction reproducible?
    halves = [caa_mc_vector(model, h, hook_name, batch_size=batch_size) for h in (half_a, half_b)]
    split_half = float(torch.cosine_similarity(halves[0], halves[1], dim=0))
    specs = dict(vectors)
    if not any(isinstance(v, str) and v == "caa" for v in specs.values()):
        specs["_caa"] = "caa"
    built = _build_vectors(model, tr, hook_name, specs, caa, sae, effect_model, seed)
    pairs = [("base", v) for v in defs if v != "base"] + list(ood_pairs) if variants else []
    # (train variant, name) -> unit vector; CAA is retrained on each train variant
    units = {("base", n): b["unit"] for n, b in built.items()}
    for tv in sorted({tv for tv, _ in pairs} - {"base"}):
        sys_, pre = defs[tv]
        v = caa_mc_vector(model, tr, hook_name, sys_, pre, batch_size=batch_size)
        units |= {(tv, n): v / v.norm() for n, b in built.items() if b["is_caa"]}
    # one column per distinct coefficient (0 is on both axes); P[:, :n_tan] is Tan's axis
    wanted = [m * float(caa.norm()) for m in multipliers] + [s * norm for s in strengths]
    coefs, col = np.unique(np.asarray(wanted, dtype=np.float64), return_inverse=True)
    n_tan = len(multipliers)
    curves, n_ans = _all_curves(
        model, te, hook_name, units, [*pairs, ("base", "base")], defs, coefs, positions,
        batch_size, propensity,
    )  # fmt: skip
    curves = {key: (P[:, col], F[:, col]) for key, (P, F) in curves.items()}

    def get(tv: str, n: str, tt: str) -> tuple[np.ndarray, np.ndarray]:
        return curves[(tv, n, tt)] if (tv, n, tt) in curves else curves[("base", n, tt)]

    s_arr = np.asarray(strengths, dtype=np.float64)
    caa_name = next(n for n, b in built.items() if b["is_caa"])
    P, F = get("base", caa_name, "base")
    sweep_caa = strength_sweep(
        P[:, n_tan:], F[:, n_tan:], strengths, n_ans, te, max_ppl_ratio, seed
    )
    chosen, sane = _choose(sweep_caa)
    sel = np.abs(s_arr) <= chosen + 1e-9
    tok = model.tokenizer
    assert tok is not None
    ex = answer_tokens(tok, te[0])
    steered = [tok.decode([(ex.prompt + ex.pos)[i]]) for i in ex.steered(positions)]
    common = {
        "n_train": len(tr), "n_test": len(te),
        "split_counts": {"train": layout_counts(tr), "test": layout_counts(te)},
        "positions": {"rule": positions, "steered_tokens_example": steered},
        "propensity": propensity, "residual_norm": norm, "caa_norm": float(caa.norm()),
        "caa_split_half_cosine": split_half,
        "strength": {
            "chosen": chosen, "sane": sane, "units": "x the typical per-token residual norm",
            "chosen_on": "caa",
            "criterion": f"largest s with answer-format per-token perplexity <= {max_ppl_ratio} x "
            "unsteered at every grid strength in [-s, s] (geometric mean over test items)",
        },
        "strengths": [float(x) for x in s_arr[sel]],
    }  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    for name, b in built.items():
        if name == "_caa":
            continue
        P, F = get("base", name, "base")
        Pn = P[:, n_tan:]
        out: dict[str, Any] = dict(common) | {
            "vector": b["kind"],
            "cosine_with_caa": float(torch.cosine_similarity(b["unit"], caa / caa.norm(), dim=0)),
        }
        if "features" in b:
            out["features"] = b["features"]
        out["strength"] = out["strength"] | {
            "sweep": strength_sweep(Pn, F[:, n_tan:], strengths, n_ans, te, max_ppl_ratio, seed)
        }
        rec = _slopes_record(Pn[:, sel], s_arr[sel], te, seed)
        out |= rec
        out["anti_steerable_fraction"] = rec["steerability"]["anti_steerable_fraction"]
        tan = _slopes_record(P[:, :n_tan], np.asarray(multipliers, float), te, seed)
        top = max(abs(m) for m in multipliers) * float(caa.norm()) / norm
        out["tan_multipliers"] = tan | {
            "multipliers": list(multipliers),
            "max_strength_in_norm_units": top,
        }
        out["ood"] = _ood(get, name, pairs, sel, s_arr, n_tan, te, seed)
        out["_curves"] = {"base": Pn[:, sel].tolist()}
        # from the stored curve, as a resumed checkpoint does (the same bits either way)
        out["steerability"]["linearity"] = linearity(out["_curves"]["base"], out["strengths"])
        out["_curves_all"] = {"strengths": s_arr.tolist(), "propensity": Pn.tolist()}
        out["_items"] = [{"pos": it.pos, "pos_is_yes": it.pos_is_yes} for it in te]
        results[name] = out
    return results


def _ood(
    get: Callable[[str, str, str], tuple[np.ndarray, np.ndarray]],
    name: str,
    pairs: Sequence[tuple[str, str]],
    sel: np.ndarray,
    s: np.ndarray,
    n_tan: int,
    te: Sequence[MCItem],
    seed: int,
) -> dict[str, dict[str, Any]]:
    z = int(np.flatnonzero(s == 0)[0])
    out = {}
    for tv, tt in pairs:
        P_id, P_ood = get(tv, name, tv)[0][:, n_tan:], get(tv, name, tt)[0][:, n_tan:]
        idm = float(steerability(P_id[:, sel], s[sel]).mean)
        st = slope_summary(steerability(P_ood[:, sel], s[sel]).slopes, te, seed)
        out[f"{tv}->{tt}"] = {
            "steerability": st["mean"], "ci95": st["ci95"],
            "anti_steerable_fraction": st["anti_steerable_fraction"],
            "id_steerability": idm, "relative_steerability": st["mean"] / idm if idm else None,
            "unsteered_propensity_gap": float(P_ood[:, z].mean() - P_id[:, z].mean()),
        }  # fmt: skip
    return out


def run_reliability(
    model: LanguageModel,
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
    model: LanguageModel,
    datasets: Sequence[str | Path],
    hook_name: str,
    vectors: dict[str, VectorSpec],
    out_json: dict[str, str | Path] | None = None,
    out_dir: dict[str, str | Path] | None = None,
    checkpoint_dir: str | Path | None = None,
    **kw: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`run_reliability` for several vectors at once (one results document per vector).

    ``checkpoint_dir``: each finished dataset's records are saved there, in a file named by the
    digest of the model, hook, vectors, settings and dataset file; a rerun with the same ones
    reuses them instead of recomputing.
    """
    # The key holds what the caller decided, not what is computed from it: the residual norm
    # follows from the model and hook (both in the key), and its last bits differ between CPUs.
    given = dict(kw)
    kw.setdefault("residual_norm", typical_residual_norm(model, hook_name))
    per: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in vectors}
    for p in tqdm(list(datasets), desc="datasets"):
        key = _dataset_key(model, p, hook_name, vectors, given) if checkpoint_dir else ""
        # named by the key, not the dataset: a file is found only by the settings that made it
        ckpt = Path(checkpoint_dir) / f"{key[:16]}.json" if checkpoint_dir else None
        recs = read_checkpoint(ckpt, key) if ckpt else None
        if recs is None:
            # through JSON, so a fresh record and a resumed one are the same objects
            recs = json.loads(
                json.dumps(
                    analyse_dataset_multi(model, p, hook_name, vectors, **kw), default=_plain
                )
            )
            if ckpt:
                write_checkpoint(ckpt, key, recs)
        elif ckpt and _upgrade(recs, Path(p), kw):
            write_checkpoint(ckpt, key, recs)
        for n in vectors:
            per[n][Path(p).stem] = recs[n]
    docs: dict[str, dict[str, Any]] = {}
    for n, vector in vectors.items():
        results = per[n]
        across: dict[str, Any] = {}
        names = list(results)
        for pair in sorted({k for r in results.values() for k in r["ood"]}):
            if len(names) >= 3:
                idd = [results[m]["steerability"]["mean"] for m in names]
                odd = [results[m]["ood"][pair]["steerability"] for m in names]
                across[pair] = {"spearman_id_vs_ood": float(spearmanr(idd, odd).statistic)}
        od = Path(out_dir[n]) if out_dir and n in out_dir else None
        files: list[str] = []
        if od is not None:
            od.mkdir(parents=True, exist_ok=True)
            files = [plot_dataset(m, r, od) for m, r in results.items()]
            files += plot_id_vs_ood(results, od)
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


def _plain(o: Any) -> Any:
    """JSON fallback: numpy and torch scalars to Python numbers, anything else to its str."""
    return o.item() if hasattr(o, "item") else str(o)


def _dataset_key(
    model: LanguageModel,
    path: str | Path,
    hook_name: str,
    vectors: dict[str, VectorSpec],
    kw: dict[str, Any],
) -> str:
    """A digest of everything that decides one dataset's records, the same on every machine:
    settings, seeds, the SAE's and effect model's weights and the dataset file's sha256; no path,
    no machine, no float computed at run time."""
    vecs = {
        n: v
        if isinstance(v, str)
        else hashlib.sha256(v.detach().cpu().float().numpy().tobytes()).hexdigest()
        for n, v in vectors.items()
    }
    settings = {k: v for k, v in kw.items() if k not in ("sae", "effect_model")}
    if kw.get("sae") is not None:
        settings["sae"] = sae_fingerprint(kw["sae"])
    if kw.get("effect_model") is not None:
        settings["effect_model"] = hashlib.sha256(
            kw["effect_model"].W.detach().cpu().float().numpy().tobytes()
        ).hexdigest()
    doc = {"model": model.cfg.model_name, "hook": hook_name, "vectors": vecs,
           "settings": settings, "dataset": sha256_file(Path(path))}  # fmt: skip
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=_plain).encode()).hexdigest()
