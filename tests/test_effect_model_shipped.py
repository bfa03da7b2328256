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


def test_unknown_model_has_no_effect_model() -> None:
    with pytest.raises(ConfigError, match="no effect model is shipped"):
        load_default_effect_model("gpt2")
    assert shipped_fit_method("gpt2") == "ridge"
