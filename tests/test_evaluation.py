"""measure_vector: measured and predicted statistics of one vector."""

from __future__ import annotations

import pytest
import torch

from sae_ts.effect_model import LinearEffectModel
from sae_ts.effects import EffectConfig, EffectEstimator, random_directions
from sae_ts.evaluation import measure_vector
from sae_ts.solver import Target
from sae_ts.testing import tiny_sae

HOOK = "blocks.0.hook_resid_post"
CFG = EffectConfig(prompts=("", "I think"), seq_len=6, rollouts=1, baseline_multiplier=1)


def test_measure_vector_reports_measured_and_predicted(tiny):
    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=16)
    est = EffectEstimator(tiny, sae, config=CFG, seed=0)
    v = random_directions(1, tiny.cfg.d_model, seed=2)[0]
    em = LinearEffectModel(torch.randn(tiny.cfg.d_model, 16) * 0.01, torch.zeros(16))
    target = Target.of([1, 2])
    m = measure_vector(est, 3 * v, 4.0, target, effect_model=em)
    # the vector is unit-normalised first: the same measurement as est.measure on the unit vector
    again = est.measure(v, 4.0, vector_ids=[10**9], progress=False)[0] - est.baseline(False)
    assert torch.allclose(m.effect, again, atol=1e-6)
    row = m.row()
    assert row["predicted_target_effect"] is not None and -1.0 <= row["predicted_cosine"] <= 1.0
    with pytest.raises(ValueError, match="one \\[d_model\\] vector"):
        measure_vector(est, torch.ones(2, tiny.cfg.d_model), 4.0, target)


def test_measure_vector_predicts_a_disruption_model_with_its_measured_z(tiny):
    from sae_ts.disruption import next_token_kl
    from sae_ts.effect_model import DisruptionEffectModel
    from sae_ts.solver import target_stats

    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=16)
    est = EffectEstimator(tiny, sae, config=CFG, seed=0)
    v = random_directions(1, tiny.cfg.d_model, seed=2)[0]
    g = torch.Generator().manual_seed(0)
    rec = {"disruption": {"hook": HOOK, "scale": 4.0, "prompts": ["I think"]}}
    W = torch.randn(tiny.cfg.d_model, 16, generator=g) * 0.01
    em = DisruptionEffectModel(W, torch.zeros(16), rec, torch.randn(2, 16, generator=g), 0.1, 0.2)
    m = measure_vector(est, v, 4.0, Target.of([1, 2]), effect_model=em)
    z = next_token_kl(tiny, HOOK, v[None], 4.0, ["I think"], progress=False)
    want = target_stats(em.predict(v[None], z)[0], Target.of([1, 2]))
    assert m.predicted is not None
    assert abs(m.predicted["target_effect"] - want["target_effect"]) < 1e-5
    assert m.predicted != target_stats(em.predict(v), Target.of([1, 2]))  # not the linear part
    assert abs(m.row()["next_token_kl"] - float(z[0])) < 1e-6  # reported beside the effect
    assert "next_token_kl" not in measure_vector(est, v, 4.0, Target.of([1, 2])).row()


def test_measure_vector_predicts_a_first_token_model_with_its_measured_prior(tiny):
    from sae_ts.effect_model import FirstTokenEffectModel
    from sae_ts.first_token import first_token_prior
    from sae_ts.solver import target_stats

    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=16)
    est = EffectEstimator(tiny, sae, config=CFG, seed=0)
    v = random_directions(1, tiny.cfg.d_model, seed=2)[0]
    g = torch.Generator().manual_seed(0)
    spec = {"hook": HOOK, "scale": 4.0, "prompts": ["I think"], "temperature": 1.0,
            "top_k": 8, "top_p": None}  # fmt: skip
    d = tiny.cfg.d_model
    W = torch.randn(d, 16, generator=g) * 0.01
    em = FirstTokenEffectModel(
        W, torch.zeros(16), {"first_token": spec}, W_direct=W * 0.5, b_direct=torch.zeros(16),
        basis=torch.randn(16, 3, generator=g), mean=torch.zeros(16),
        M=torch.randn(3, 16, generator=g),
    )  # fmt: skip
    m = measure_vector(est, v, 4.0, Target.of([1, 2]), effect_model=em)
    prior = first_token_prior(tiny, sae, HOOK, v[None], 4.0, ["I think"], top_k=8, progress=False)
    assert prior.abs().sum() > 0
    want = target_stats(em.predict(v[None], prior)[0], Target.of([1, 2]))
    assert m.predicted is not None
    assert abs(m.predicted["target_effect"] - want["target_effect"]) < 1e-5
    assert m.predicted != target_stats(em.predict(v), Target.of([1, 2]))  # not the linear part
