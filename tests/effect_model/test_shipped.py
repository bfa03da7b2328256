"""The effect models shipped for the embedded models: each belongs to its SAE and predicts."""

from __future__ import annotations

import pytest
import torch

from sae_ts.effect_model import (
    EMBEDDED_EFFECT_MODELS,
    FIT_METHODS,
    DisruptionEffectModel,
    load_default_effect_model,
    shipped_fit_method,
)
from sae_ts.effects import sae_fingerprint
from sae_ts.errors import ConfigError, MissingFileError
from sae_ts.sae import load_default_sae


@pytest.mark.parametrize("model", sorted(EMBEDDED_EFFECT_MODELS))
def test_shipped_effect_model_matches_its_sae_and_beats_the_mean(model: str) -> None:
    path = EMBEDDED_EFFECT_MODELS[model].with_suffix(".safetensors")
    if not path.exists():  # not shipped: a clear error that says how to make one
        with pytest.raises(MissingFileError, match="sae-ts fit"):
            load_default_effect_model(model)
        return
    em = load_default_effect_model(model)
    sae = load_default_sae(model=model)
    rec = em.record
    assert em.W.shape == (sae.cfg.d_in, sae.cfg.d_sae) and em.b.shape == (sae.cfg.d_sae,)
    assert em.W.dtype == torch.float32 and bool(torch.isfinite(em.W).all())
    # measured with this SAE at its hook: a retrained SAE would need a new campaign
    assert rec["sae_fingerprint"] == sae_fingerprint(sae)
    assert rec["sae_hook"] == rec["steer_hook"] == sae.cfg.metadata.hook_name
    # the figures the demo and README quote: held-out R² above 0, below its noise ceiling
    assert 0 < rec["heldout_r2"] < rec["heldout_ceiling"] <= 1
    assert rec["scale"] > 0 and rec["n_vectors"] > sae.cfg.d_in
    # `sae-ts fit` without --method refits with the shipped model's method
    assert shipped_fit_method(model) == rec["fit"]["method"] in FIT_METHODS
    if isinstance(em, DisruptionEffectModel):  # it can measure its own z
        assert rec["disruption"]["hook"] == rec["steer_hook"]
        assert rec["disruption"]["scale"] == pytest.approx(rec["scale"])
        # the demo bounds `targeted`'s disruption with it
        assert em.fisher is not None and em.fisher.shape == (sae.cfg.d_in, sae.cfg.d_in)
        assert float(torch.linalg.eigvalsh(em.fisher.double()).min()) > -1e-9


def test_smollm2_effect_model_predicts_with_its_measured_first_token_prior(real_model) -> None:
    """The shipped SmolLM2 model is the first-token model: its linear part (what the solvers use)
    is plain ridge, and with the prior measured on the real model it predicts a decoder row's
    effect closer than its linear part does on the committed held-out directions."""
    from pathlib import Path

    from sae_ts.effect_model import FirstTokenEffectModel
    from sae_ts.effects import EffectDataset

    em = load_default_effect_model("smollm2-135m")
    assert isinstance(em, FirstTokenEffectModel)
    spec = em.record["first_token"]
    assert spec["hook"] == em.record["steer_hook"] and spec["top_p"] is None
    assert spec["scale"] == pytest.approx(em.record["scale"])
    data = Path(__file__).resolve().parents[2] / "data" / "effects"
    ta = EffectDataset.load_dir(data / "test_a")
    tb = EffectDataset.load_dir(data / "test_b")
    train_base = EffectDataset.load_dir(data / "train").baseline
    y = ((ta.rebase(train_base).effects + tb.rebase(train_base).effects) / 2)[:8]
    v = ta.inputs[:8].float()
    full = em.predict_measured(real_model, load_default_sae(), v)
    err_full = float(((full - y) ** 2).sum())
    err_lin = float(((em.predict(v) - y) ** 2).sum())
    assert err_full < err_lin, (err_full, err_lin)


def test_unknown_model_has_no_effect_model() -> None:
    with pytest.raises(ConfigError, match="no effect model is shipped"):
        load_default_effect_model("gpt2")
    assert shipped_fit_method("gpt2") == "ridge"


def test_gemma_effect_model_measures_its_disruption_on_the_real_model(gemma_model) -> None:
    """The shipped Gemma model's Fisher is what the code computes, and its measured z tells a
    decoder row (which barely shakes the next token) from a random direction (which breaks it)."""
    from sae_ts.disruption import next_token_fisher, next_token_kl

    em = load_default_effect_model("gemma-3-270m")
    assert isinstance(em, DisruptionEffectModel) and em.fisher is not None
    d = em.disruption_spec()
    F = next_token_fisher(gemma_model, d["hook"], d["prompts"], top=128, progress=False)
    assert torch.allclose(F.float(), em.fisher, rtol=1e-3, atol=1e-4 * float(em.fisher.abs().max()))
    sae = load_default_sae(model="gemma-3-270m")
    row = sae.W_dec[303].detach().float()
    g = torch.randn(sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
    V = torch.stack([row / row.norm(), g / g.norm()])
    z = next_token_kl(gemma_model, d["hook"], V, d["scale"], d["prompts"], progress=False)
    assert z[0] < 2.0 < 5.0 < z[1], z
    assert em.predicted_disruption(V[0]) < em.predicted_disruption(V[1])
    pred = em.predict_measured(gemma_model, V)
    assert pred.shape == (2, sae.cfg.d_sae) and torch.isfinite(pred).all()
