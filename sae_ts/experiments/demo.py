"""``sae-ts demo``: the whole SAE-TS pipeline on the embedded model, in a few minutes on a CPU.

1. estimate the SAE-feature effects of candidate vectors (SAE decoder rows and random directions)
   at one scale, calibrated to raise the LM loss by 0.5 nats on a reference text;
2. fit the linear effect model and report its held-out fit;
3. pick a concept target with :func:`~sae_ts.baselines.find_features` from built-in contrastive
   sentences;
4. build four vectors: the paper's SAE-TS rule, sae-ts's ``targeted`` solver, CAA and SAE-latent
   steering; measure each at the same scale; print one table; show steered generations;
5. save a plot and every artefact under ``--out``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from .._util import sink_mask, to_tokens
from ..baselines import caa_vector, find_features, sae_latent_vector
from ..effect_model import load_default_effect_model
from ..effects import EffectConfig, EffectEstimator
from ..errors import SaeTsError
from ..evaluation import measure_vector
from ..generation import generate
from ..loading import load_default
from ..models import load_default_model
from ..sae import DEFAULT_SAE_DIR
from ..solver import Target, solve
from ..steering import SteeringVector, steer
from .pipeline import DemoBudget, estimate_and_fit

Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    """The default ``log``: say nothing."""


__all__ = [
    "DEMO_NEG",
    "DEMO_POS",
    "DemoBudget",
    "estimate_and_fit",
    "format_table",
    "run_demo",
    "steering_only_demo",
]

# Hand-written contrastive sentences for the demo concept ("weddings").
DEMO_POS = [
    "The bride walked down the aisle in a white wedding dress.",
    "They exchanged wedding rings and vows in front of their families.",
    "The wedding reception had a three-tier cake and a first dance.",
    "She caught the bouquet at her sister's wedding.",
    "The groom gave a toast to his new wife at the wedding.",
    "We are planning our wedding for next June at the church.",
]
DEMO_NEG = [
    "The accountant walked down the hallway in a grey suit.",
    "They exchanged business cards in front of their colleagues.",
    "The office meeting had a projector and a long agenda.",
    "She caught the bus at the corner of the street.",
    "The manager gave a talk to the new staff at the meeting.",
    "We are planning our budget for next June at the office.",
]


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    cols = [
        "target_effect",
        "off_target_norm",
        "target_share",
        "predicted_target_effect",
        "predicted_cosine",
    ]
    head = f"{'method':<12}" + "".join(f"{c:>24}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        cells = "".join(f"{'—' if r[c] is None else f'{r[c]:.4f}':>24}" for c in cols)
        lines.append(f"{name:<12}{cells}")
    return "\n".join(lines)


def _samples(model: HookedTransformer, toks: torch.Tensor, seed: int, n_new: int = 24) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    ids = generate(model, toks, n_new, temperature=1.0, top_k=50, top_p=0.3, generator=g)
    return [str(model.to_string(r[1:])) for r in ids]


def run_demo(
    out: str | Path = "runs/demo",
    budget: DemoBudget | None = None,
    seed: int = 0,
    device: str = "cpu",
    log: Log = _quiet,
) -> dict[str, Any]:
    """Run the demo pipeline; return the table rows, generations and fit figures.

    ``log`` receives one line per stage (the command line passes ``print``). Without the embedded
    SAE, runs :func:`steering_only_demo` instead (the result then has ``"steering_only": True``).
    """
    budget = budget or DemoBudget()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (DEFAULT_SAE_DIR / "sae_weights.safetensors").exists():
        log(f"The embedded SAE is not in {DEFAULT_SAE_DIR} (build it with `sae-ts train-sae`);")
        log(
            "running the steering part of the demo only: CAA for the demo concept, steered vs unsteered."
        )
        return {**steering_only_demo(seed=seed, device=device), "steering_only": True}
    t0 = time.time()
    model, sae, hook = load_default(device=device)
    log(
        f"[1/5] loaded {model.cfg.model_name} + SAE ({sae.cfg.d_sae} latents at {hook}) in {time.time() - t0:.0f}s"
    )

    t1 = time.time()
    em, rep, ds, scale = estimate_and_fit(model, sae, hook, out / "effects", budget, seed)
    em.save(out / "effect_model")
    log(
        f"      scale: {scale:.1f} (median scale at which 6 random unit vectors add 0.5 nats of LM loss)"
    )
    log(f"[2/5] estimated {len(ds)} effects in {time.time() - t1:.0f}s")
    est = EffectEstimator(
        model, sae, config=EffectConfig(rollouts=budget.rollouts, seq_len=budget.seq_len), seed=seed
    )
    log(f"[3/5] {rep}")

    feats = find_features(model, sae, DEMO_POS, DEMO_NEG, hook, top=3)
    if not feats:
        raise SaeTsError("find_features found no latent firing more on the positive sentences")
    total = sum(s for _, s in feats)
    target = Target({f: s / total for f, s in feats})
    log(f"[4/5] target features (weddings): {[(f, round(s, 3)) for f, s in feats]}")

    vectors = {
        "caa": caa_vector(model, DEMO_POS, DEMO_NEG, hook),
        "sae_latent": sae_latent_vector(sae, target.raise_),
        "sae_ts": solve(em, target, "sae_ts"),
        "targeted": solve(em, target, "targeted"),
    }
    models = dict.fromkeys(vectors, em)
    try:  # the same solvers with the effect model shipped for this SAE (far more effects)
        shipped = load_default_effect_model()
    except FileNotFoundError:
        shipped = None
    if shipped is not None:
        log(f"      shipped effect model: {shipped.record.get('n_vectors')} vectors x "
              f"{shipped.record.get('rollouts')} rollouts, scale {shipped.record.get('scale', 0):.1f}, "
              f"held-out R² {shipped.record.get('heldout_r2', float('nan')):.3f}")  # fmt: skip
        vectors["sae_ts (shipped W)"] = solve(shipped, target, "sae_ts")
        vectors["targeted (shipped W)"] = solve(shipped, target, "targeted")
        models["sae_ts (shipped W)"] = models["targeted (shipped W)"] = shipped
    rows: dict[str, dict[str, Any]] = {}
    gens: dict[str, list[str]] = {}
    toks = to_tokens(model, ["I think"] * 2)
    gens["unsteered"] = _samples(model, toks, seed)
    for i, (name, v) in enumerate(vectors.items()):
        m = measure_vector(
            est,
            v,
            scale,
            target,
            baseline=ds.baseline,
            effect_model=models[name],
            rollouts=budget.eval_rollouts,
            vector_id=10**6 + i,
        )
        rows[name] = m.row()
        SteeringVector(
            v, hook, model.cfg.model_name, name, scale, target.to_dict(), sae=str(hook), seed=seed
        ).save(out / f"vector_{name.replace(' (shipped W)', '_shipped')}")
        with steer(model, v, hook, scale=scale):
            gens[name] = _samples(model, toks, seed)
    log(f"[5/5] measured at scale {scale:.1f} ({budget.eval_rollouts} rollouts per prompt)")
    _plot(rows, out / "demo.png")
    result = {
        "scale": scale,
        "fit": {"r2": rep.r2, "cosine": rep.cosine, "alpha": rep.alpha},
        "target": target.to_dict(),
        "rows": rows,
        "generations": gens,
        "seconds": time.time() - t0,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    result["out"] = str(out)
    return result


def steering_only_demo(
    hook: str = "blocks.12.hook_resid_post", seed: int = 0, device: str = "cpu"
) -> dict[str, Any]:
    """Steered vs unsteered generations with a CAA vector; needs no SAE."""
    model = load_default_model(device=device)
    v = caa_vector(model, DEMO_POS, DEMO_NEG, hook)
    toks = to_tokens(model, ["I think"] * 2)
    _, cache = model.run_with_cache(to_tokens(model, DEMO_NEG), names_filter=hook)
    acts = cache[hook]
    scale = float(acts.norm(dim=-1)[~sink_mask(acts)].median())  # the typical non-sink norm
    gens: dict[str, list[str]] = {}
    for name, s in (("unsteered", 0.0), (f"caa x {scale:.0f}", scale)):
        with steer(model, v, hook, scale=s):
            ids = generate(
                model, toks, 24, top_k=50, top_p=0.3, generator=torch.Generator().manual_seed(seed)
            )
        gens[name] = [str(model.to_string(r[1:])) for r in ids]
    return {"generations": gens, "scale": scale}


def _plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    names = list(rows)
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, 3)
    for ax, key, title in zip(
        axes,
        ["target_effect", "off_target_norm", "target_share"],
        ["target effect ↑", "off-target norm ↓", "target share ↑"],
    ):
        ax.bar(
            names,
            [rows[n][key] for n in names],
            color=["#888", "#b58", "#58b", "#2a7", "#37c", "#1a5"][: len(names)],
        )
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Measured SAE-feature effects of four steering vectors (same scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
