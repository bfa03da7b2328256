"""Estimate -> fit -> solve -> measure -> compare in bfloat16 on the CPU, on the tiny model:
nothing in sae-ts hard-codes float32 or a device."""

from __future__ import annotations

import pytest
import torch

from sae_ts import Target, fit_ridge, measure_vector, solve
from sae_ts.effect_model import UnderdeterminedFitWarning
from sae_ts.effects import (
    EffectConfig,
    EffectEstimator,
    decoder_directions,
    estimate_effects,
    random_directions,
)
from sae_ts.experiments.compare.run import CompareConfig, compare_task, load_task
from sae_ts.judges.offline import load_embedder
from sae_ts.testing import tiny_model, tiny_sae

HOOK = "blocks.1.hook_resid_post"


def test_the_pipeline_runs_in_bfloat16(tmp_path, space_task):
    model = tiny_model(seed=0, dtype=torch.bfloat16)
    sae = tiny_sae(model.cfg.d_model, HOOK, d_sae=32).to(torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16 and sae.W_enc.dtype == torch.bfloat16
    cfg = EffectConfig(rollouts=1, seq_len=6, prompts=("I think", "The"))
    est = EffectEstimator(model, sae, config=cfg, seed=0)
    cands = torch.cat([decoder_directions(sae, n=8, seed=0), random_directions(8, 64, seed=0)])
    ds = estimate_effects(est, cands, 5.0, out_dir=tmp_path / "fx")
    assert torch.isfinite(ds.effects).all() and ds.effects.shape == (16, 32)
    with pytest.warns(UnderdeterminedFitWarning):  # 12 vectors in d_model 64: expected
        em, _ = fit_ridge(ds, holdout=4)
    target = Target({1: 1.0})
    v = solve(em, target, "targeted")
    assert torch.isfinite(v).all() and abs(float(v.norm()) - 1) < 1e-4
    m = measure_vector(est, v, 5.0, target, effect_model=em)
    assert torch.isfinite(m.effect).all() and m.predicted is not None
    rec = compare_task(
        model, sae, HOOK, load_task(space_task), em, cfg=CompareConfig.budget("smoke", samples=4),
        embedder=load_embedder(), norm_unit=10.0,
    )  # fmt: skip
    for row in ("unsteered", "caa", "sae", "sae_ts", "targeted", "targeted_span", "fgaa", "prompt"):
        assert 0 <= rec[row]["score"] <= 1, row
    assert all(abs(rec[m]["effect"]["target_effect"]) < 1e6 for m in ("caa", "targeted"))
