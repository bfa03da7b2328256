"""``sae-ts demo``: SAE-targeted steering on the embedded model, in a few minutes on a CPU.

1. load the embedded model, its SAE and the effect model shipped for them (no estimation: the
   shipped model comes from a campaign far larger than a demo could afford), and say how well it
   predicts on held-out directions, next to its noise ceiling;
2. pick a concept target with :func:`~sae_ts.baselines.find_features` from built-in contrastive
   sentences;
3. build four vectors: the paper's SAE-TS rule, sae-ts's ``targeted`` solver, CAA and SAE-latent
   steering; measure each at 0.5 x the typical per-token residual norm (the protocol's scale),
   next to an unsteered row (a second unsteered measurement: the noise floor); show predicted
   against measured effects and an honest verdict; show steered generations;
4. save a plot and every artefact under ``--out``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._util import sink_mask, to_tokens
from ..backends import Backend, run_with_cache
from ..baselines import caa_vector, find_features, sae_latent_vector
from ..effect_model import DisruptionEffectModel, load_default_effect_model
from ..effects import EffectConfig, EffectEstimator, typical_residual_norm
from ..errors import SaeTsError
from ..evaluation import measure_vector
from ..generation import generate
from ..loading import load_default
from ..models import DEFAULT_MODEL, load_default_model
from ..sae import default_sae_dir
from ..solver import Target, solve, solve_in_decoder_span
from ..steering import SteeringVector, steer
from ..types import LanguageModel
from .pipeline import DemoBudget, estimate_and_fit

Log = Callable[[str], None]

DEMO_MAX_DISRUPTION = 0.5
"""nats: ``targeted``'s budget on its measured next-token KL with a disruption model (a typical
decoder row's on Gemma 3 270M at 0.2 x the norm is 0.48)."""


BROKEN_TEXT_KL = 2.0
"""nats: a vector whose next-token KL exceeds this is flagged as breaking the text (on Gemma 3
270M at 0.2 x the norm a decoder row's median is 0.53, a random direction's 11.8)."""


def _quiet(msg: str) -> None:
    """The default ``log``: say nothing."""


__all__ = [
    "DEMO_NEG",
    "DEMO_POS",
    "DemoBudget",
    "DemoSettings",
    "demo_verdict",
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
    if any("next_token_kl" in r for r in rows.values()):
        cols.append("next_token_kl")
    head = f"{'method':<12}" + "".join(f"{c:>24}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        cells = "".join(f"{'—' if r.get(c) is None else f'{r[c]:.4f}':>24}" for c in cols)
        lines.append(f"{name:<12}{cells}")
    return "\n".join(lines)


def _samples(model: LanguageModel, toks: torch.Tensor, seed: int, n_new: int = 24) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    ids = generate(model, toks, n_new, temperature=1.0, top_k=50, top_p=0.3, generator=g)
    return [str(model.to_string(r[1:])) for r in ids]


@dataclass(frozen=True)
class DemoSettings:
    """What the demo measures; the defaults take ~2-3 minutes of measurement on a 2-core CPU."""

    rollouts: int = 4  # per prompt, per measured vector
    baseline_multiplier: int = 4  # unsteered rollouts = this x rollouts
    # x the typical per-token residual norm at the hook; None: the scale the shipped effect
    # model was measured at (its record's ``scale``: 0.5 x for SmolLM2, 0.3 x for Gemma)
    scale_fraction: float | None = None


def demo_verdict(
    rows: dict[str, dict[str, Any]], record: dict[str, Any], d_model: int
) -> tuple[list[str], bool]:
    """Plain-language conclusions from the measured rows and the shipped model's record.

    Returns the lines and whether the effect model's predictions may be presented as results.
    """
    lines = []
    r2 = record.get("heldout_r2")
    ceiling = record.get("heldout_ceiling")
    n = record.get("n_vectors") or record.get("fit", {}).get("n_train")
    usable = r2 is not None and r2 > 0
    fig = "no held-out R² recorded" if r2 is None else f"held-out R² {r2:.3f}"
    if ceiling is not None:
        fig += f" (noise ceiling {ceiling:.3f})"
    if n is not None and n <= d_model:
        lines.append(
            f"effect model: {fig}, fitted on {n} vectors in d_model={d_model}: underdetermined "
            "(directions outside the training span are predicted as b); treat its predictions "
            "as rough."
        )
    elif not usable:
        lines.append(f"effect model: {fig}: it does not predict; predictions are not shown.")
    else:
        method = record.get("fit", {}).get("method", "ridge")
        how = {
            "ridge_disruption": " (ridge plus the measured next-token-KL term)",
            "ridge_first_token": " (ridge plus the measured first-token prior; the solvers plan "
            "with its linear part, plain ridge)",
        }.get(method, "")
        lines.append(f"effect model: {fig} on {n} vectors{how}.")
    noise = abs(rows["unsteered"]["target_effect"])
    latent = rows["sae_latent"]["target_share"]
    for name in ("sae_ts", "targeted"):
        r = rows[name]
        hit = r["target_effect"] > 2 * noise
        kl = r.get("next_token_kl")
        broken = (
            f"; but its next-token KL is {kl:.1f} nats (a decoder row's is about 0.5): the text "
            "breaks, read the generations"
            if kl is not None and kl > BROKEN_TEXT_KL
            else ""
        )
        lines.append(
            f"{name}: measured target effect {r['target_effect']:+.3f} "
            f"({'above' if hit else 'NOT above'} twice the unsteered noise {noise:.3f}); target "
            f"share {r['target_share']:.3f} vs the raw latent's {latent:.3f} "
            f"({'at least' if r['target_share'] >= latent else 'below'}){broken}."
        )
    return lines, usable


def run_demo(
    out: str | Path = "runs/demo",
    settings: DemoSettings | None = None,
    seed: int = 0,
    device: str = "cpu",
    log: Log = _quiet,
    model_name: str = DEFAULT_MODEL,
    backend: Backend = "hooked",
) -> dict[str, Any]:
    """Run the demo; return the table rows, the verdict, generations and the model's figures.

    ``model_name``: an embedded model with a shipped effect model; ``backend``: ``"hooked"`` or
    ``"bridge"`` (see :mod:`sae_ts.backends`). ``log`` receives one line per stage (the command
    line passes ``print``). Without the embedded SAE, runs :func:`steering_only_demo` instead (the
    result then has ``"steering_only": True``).
    """
    st = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sae_dir = default_sae_dir(model_name)
    if not (sae_dir / "sae_weights.safetensors").exists():
        log(f"The embedded SAE is not in {sae_dir} (build it with `sae-ts train-sae`);")
        log(
            "running the steering part of the demo only: CAA for the demo concept, steered vs unsteered."
        )
        return {**steering_only_demo(seed=seed, device=device), "steering_only": True}
    t0 = time.time()
    em = load_default_effect_model(model_name)  # first: a clear error if none is shipped
    model, sae, hook = load_default(device=device, model=model_name, backend=backend)
    log(
        f"[1/4] loaded {model.cfg.model_name} + SAE ({sae.cfg.d_sae} latents at {hook}) and the "
        f"shipped effect model ({em.record.get('n_vectors')} vectors, measured at scale "
        f"{em.record.get('scale', float('nan')):.1f}) in {time.time() - t0:.0f}s"
    )
    feats = find_features(model, sae, DEMO_POS, DEMO_NEG, hook, top=3)
    if not feats:
        raise SaeTsError("find_features found no latent firing more on the positive sentences")
    total = sum(s for _, s in feats)
    target = Target({f: s / total for f, s in feats})
    log(f"[2/4] target features (weddings): {[(f, round(s, 3)) for f, s in feats]}")
    # with a disruption term (Gemma), `targeted` plans within the target latents' own decoder
    # rows and keeps its measured next-token KL within a typical decoder row's: in the whole
    # space, the solved direction breaks the text (benchmarks/effect_model_targets.py)
    bounded = isinstance(em, DisruptionEffectModel) and em.fisher is not None
    if bounded:
        targeted = solve_in_decoder_span(
            em, sae.W_dec, target, lm=model, max_disruption=DEMO_MAX_DISRUPTION
        )[0]
    else:
        targeted = solve(em, target, "targeted")
    vectors = {
        "caa": caa_vector(model, DEMO_POS, DEMO_NEG, hook),
        "sae_latent": sae_latent_vector(sae, target.raise_),
        "sae_ts": solve(em, target, "sae_ts"),
        "targeted": targeted,
    }
    if bounded:
        log(
            "      targeted: within the target latents' decoder rows, next-token KL at most "
            f"{DEMO_MAX_DISRUPTION} nats (solve_in_decoder_span, max_disruption)"
        )
    norm = typical_residual_norm(model, hook)
    fitted_at = em.record.get("scale")
    if st.scale_fraction is None and fitted_at is not None:
        scale = round(float(fitted_at), 2)
    else:
        scale = round((0.5 if st.scale_fraction is None else st.scale_fraction) * norm, 2)
    cfg = EffectConfig(rollouts=st.rollouts, baseline_multiplier=st.baseline_multiplier)
    est = EffectEstimator(model, sae, config=cfg, seed=seed)
    t1 = time.time()
    baseline = est.baseline(progress=False)
    rows: dict[str, dict[str, Any]] = {}
    # the unsteered row: another unsteered measurement (scale 0) against the same baseline
    rows["unsteered"] = measure_vector(
        est, vectors["caa"], 0.0, target, baseline=baseline, vector_id=10**6 - 1
    ).row()
    for i, (name, v) in enumerate(vectors.items()):
        m = measure_vector(
            est, v, scale, target, baseline=baseline, effect_model=em, vector_id=10**6 + i
        )
        rows[name] = m.row()
        SteeringVector(
            v, hook, model.cfg.model_name, name, scale, target.to_dict(), sae=str(hook), seed=seed
        ).save(out / f"vector_{name}")
    log(
        f"[3/4] measured at scale {scale:.1f} ({scale / norm:.2f} x the per-token norm"
        f"{', as the effect model was' if st.scale_fraction is None else ''}; "
        f"{st.rollouts} rollouts per prompt) in {time.time() - t1:.0f}s"
    )
    verdict, usable = demo_verdict(rows, em.record, model.cfg.d_model)
    if not usable:
        for r in rows.values():
            r["predicted_target_effect"] = r["predicted_cosine"] = None
    gens: dict[str, list[str]] = {}
    toks = to_tokens(model, ["I think"] * 2)
    gens["unsteered"] = _samples(model, toks, seed)
    for name, v in vectors.items():
        with steer(model, v, hook, scale=scale):
            gens[name] = _samples(model, toks, seed)
    log("[4/4] steered generations from 'I think'")
    _plot(rows, out / "demo.png")
    result = {
        "scale": scale,
        "effect_model": {k: em.record.get(k) for k in ("n_vectors", "scale", "heldout_r2",
                                                       "heldout_ceiling", "command")},
        "target": target.to_dict(),
        "rows": rows,
        "verdict": verdict,
        "generations": gens,
        "seconds": time.time() - t0,
    }  # fmt: skip
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
    _, cache = run_with_cache(model, to_tokens(model, DEMO_NEG), names_filter=hook)
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
            color=["#ccc", "#888", "#b58", "#2a7", "#37c", "#1a5"][: len(names)],
        )
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(
        "Measured SAE-feature effects of four steering vectors and no steering (same scale)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
