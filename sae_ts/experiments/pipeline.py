"""Shared steps of the experiments: estimate effects on a small budget and fit a ridge model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..effect_model import FitReport, LinearEffectModel, fit_ridge
from ..effects import (
    EffectConfig,
    EffectDataset,
    EffectEstimator,
    calibrate_scales,
    decoder_directions,
    estimate_effects,
    random_directions,
    reference_texts,
)
from ..types import LanguageModel, SAELike

__all__ = ["DemoBudget", "estimate_and_fit"]


@dataclass(frozen=True)
class DemoBudget:
    """How much the demo measures; the defaults fit ~10 minutes on a 2-core CPU."""

    n_decoder: int = 64
    n_random: int = 32
    rollouts: int = 1
    eval_rollouts: int = 4
    seq_len: int = 32
    holdout: int = 16


def estimate_and_fit(
    model: LanguageModel, sae: SAELike, hook: str, work: Path, budget: DemoBudget, seed: int
) -> tuple[LinearEffectModel, FitReport, EffectDataset, float]:
    """Estimate effects of decoder-row and random candidates at one calibrated scale; fit ridge.

    The scale is the median of the per-vector scales at which 6 random unit vectors raise the LM
    loss on the reference text by 0.5 nats. Chunks in ``work`` make the estimation resumable.
    """
    d = model.cfg.d_model
    probe = random_directions(6, d, seed=seed + 1)
    scale = float(
        calibrate_scales(model, probe, hook, 0.5, reference=reference_texts(1500)).median()
    )
    cands = torch.cat(
        [
            decoder_directions(sae, n=budget.n_decoder, seed=seed),
            random_directions(budget.n_random, d, seed=seed),
        ]
    )
    cands = cands[torch.randperm(cands.shape[0], generator=torch.Generator().manual_seed(seed))]
    cfg = EffectConfig(rollouts=budget.rollouts, seq_len=budget.seq_len)
    est = EffectEstimator(model, sae, config=cfg, seed=seed)
    ds = estimate_effects(est, cands, scale, out_dir=work, chunk_size=32)
    ds.save(work / "effects")
    em, rep = fit_ridge(ds, holdout=budget.holdout, seed=seed)
    return em, rep, ds, scale
